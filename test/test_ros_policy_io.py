"""A policy's action chunk as ~/output messages (policy_io.ChunkEncoder), without a node."""

import pytest

pytest.importorskip("rclpy", reason="ROS 2 (rclpy) is not installed")
pytest.importorskip("trajectory_msgs", reason="trajectory_msgs is not installed")

import torch  # noqa: E402
from std_msgs.msg import Header  # noqa: E402

from save_ros.preprocess import InputSpec  # noqa: E402
from save_ros.ros.model_source import LoadedModel  # noqa: E402
from save_ros.ros.outputs import OutputKind, output_values  # noqa: E402
from save_ros.ros.policy_io import ChunkEncoder, PolicyConfigError  # noqa: E402

JOINTS = ("a", "b", "c")


def _loaded(chunk: int = 4, joints: int = 3) -> LoadedModel:
    spec = InputSpec(shape=(joints,), low=(0.0,) * joints, high=(1.0,) * joints)
    return LoadedModel(module=torch.nn.Identity(), name="policy", task="control", input=spec,
                       num_outputs=chunk * joints, calibration=None, inputs=(spec, spec),
                       input_names=("x", "y"), output_shape=(chunk, joints))


def test_joint_trajectory_points_carry_the_chunk_and_time_from_start():
    enc = ChunkEncoder(OutputKind.JOINT_TRAJECTORY, "control", [], _loaded(), JOINTS, 0.7)
    chunk = torch.arange(12, dtype=torch.float32).reshape(1, 4, 3) / 8
    header = Header(frame_id="cam")
    header.stamp.sec, header.stamp.nanosec = 12, 345
    msg = enc.message(chunk, header)
    assert msg.header.stamp.sec == 12 and msg.header.stamp.nanosec == 345
    assert msg.header.frame_id == "cam" and list(msg.joint_names) == list(JOINTS)
    assert [list(p.positions) for p in msg.points] == (chunk[0].double()).tolist()
    # (k + 1) * 0.7 s: 0.7, 1.4, 2.1, 2.8 (sec, nanosec), no float drift in nanosec
    assert [(p.time_from_start.sec, p.time_from_start.nanosec) for p in msg.points] == [
        (0, 700_000_000), (1, 400_000_000), (2, 100_000_000), (2, 800_000_000)]
    assert output_values(msg) == chunk.reshape(-1).double().tolist()
    assert "4 x 3 action chunk" in enc.describe()


def test_float32_multi_array_is_chunk_by_joints():
    enc = ChunkEncoder(OutputKind.FLOAT32_MULTI_ARRAY, "control", [], _loaded(), JOINTS, 0.1)
    chunk = torch.linspace(-1, 1, 12).reshape(1, 4, 3)
    msg = enc.message(chunk, Header())
    assert [(d.label, d.size, d.stride) for d in msg.layout.dim] == [("chunk", 4, 12),
                                                                     ("joints", 3, 3)]
    assert list(msg.data) == chunk.reshape(-1).tolist()


def test_joint_names_must_name_every_joint_and_default_to_indices():
    with pytest.raises(PolicyConfigError, match="joint_names has 2 names but policy's actions "
                       "have 3 joints"):
        ChunkEncoder(OutputKind.JOINT_TRAJECTORY, "control", [], _loaded(), ("a", "b"), 0.1)
    enc = ChunkEncoder(OutputKind.JOINT_TRAJECTORY, "control", [], _loaded(), (), 0.1)
    assert enc.joint_names == ["joint_0", "joint_1", "joint_2"]


def test_the_bare_backend_runs_a_policy_of_two_inputs():
    from save_ros.models import zoo
    from save_ros.ros import model_source
    from save_ros.ros.backend import BareBackend

    loaded = model_source.load(model_source.ModelRequest("visuomotor_tiny"))
    image, joints = zoo.example_inputs("visuomotor_tiny", batch=1, seed=4)
    output, verdict = BareBackend(loaded, "cpu").infer((image, joints))
    with torch.no_grad():
        assert torch.equal(output, loaded.module(image, joints))
    assert not verdict.result().verified


def test_sync_status_warns_on_late_messages_and_on_no_match():
    from types import SimpleNamespace

    from save_ros.ros.params import InputType
    from save_ros.ros.policy_io import PolicyIntake
    from save_ros.ros.policy_params import PolicyConfig

    pcfg = PolicyConfig(topics=("a", "b"), types=(InputType.IMAGE, InputType.JOINT_STATE),
                        slop_s=0.01)
    intake = PolicyIntake(SimpleNamespace(intake_node=None), None, pcfg, _loaded(), None, {})
    health = SimpleNamespace(name="ns/save_node", hardware_id="cpu")
    ms = 1_000_000
    intake.sync.add(0, 100 * ms, "img")
    intake.sync.add(1, 105 * ms, "joints")  # a set
    status = intake.status(health)
    assert status.name == "ns/save_node: sync" and status.level == b"\x00"
    values = {kv.key: kv.value for kv in status.values}
    assert values["matched_sets"] == "1" and values["x.matched"] == "1"
    intake.sync.add(0, 90 * ms, "old")  # late
    assert intake.status(health).level == b"\x01"
    intake.sync.add(0, 200 * ms, "img")
    intake.sync.add(1, 300 * ms, "joints")  # 100 ms apart: no set
    status = intake.status(health)
    assert status.level == b"\x01" and "sync.slop" in status.message
    assert intake.status(health).level == b"\x00"  # nothing new since the last report
