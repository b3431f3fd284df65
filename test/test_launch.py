"""`ros2 launch save_ros save_node.launch.py` under launch_pytest (where a ROS 2 distro has it).

launch, launch_ros and launch_pytest are not on PyPI, so in a plain venv this module is skipped;
test_ros_node.py covers the same behaviour by starting `save_node` as a process.
"""

import os

import pytest

pytest.importorskip("rclpy", reason="ROS 2 (rclpy) is not installed")
pytest.importorskip("launch_ros", reason="launch_ros is not installed (needs a sourced ROS 2 "
                    "distro); test_ros_node.py covers the node as a process")
launch_pytest = pytest.importorskip(
    "launch_pytest", reason="launch_pytest is not installed (needs a sourced ROS 2 distro); "
    "test_ros_node.py covers the node as a process")

# imported by name: ruff would take `launch` for this repository's launch/ folder
launch = pytest.importorskip("launch")
launch_actions = pytest.importorskip("launch.actions")
launch_sources = pytest.importorskip("launch.launch_description_sources")
from save_ros.ros.bags import read_messages  # noqa: E402
from save_ros.tools.bundled import BAGS_DIR, DIGITS_BAG  # noqa: E402
from save_ros.tools.client import ReplayClient, stamp_key  # noqa: E402

pytestmark = pytest.mark.ros
HERE = os.path.dirname(os.path.abspath(__file__))
LAUNCH_FILE = os.path.join(HERE, "..", "launch", "save_node.launch.py")
CONFIG = os.path.join(HERE, "..", "config", "digits_cnn.yaml")
NAMESPACE = f"launch_{os.getpid()}"


@launch_pytest.fixture
def launch_description():
    """The package's launch file with a namespace, the digits config and injection on."""
    return launch.LaunchDescription([
        launch_actions.IncludeLaunchDescription(
            launch_sources.PythonLaunchDescriptionSource(LAUNCH_FILE),
            launch_arguments={"model": "digits_cnn", "config": CONFIG, "namespace": NAMESPACE,
                              "input_topic": f"/{NAMESPACE}/camera/image",
                              "fault_injection": "true", "autostart": "true"}.items(),
        ),
        launch_pytest.actions.ReadyToTest(),
    ])


@pytest.mark.launch(fixture=launch_description)
def test_launched_node_serves_and_reports_faults():
    frames = [m.msg for m in read_messages(BAGS_DIR / DIGITS_BAG)][:5]
    # the launch file configures, then activates the managed node through lifecycle events
    with ReplayClient(node_fqn=f"/{NAMESPACE}/save_node",
                      input_topic=f"/{NAMESPACE}/camera/image") as client:
        client.wait_for_node(timeout=90.0)
        clean = client.replay(frames, pace="lockstep")
        assert sorted(clean.outputs) == sorted(stamp_key(f.header) for f in frames)
        assert client.call("inject_faults").success
        faulty = client.replay(frames, pace="lockstep")
        assert int(faulty.final_status(stamp_key(frames[0].header))["detected"]) > 0
        for f in frames:
            key = stamp_key(f.header)
            assert faulty.final_output(key) == clean.final_output(key)
