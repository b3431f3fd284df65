"""save_node refuses bad start-up settings with a clear error (and, as a process, an exit code).

Most cases build the node in-process (a real rclpy context, no process start-up cost); two
start the real `save_node` process to check the exit codes a launch file or systemd sees.
"""

import os
import subprocess

import pytest

pytest.importorskip("rclpy", reason="ROS 2 (rclpy) is not installed")

import rclpy  # noqa: E402
import torch  # noqa: E402
from rclpy.context import Context  # noqa: E402
from rclpy.exceptions import InvalidParameterValueException  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402

from save_ros import models  # noqa: E402
from save_ros.ros.backend import BackendError  # noqa: E402
from save_ros.ros.health import WARN  # noqa: E402
from save_ros.ros.model_source import ModelLoadError  # noqa: E402
from save_ros.ros.node import EXIT_BAD_PARAMETER, EXIT_MODEL, SaveNode  # noqa: E402
from save_ros.ros.params import ParameterError  # noqa: E402
from save_ros.tools.process import NodeProcess  # noqa: E402

pytestmark = pytest.mark.ros
CONFIG = os.path.join(os.path.dirname(__file__), "..", "config", "digits_cnn.yaml")


@pytest.fixture
def context():
    ctx = Context()
    rclpy.init(context=ctx)
    yield ctx
    rclpy.try_shutdown(context=ctx)


def _build(context, **overrides) -> SaveNode:
    """Construct the node (parameters checked) and configure it (model loaded, protected)."""
    params = [Parameter(k, value=v) for k, v in ({"protect": False} | overrides).items()]
    node = SaveNode(context=context, parameter_overrides=params,
                    namespace=f"startup_{os.getpid()}")
    try:
        node.trigger_configure()
        if node.configure_error is not None:
            raise node.configure_error.__cause__ or node.configure_error
    finally:
        node.destroy_node()
    return node


@pytest.mark.parametrize(
    ("overrides", "error", "message"),
    [
        ({"qos.reliability": "sometimes"}, ParameterError, "qos.reliability='sometimes'"),
        ({"device": "tpu"}, ParameterError, "not a torch device"),
        ({"input_low": [0.0, 0.0], "input_high": [1.0]}, ParameterError, "give both"),
        ({"fault_injection.bits": [40, -1]}, ParameterError, "fault_injection.bits"),
        ({"queue_size": 0}, InvalidParameterValueException, "queue_size"),
        ({"model": "resnet9000"}, ModelLoadError, "unknown model 'resnet9000'"),
        ({"input_topic": "bad topic"}, ParameterError, "not a valid ROS topic name"),
        ({"output_names": ["a", "b"]}, ParameterError, "output_names has 2 names but"),
        ({"preprocess.mean": [0.5], "preprocess.std": [0.0]}, ParameterError, "must be > 0"),
        ({"model_file": "/nonexistent/model.pt"}, ModelLoadError, "does not exist"),
        # a policy of several inputs: one topic and type per input, in its order
        ({"model": "visuomotor_tiny"}, ParameterError,
         "visuomotor_tiny takes 2 inputs"),
        ({"input_topics": ["a"], "input_types": ["image"]}, ParameterError, "names one topic"),
        ({"input_topics": ["a", "b"], "input_types": ["image"]}, ParameterError,
         "input_types has 1 entries for 2"),
        ({"input_topics": ["a", "b"], "input_types": ["image", "lidar"]}, ParameterError,
         "input_types ['lidar'] not allowed"),
        ({"model": "visuomotor_tiny", "input_topics": ["a", "b", "c"],
          "input_types": ["image", "joint_state", "image"]}, ParameterError,
         "names 3 topics but visuomotor_tiny takes 2 inputs"),
        ({"model": "visuomotor_tiny", "input_topics": ["a", "b"],
          "input_types": ["joint_state", "image"]}, ParameterError,
         "has shape [3, 64, 64]; a joint_state topic gives a 1-d input"),
        ({"model": "visuomotor_tiny", "input_topics": ["a", "b"],
          "input_types": ["image", "joint_state"], "output_type": "joint_trajectory",
          "joint_names": ["j1", "j2"]}, ParameterError, "joint_names has 2 names but"),
        ({"input_topics": ["a", "b"], "input_types": ["image", "image"]}, ParameterError,
         "takes one input; use input_topic"),
    ],
)
def test_bad_settings_are_refused_with_a_reason(context, overrides, error, message):
    with pytest.raises(error, match=message.replace("(", r"\(").replace("[", r"\[")):
        _build(context, **overrides)


def test_a_policy_of_two_topics_configures(context):
    node = _build(context, model="visuomotor_tiny", input_topics=["image", "joint_states"],
                  input_types=["image", "joint_state"], output_type="float32_multi_array")
    assert node.policy_cfg.multi and node.configure_error is None


def test_state_dict_of_the_wrong_architecture_is_refused(context, tmp_path):
    path = tmp_path / "weights.pt"
    torch.save(models.load("cartpole_policy").state_dict(), path)
    with pytest.raises(ModelLoadError, match="does not fit architecture 'digits_cnn'"):
        _build(context, model="digits_cnn", model_file=str(path))


def test_torchscript_needs_input_constraints_and_serves_only_unprotected(context, tmp_path):
    path = tmp_path / "policy.ts"
    torch.jit.script(models.load("cartpole_policy")).save(str(path))
    with pytest.raises(ModelLoadError, match="carries no input constraints"):
        _build(context, model_file=str(path))
    script = {"model_file": str(path), "input_shape": [4], "input_low": [-3.0],
              "input_high": [3.0], "task": "control", "input_type": "float32_multi_array"}
    with pytest.raises(BackendError, match="TorchScript cannot be instrumented by SAVE"):
        _build(context, **script, protect=True)
    node = _build(context, **script)  # unprotected: served as it is
    assert node.loaded.input.shape == (4,) and node.loaded.num_outputs == 2
    assert node.names == ["action_0", "action_1"]
    inference = node.health.report()[1]  # /diagnostics says why it is not protected
    assert inference.level == WARN and "TorchScript cannot be instrumented" in inference.message


def _exit(overrides: dict) -> subprocess.CompletedProcess:
    proc = NodeProcess(CONFIG, namespace=f"startup_{os.getpid()}", overrides=overrides)
    # proc owns the namespaced copy of the params file: keep it alive while the node runs
    return subprocess.run(proc.command(), capture_output=True, text=True, timeout=120)


def test_process_exit_code_for_a_missing_model_file():
    done = _exit({"model_file": "/nonexistent/model.pt"})
    assert done.returncode == EXIT_MODEL
    assert "model_file '/nonexistent/model.pt' does not exist" in done.stderr


def test_process_exit_code_for_a_bad_parameter():
    done = _exit({"publish_policy": "sometimes"})
    assert done.returncode == EXIT_BAD_PARAMETER
    assert "publish_policy='sometimes' is not allowed" in done.stderr
