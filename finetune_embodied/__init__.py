"""Fine-tuning pipeline: LeRobot datasets, expert recording, keyframes, sequence builder, training.

Submodules import their heavy dependencies (torch, pyarrow, PyAV) lazily or at their own top, so
``import finetune_embodied`` stays cheap.
"""
