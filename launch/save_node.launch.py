"""Launch `save_node` with a model's config: `ros2 launch save_ros save_node.launch.py model:=...`.

Arguments: `model` (a bundled model: digits_cnn, digits_resnet, digits_vit, cartpole_policy),
`config` (a parameters YAML; default: the package's config/<model>.yaml), `namespace`,
`fault_injection` (true offers ~/inject_faults), `log_level`.
"""

import os  # noqa: I001 (ruff takes launch/ here for first-party; it is the ROS package)

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node


def _node(context, *args, **kwargs):
    """The node, with the config resolved once the arguments are known."""
    model = LaunchConfiguration("model").perform(context)
    config = LaunchConfiguration("config").perform(context)
    if not config:
        config = os.path.join(get_package_share_directory("save_ros"), "config", f"{model}.yaml")
    injection = LaunchConfiguration("fault_injection").perform(context).lower() == "true"
    return [
        Node(
            package="save_ros",
            executable="save_node",
            name="save_node",
            namespace=LaunchConfiguration("namespace"),
            output="screen",
            emulate_tty=True,
            parameters=[config, {"model": model, "fault_injection.enabled": injection}],
            arguments=["--ros-args", "--log-level", LaunchConfiguration("log_level")],
        )
    ]


def generate_launch_description() -> LaunchDescription:
    """Launch arguments and the save_node action."""
    return LaunchDescription([
        DeclareLaunchArgument("model", default_value="digits_cnn",
                              description="bundled model to serve"),
        DeclareLaunchArgument("config", default_value="",
                              description="parameters YAML (default: config/<model>.yaml)"),
        DeclareLaunchArgument("namespace", default_value="",
                              description="namespace of the node"),
        DeclareLaunchArgument("fault_injection", default_value="false",
                              description="offer ~/inject_faults (tests and demos only)"),
        DeclareLaunchArgument("log_level", default_value="info",
                              description="rclpy log level"),
        OpaqueFunction(function=_node),
    ])
