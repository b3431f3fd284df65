"""Launch `save_node` with a model's config: `ros2 launch save_ros save_node.launch.py model:=...`.

Arguments: `model` (a bundled model: digits_cnn, digits_resnet, digits_vit, cartpole_policy),
`config` (a parameters YAML; default: the package's config/<model>.yaml), `namespace`,
`fault_injection` (true offers ~/inject_faults), `log_level`.
"""

import os  # noqa: I001 (ruff takes launch/ here for first-party; it is the ROS package)

import yaml

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node


def _config_parameters(path: str) -> dict:
    """The `ros__parameters` of the config's node section.

    Passed as a dict rather than as the file: rcl reads a bare `save_node:` key as
    `/save_node`, so with a namespace the file's parameters would silently not apply.
    """
    with open(path) as f:
        data = yaml.safe_load(f) or {}
    for section in data.values():
        if isinstance(section, dict) and "ros__parameters" in section:
            return section["ros__parameters"]
    raise RuntimeError(f"{path} has no '<node>: ros__parameters:' section")


def _node(context, *args, **kwargs):
    """The node, with the config resolved once the arguments are known."""
    model = LaunchConfiguration("model").perform(context)
    config = LaunchConfiguration("config").perform(context)
    if not config:
        config = os.path.join(get_package_share_directory("save_ros"), "config",
                              f"{model or 'digits_cnn'}.yaml")
    injection = LaunchConfiguration("fault_injection").perform(context).lower() == "true"
    overrides = {"fault_injection.enabled": injection}
    if model:  # else the config's own model
        overrides["model"] = model
    return [
        Node(
            package="save_ros",
            executable="save_node",
            name="save_node",
            namespace=LaunchConfiguration("namespace"),
            output="screen",
            emulate_tty=True,
            parameters=[_config_parameters(config), overrides],
            arguments=["--ros-args", "--log-level", LaunchConfiguration("log_level")],
        )
    ]


def generate_launch_description() -> LaunchDescription:
    """Launch arguments and the save_node action."""
    return LaunchDescription([
        DeclareLaunchArgument("model", default_value="",
                              description="bundled model to serve (default: the config's, "
                              "digits_cnn without a config)"),
        DeclareLaunchArgument("config", default_value="",
                              description="parameters YAML (default: the package's "
                              "config/<model>.yaml)"),
        DeclareLaunchArgument("namespace", default_value="",
                              description="namespace of the node"),
        DeclareLaunchArgument("fault_injection", default_value="false",
                              description="offer ~/inject_faults (tests and demos only)"),
        DeclareLaunchArgument("log_level", default_value="info",
                              description="rclpy log level"),
        OpaqueFunction(function=_node),
    ])
