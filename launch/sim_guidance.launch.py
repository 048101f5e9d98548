"""The whole guidance loop over ROS in simulation: the sim bridge (camera + skill execution) and
the guidance node (a managed lifecycle node, configured then activated here), parameters from
config/sim_guidance.yaml.

    ros2 launch emu_guidance sim_guidance.launch.py env_id:=sim_envs/SortBlocks-v0 seed:=1000001
    ros2 action send_goal /guide emu_guidance/action/Guide "{instruction: 'clear the table', mode: 1}" --feedback
"""

import os

import lifecycle_msgs.msg
from ament_index_python.packages import get_package_share_directory
from launch.actions import DeclareLaunchArgument, EmitEvent, RegisterEventHandler
from launch.events import matches_action
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode, Node
from launch_ros.event_handlers import OnStateTransition
from launch_ros.events.lifecycle import ChangeState

from launch import LaunchDescription


def generate_launch_description():
    share = get_package_share_directory("emu_guidance")
    params = LaunchConfiguration("params_file")
    env_id = LaunchConfiguration("env_id")
    seed = LaunchConfiguration("seed")
    guidance = LifecycleNode(
        package="emu_guidance",
        executable="guidance_node",
        name="emu_guidance",
        namespace="",
        output="screen",
        parameters=[params, {"autostart": False, "sim_env_id": env_id, "sim_seed": seed}],  # lifecycle driven below
        remappings=[("image_raw", "/sim/camera/image_raw"), ("image_raw/compressed", "/sim/camera/image_raw/compressed")],
    )
    configure = EmitEvent(event=ChangeState(lifecycle_node_matcher=matches_action(guidance),
                                            transition_id=lifecycle_msgs.msg.Transition.TRANSITION_CONFIGURE))
    activate_when_inactive = RegisterEventHandler(OnStateTransition(
        target_lifecycle_node=guidance, goal_state="inactive",
        entities=[EmitEvent(event=ChangeState(lifecycle_node_matcher=matches_action(guidance),
                                              transition_id=lifecycle_msgs.msg.Transition.TRANSITION_ACTIVATE))],
    ))
    return LaunchDescription([
        DeclareLaunchArgument("params_file", default_value=os.path.join(share, "config", "sim_guidance.yaml")),
        DeclareLaunchArgument("env_id", default_value="sim_envs/TableClear-v0"),
        DeclareLaunchArgument("seed", default_value="1000000", description="a held-out seed (sim_envs.seeds)"),
        Node(
            package="emu_guidance",
            executable="sim_bridge_node",
            name="emu_sim_bridge",
            output="screen",
            parameters=[params, {"env_id": env_id, "seed": seed}],
            remappings=[("image_raw", "/sim/camera/image_raw")],
        ),
        activate_when_inactive,
        guidance,
        configure,
    ])
