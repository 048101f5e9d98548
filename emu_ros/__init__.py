"""emu_ros: the guidance runtime (token layout, vision tokenizers, language model, AR and DiDA
decoding, backends, guidance session). Only the ``emu_ros.ros`` sub-package imports rclpy.

Importing ``emu_ros`` is cheap: torch and transformers load in the modules that need them.
"""
