"""Calibration inputs for Selection: a file of samples, a rosbag, the first N live inputs."""

import os

import numpy as np
import pytest
import torch

from save_ros.preprocess import InputSpec
from save_ros.ros.calibration import CalibrationError, from_file

DIGITS = InputSpec(shape=(1, 8, 8), low=(0.0,), high=(1.0,))


def test_samples_from_pt_and_npy_files_out_of_box_ones_skipped(tmp_path):
    samples = torch.rand(5, 1, 8, 8)
    samples[2] += 5.0  # outside [0, 1]: would widen the ranges past what SAVE assumes
    torch.save(samples, tmp_path / "s.pt")
    np.save(tmp_path / "s.npy", samples.numpy())
    for name in ("s.pt", "s.npy"):
        got = from_file(str(tmp_path / name), DIGITS, limit=100)
        assert got.shape == (4, 1, 8, 8) and torch.equal(got[2], samples[3])
    assert from_file(str(tmp_path / "s.pt"), DIGITS, limit=2).shape == (2, 1, 8, 8)


def test_non_finite_calibration_inputs_are_dropped_and_counted(tmp_path):
    samples = torch.rand(10, 1, 8, 8)
    samples[:, 0, 3, 3] = float("nan")  # one NaN pixel per input, as issue 19 found accepted
    samples[0] = torch.rand(1, 8, 8)  # one clean input
    samples[1, 0, 0, 0] = float("inf")
    torch.save(samples, tmp_path / "nan.pt")
    warnings: list[str] = []
    got = from_file(str(tmp_path / "nan.pt"), DIGITS, 100, warnings.append)
    assert got.shape == (1, 1, 8, 8) and torch.equal(got[0], samples[0])
    assert warnings == [f"calibration.file {tmp_path / 'nan.pt'}: dropped 9 of 10 calibration "
                        "inputs (9 with NaN or infinite values, 0 outside the declared input "
                        "box); calibrating with 1"]
    samples[0, 0, 1, 1] = float("nan")
    torch.save(samples, tmp_path / "all_nan.pt")
    with pytest.raises(CalibrationError, match="no usable calibration input of 10 "
                       r"\(10 with NaN or infinite values"):
        from_file(str(tmp_path / "all_nan.pt"), DIGITS, 100)


def test_bad_calibration_files_say_what_to_fix(tmp_path):
    with pytest.raises(CalibrationError, match="does not exist"):
        from_file(str(tmp_path / "none.pt"), DIGITS, 10)
    torch.save(torch.rand(3, 8, 8), tmp_path / "flat.pt")
    with pytest.raises(CalibrationError, match=r"the model takes \(N, 1, 8, 8\)"):
        from_file(str(tmp_path / "flat.pt"), DIGITS, 10)
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(CalibrationError, match="torch.save"):
        from_file(str(tmp_path / "junk.pt"), DIGITS, 10)


@pytest.mark.ros
def test_samples_from_a_rosbag_are_decoded_like_live_inputs():
    pytest.importorskip("rclpy")
    from save_ros.ros import convert
    from save_ros.ros.bags import read_messages
    from save_ros.ros.calibration import from_bag
    from save_ros.tools.bundled import BAGS_DIR, DIGITS_BAG

    got = from_bag(str(BAGS_DIR / DIGITS_BAG), "", "sensor_msgs/msg/Image",
                   lambda m: convert.image_to_tensor(m, DIGITS), DIGITS, limit=7)
    first = next(read_messages(BAGS_DIR / DIGITS_BAG)).msg
    assert got.shape == (7, 1, 8, 8)
    assert torch.equal(got[0], convert.image_to_tensor(first, DIGITS)[0])
    with pytest.raises(CalibrationError, match="no topic '/nope'"):
        from_bag(str(BAGS_DIR / DIGITS_BAG), "/nope", "sensor_msgs/msg/Image", None, DIGITS, 1)


@pytest.mark.ros
def test_live_samples_redo_selection_in_the_node(tmp_path):
    pytest.importorskip("rclpy")
    from rosutil import digits_frames

    from save_ros.tools.client import ReplayClient
    from save_ros.tools.process import NodeProcess

    config = os.path.join(os.path.dirname(__file__), "..", "config", "digits_cnn.yaml")
    proc = NodeProcess(config, namespace=f"calib_{os.getpid()}", overrides={
        "calibration.live_samples": 4, "diagnostics_period": 0.2,
        "diagnostics.input_timeout": 0.0,
        "analysis_cache": str(tmp_path / "a.json")}).start()
    try:
        with ReplayClient(node_fqn=proc.fqn) as client:
            client.wait_for_node(proc, timeout=90.0)
            result = client.replay(digits_frames(6), pace="lockstep")
            assert result.summary()["verified"] == 6
            deadline, calibration = 60.0, ""
            while deadline > 0 and "redone" not in calibration:
                calibration = client.latest_diagnostics().get("calibration", "")
                deadline -= 0.2
            assert calibration == "Selection redone with 4 live inputs"
            after = client.replay(digits_frames(3), pace="lockstep")
            assert after.summary()["verified"] == 3
    finally:
        assert proc.stop() == 0


def test_calibration_from_a_file_gets_its_own_analysis_cache(tmp_path):
    """The analysis key does not cover calibration inputs: other data must not hit the cache."""
    pytest.importorskip("rclpy")
    import logging

    from save_ros.ros.backend import ProtectedBackend
    from save_ros.ros.model_source import ModelRequest, load
    from save_ros.ros.params import InputType, NodeConfig, PublishPolicy

    samples = torch.rand(16, 1, 8, 8)
    torch.save(samples, tmp_path / "a.pt")
    cfg = NodeConfig(model="digits_cnn", model_file="", task="", input_shape=(),
                     input_low=(), input_high=(), output_names=(), device="cpu", protect=True,
                     input_topic="~/input", input_type=InputType.IMAGE, joint_names=(),
                     qos_depth=1, qos_reliability="best_effort", queue_size=1,
                     publish_policy=PublishPolicy.VERIFIED, reliable_budget_bytes=None,
                     checksum_period=1, analysis_cache=str(tmp_path / "cache.json"),
                     verify_timeout=1.0, shutdown_timeout=1.0, diagnostics_period=1.0,
                     calibration_file=str(tmp_path / "a.pt"))
    paths = []
    for data in (samples, samples * 0.5):
        loaded = load(ModelRequest("digits_cnn"))
        loaded.calibration = data
        backend = ProtectedBackend(cfg, loaded, logging.getLogger("test"))
        paths.append(backend._cache)
        assert paths[-1].is_file() and not backend.cache_hit
        backend.close()
    assert paths[0] != paths[1] and paths[0].name.startswith("cache.calib-")
