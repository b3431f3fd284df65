"""The ROS demo's fault counts say what they count: flips, injections, detections, repairs."""

from __future__ import annotations

import pytest

pytest.importorskip("rclpy", reason="ROS 2 (rclpy) is not installed")

from save_ros.tools.demo import fault_counts  # noqa: E402
from save_ros.tools.replay_result import InputRecord, ReplayResult  # noqa: E402


def _replay(detected: dict[int, int], injections: int, frames: int = 30) -> ReplayResult:
    """A replay whose frame i reported `detected[i]` failed checks (each one repaired)."""
    result = ReplayResult(injections=["flipped 8 bits"] * injections)
    for i in range(frames):
        record = InputRecord(i, stamp=i)
        d = detected.get(i, 0)
        record.statuses.append((0.0, {"verified": "true", "detected": str(d),
                                      "repaired": str(d)}))
        result.records.append(record)
    return result


def test_flips_injections_and_detections_are_counted_apart() -> None:
    # 8 flips before frames 10 and 20; both found, on frames 10 (3 tensors) and 21 (1 tensor)
    counts = fault_counts(_replay({10: 3, 21: 1}, injections=2), every=10, flips=8)
    assert counts == {"injections": 2, "flips_per_injection": 8, "flips_injected": 16,
                      "injections_caught": 2, "inferences_with_detection": 2,
                      "failed_checks": 4, "tensors_restored": 4, "outputs_repaired": 2}


def test_an_injection_without_a_detection_is_not_counted_as_caught() -> None:
    counts = fault_counts(_replay({12: 2}, injections=2), every=10, flips=8)
    assert (counts["injections_caught"], counts["inferences_with_detection"]) == (1, 1)


def test_the_nodes_own_flip_counter_wins() -> None:
    result = _replay({10: 1}, injections=1)
    result.counters_before = {"faults_injected": "64"}
    result.diagnostics = [{"faults_injected": "128"}]
    assert fault_counts(result, every=10, flips=8)["flips_injected"] == 64
