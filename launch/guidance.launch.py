"""Launch the emu_guidance node with parameters from config/guidance.yaml.

    ros2 launch emu_guidance guidance.launch.py camera:=/camera/color/image_raw backend:=torch

Arguments: params_file (YAML), camera (the Image topic; its /compressed sibling is remapped
with it), backend, model_path, device. Every parameter set here is declared by the node
(tests/emu_ros/test_ros_launch_static.py checks it without ROS).
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from launch import LaunchDescription


def generate_launch_description():
    share = get_package_share_directory("emu_guidance")
    camera = LaunchConfiguration("camera")
    return LaunchDescription([
        DeclareLaunchArgument("params_file", default_value=os.path.join(share, "config", "guidance.yaml")),
        DeclareLaunchArgument("camera", default_value="/camera/image_raw", description="sensor_msgs/Image topic"),
        DeclareLaunchArgument("backend", default_value="torch", description="torch | emu3 | vllm | oracle"),
        DeclareLaunchArgument("model_path", default_value="", description="'' = the shipped default model"),
        DeclareLaunchArgument("device", default_value="cpu", description="cpu | cuda | cuda:N"),
        Node(
            package="emu_guidance",
            executable="guidance_node",
            name="emu_guidance",
            output="screen",
            parameters=[
                LaunchConfiguration("params_file"),
                {
                    "backend": LaunchConfiguration("backend"),
                    "model_path": LaunchConfiguration("model_path"),
                    "device": LaunchConfiguration("device"),
                },
            ],
            remappings=[
                ("image_raw", camera),
                ("image_raw/compressed", [camera, "/compressed"]),
            ],
        ),
    ])
