"""The ROS 2 layer: the guidance node, the sim bridge node, message conversion and bag replay.

Only the node modules (``guidance_node``, ``sim_bridge_node``) import rclpy, lazily through
``emu_guide.optional.require``. ``convert``, ``interfaces`` and ``replay`` need no ROS install:
they work on any message object with the ROS field names (rclpy's or rosbags').
"""
