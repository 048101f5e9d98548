"""model_runtime: the multimodal model runtime (token layout, vision tokenizers, language model,
AR and DiDA decoding, backends, guidance session, prompts, the shipped default model).

It sits below the planner and the ROS layer and imports neither (nor sim_envs, nor rclpy).
Importing it is cheap: torch and transformers load in the modules that need them.
"""
