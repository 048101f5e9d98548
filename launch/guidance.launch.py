"""Launch the emu_guidance node (a managed lifecycle node) with parameters from config/guidance.yaml,
and bring it up: configure (loads the model; a failure is logged with its reason and the node stays
unconfigured) then, once it is inactive, activate (subscribes, accepts goals).

    ros2 launch emu_guidance guidance.launch.py camera:=/camera/color/image_raw backend:=torch

Arguments: params_file (YAML), camera (the Image topic; its /compressed sibling is remapped
with it), backend, model_path, device. Every parameter set here is declared by the node
(tests/emu_ros/test_ros_launch_static.py checks it without ROS).
"""

import os

import lifecycle_msgs.msg
from ament_index_python.packages import get_package_share_directory
from launch.actions import DeclareLaunchArgument, EmitEvent, RegisterEventHandler
from launch.events import matches_action
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode
from launch_ros.event_handlers import OnStateTransition
from launch_ros.events.lifecycle import ChangeState

from launch import LaunchDescription


def generate_launch_description():
    share = get_package_share_directory("emu_guidance")
    camera = LaunchConfiguration("camera")
    guidance = LifecycleNode(
        package="emu_guidance",
        executable="guidance_node",
        name="emu_guidance",
        namespace="",
        output="screen",
        parameters=[
            LaunchConfiguration("params_file"),
            {
                "autostart": False,  # this launch file drives configure + activate (below)
                "backend": LaunchConfiguration("backend"),
                "model_path": LaunchConfiguration("model_path"),
                "device": LaunchConfiguration("device"),
            },
        ],
        remappings=[
            ("image_raw", camera),
            ("image_raw/compressed", [camera, "/compressed"]),
        ],
    )
    configure = EmitEvent(event=ChangeState(lifecycle_node_matcher=matches_action(guidance),
                                            transition_id=lifecycle_msgs.msg.Transition.TRANSITION_CONFIGURE))
    activate_when_inactive = RegisterEventHandler(OnStateTransition(
        target_lifecycle_node=guidance, goal_state="inactive",
        entities=[EmitEvent(event=ChangeState(lifecycle_node_matcher=matches_action(guidance),
                                              transition_id=lifecycle_msgs.msg.Transition.TRANSITION_ACTIVATE))],
    ))
    return LaunchDescription([
        DeclareLaunchArgument("params_file", default_value=os.path.join(share, "config", "guidance.yaml")),
        DeclareLaunchArgument("camera", default_value="/camera/image_raw", description="sensor_msgs/Image topic"),
        DeclareLaunchArgument("backend", default_value="torch", description="torch | emu3 | vllm | oracle"),
        DeclareLaunchArgument("model_path", default_value="", description="'' = the shipped default model"),
        DeclareLaunchArgument("device", default_value="cpu", description="cpu | cuda | cuda:N"),
        activate_when_inactive,  # registered before the node starts, so the inactive transition is seen
        guidance,
        configure,
    ])
