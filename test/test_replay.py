"""`save-ros replay` end to end: a clean run and a run with injected faults through a real node."""

import json
import os

import pytest

pytest.importorskip("rclpy", reason="ROS 2 (rclpy) is not installed")

from save_ros import cli  # noqa: E402
from save_ros.ros.bags import read_messages, topics  # noqa: E402
from save_ros.tools.bundled import (  # noqa: E402
    BAGS_DIR,
    CARTPOLE_ARRAY_BAG,
    CARTPOLE_BAG,
    DIGITS_BAG,
)

pytestmark = pytest.mark.ros
CONFIG = os.path.join(os.path.dirname(__file__), "..", "config", "cartpole_policy.yaml")


def test_replay_with_injected_faults_matches_the_clean_run(tmp_path, capsys):
    out_bag, summary = tmp_path / "out", tmp_path / "summary.json"
    code = cli.main([
        "replay", str(BAGS_DIR / CARTPOLE_BAG), "--config", CONFIG, "--lockstep",
        "--compare-clean", "--inject-every", "25", "--inject-count", "32", "--limit", "100",
        "--namespace", f"replay_{os.getpid()}", "--out", str(out_bag), "--json", str(summary),
        "-p", f"analysis_cache:={tmp_path / 'analysis.json'}",
    ])
    assert code == 0
    report = json.loads(summary.read_text())
    clean, faulty, cmp = report["clean"], report["replay"], report["comparison"]
    assert clean["inputs"] == faulty["inputs"] == 100
    assert clean["verified"] == 100 and clean["detected"] == 0
    assert faulty["faults_injected"] == 3 * 32
    assert faulty["detected"] > 0 and faulty["repaired"] > 0
    # the promise: every verified result is the fault-free one
    assert cmp["verified_compared"] == faulty["verified"] > 0
    assert cmp["verified_equal"] == cmp["verified_compared"]
    assert report["node_exit_code"] == 0
    assert "verified outputs equal to the clean run" in capsys.readouterr().out
    recorded = topics(out_bag)
    ns = f"/replay_{os.getpid()}/save_node"
    assert recorded[f"{ns}/output"][0] == "sensor_msgs/msg/JointState"
    # one result and one status per input (a repaired result may add its correction)
    assert recorded[f"{ns}/output"][1] >= 100 and recorded[f"{ns}/fault_status"][1] == 100
    first = next(read_messages(out_bag, (f"{ns}/output",))).msg
    assert list(first.name) == ["push_left", "push_right"] and len(first.effort) == 1


def test_replay_refuses_a_bag_without_the_input_type(tmp_path):
    from save_ros.ros.bags import BagError
    from save_ros.tools.replay import load_inputs

    with pytest.raises(BagError, match="0 topics of type sensor_msgs/msg/Image"):
        load_inputs(BAGS_DIR / CARTPOLE_BAG, "image", None)


def test_maintainer_bags_writes_the_committed_messages(tmp_path, capsys):
    """`save-ros maintainer bags`: the committed bags' messages, stamps and topics, again."""
    def content(bag):  # repr, not the CDR bytes: their padding is not set
        return [(m.topic, m.time_ns, repr(m.msg)) for m in read_messages(bag)]

    assert cli.main(["maintainer", "bags", "--out-dir", str(tmp_path)]) == 0
    for name in (DIGITS_BAG, CARTPOLE_BAG, CARTPOLE_ARRAY_BAG):
        assert topics(tmp_path / name) == topics(BAGS_DIR / name)
        assert content(tmp_path / name) == content(BAGS_DIR / name), name
    capsys.readouterr()
    assert cli.main(["maintainer", "bags", "--out-dir", str(tmp_path)]) == 0  # kept, not replaced
    assert capsys.readouterr().out.count("exists (--force replaces it)") == 3
