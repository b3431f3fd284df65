"""Launch `save_node` (a managed node): `ros2 launch save_ros save_node.launch.py model:=...`.

Arguments: `model` (a bundled name, `package.module:factory` or a `.pt2` path; default: the
config's), `config` (a parameters YAML; default: the package's config/<model>.yaml, or
config/digits_cnn.yaml for a model that is not bundled; config/visuomotor_policy.yaml for the zoo's
visuomotor policies), `namespace`, `input_topic` (the topic to serve), `input_topics` and
`input_types` (a policy of several inputs: comma-separated, one per input in the policy's order,
e.g. `input_topics:=/camera/image_raw,/joint_states`; `input_names` binds each to a forward
parameter), `use_sim_time`, `autostart` (true: this launch file configures and then activates
the node through lifecycle events; false: leave it unconfigured for a lifecycle manager such as
nav2_lifecycle_manager), `fault_injection`, `log_level`.
"""

import os  # noqa: I001 (ruff takes launch/ here for first-party; it is the ROS package)

import lifecycle_msgs.msg
from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, EmitEvent, OpaqueFunction, RegisterEventHandler
from launch.conditions import IfCondition
from launch.events import matches_action
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode
from launch_ros.event_handlers import OnStateTransition
from launch_ros.events.lifecycle import ChangeState

BUNDLED = ("digits_cnn", "digits_resnet", "digits_vit", "cartpole_policy")
POLICY_CONFIGS = {"visuomotor": "visuomotor_policy", "visuomotor_tiny": "visuomotor_policy"}


def _names(text: str) -> list[str]:
    """`a,b` or `[a, b]` as a list of names (a launch argument is one string)."""
    return [t.strip().strip("'\"") for t in text.strip().strip("[]").split(",") if t.strip()]


def _node(context, *args, **kwargs):
    """The lifecycle node and, with autostart, the configure -> activate events."""
    model = LaunchConfiguration("model").perform(context)
    config = LaunchConfiguration("config").perform(context)
    if not config:
        name = model if model in BUNDLED else POLICY_CONFIGS.get(model, "digits_cnn")
        config = os.path.join(get_package_share_directory("save_ros"), "config", f"{name}.yaml")
    overrides = {
        "fault_injection.enabled":
            LaunchConfiguration("fault_injection").perform(context).lower() == "true",
        "use_sim_time": LaunchConfiguration("use_sim_time").perform(context).lower() == "true",
        # the launch file drives the transitions (below), as lifecycle launch files do
        "autostart": False,
    }
    if model:  # else the config's own model
        overrides["model"] = model
    topic = LaunchConfiguration("input_topic").perform(context)
    if topic:  # a parameter, not a remap: it wins over whatever input_topic the config names
        overrides["input_topic"] = topic
    for name in ("input_topics", "input_types", "input_names"):  # policies: one per input
        values = _names(LaunchConfiguration(name).perform(context))
        if values:
            overrides[name] = values
    node = LifecycleNode(
        package="save_ros",
        executable="save_node",
        name="save_node",
        namespace=LaunchConfiguration("namespace"),
        output="screen",
        emulate_tty=True,
        # the configs use `/**:`, so they apply under any name and namespace
        parameters=[config, overrides],
        arguments=["--ros-args", "--log-level", LaunchConfiguration("log_level")],
    )
    autostart = IfCondition(LaunchConfiguration("autostart"))
    configure = EmitEvent(event=ChangeState(
        lifecycle_node_matcher=matches_action(node),
        transition_id=lifecycle_msgs.msg.Transition.TRANSITION_CONFIGURE), condition=autostart)
    activate = RegisterEventHandler(OnStateTransition(
        target_lifecycle_node=node, goal_state="inactive",
        entities=[EmitEvent(event=ChangeState(
            lifecycle_node_matcher=matches_action(node),
            transition_id=lifecycle_msgs.msg.Transition.TRANSITION_ACTIVATE))]),
        condition=autostart)
    return [node, activate, configure]


def generate_launch_description() -> LaunchDescription:
    """Launch arguments and the save_node actions."""
    return LaunchDescription([
        DeclareLaunchArgument("model", default_value="",
                              description="bundled name, package.module:factory or a .pt2 "
                              "path (default: the config's, digits_cnn without a config)"),
        DeclareLaunchArgument("config", default_value="",
                              description="parameters YAML (default: the package's "
                              "config/<model>.yaml)"),
        DeclareLaunchArgument("namespace", default_value="",
                              description="namespace of the node"),
        DeclareLaunchArgument("input_topic", default_value="",
                              description="topic to serve (default: the config's "
                              "input_topic, ~/input)"),
        DeclareLaunchArgument("input_topics", default_value="",
                              description="a policy's input topics, comma-separated in its "
                              "input order (default: the config's input_topics)"),
        DeclareLaunchArgument("input_types", default_value="",
                              description="their message types, comma-separated: image, "
                              "joint_state, float32_multi_array, int32_multi_array (default: "
                              "the config's)"),
        DeclareLaunchArgument("input_names", default_value="",
                              description="the forward parameter each input topic feeds, "
                              "comma-separated (default: the config's)"),
        DeclareLaunchArgument("use_sim_time", default_value="false",
                              description="use /clock (a rosbag played with --clock)"),
        DeclareLaunchArgument("autostart", default_value="true",
                              description="configure and activate at once; false: wait for "
                              "a lifecycle manager"),
        DeclareLaunchArgument("fault_injection", default_value="false",
                              description="offer ~/inject_faults (tests and demos only)"),
        DeclareLaunchArgument("log_level", default_value="info",
                              description="rclpy log level"),
        OpaqueFunction(function=_node),
    ])
