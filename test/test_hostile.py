"""Hostile inputs through real save_node processes, and replay that loses nothing by default.

Every input type gets the hostile bag (`save_ros.tools.hostile`, written and read back as a
rosbag) and a short seeded fuzz slice, with the model in the node (`isolation: none`) and, for
images, in a worker process; the >= 1,000-message fuzz of every type and isolation is `slow`.
The promises (checked by `hostile_suite.check`): the node survives and exits 0 on SIGINT; every
input that reaches it gets exactly one fault status (in lockstep: every input reaches it); no
input error is counted as a fault; /diagnostics, fault statuses and memory stay bounded.
"""

import json

import pytest

pytest.importorskip("rclpy", reason="ROS 2 (rclpy) is not installed")

import torch  # noqa: E402
from rclpy.serialization import deserialize_message, serialize_message  # noqa: E402

from save_ros import cli, models  # noqa: E402
from save_ros.ros import convert  # noqa: E402
from save_ros.ros.bags import BagWriter, read_messages, topics  # noqa: E402
from save_ros.tools.bundled import (  # noqa: E402
    BAGS_DIR,
    CARTPOLE_ARRAY_BAG,
    DIGITS_BAG,
    DIGITS_TOPIC,
)
from save_ros.tools.fuzz import INPUT_TYPES, fuzz_messages  # noqa: E402
from save_ros.tools.hostile import (  # noqa: E402
    TOPICS,
    case_labels,
    hostile_cases,
    write_hostile_bag,
)
from save_ros.tools.hostile_suite import hostile_nodes, run_session  # noqa: E402
from save_ros.tools.replay import load_inputs  # noqa: E402

FUZZ_SLICE = 30  # the default suite's share of the fuzz (the slow test sends 1,000 per type)
FUZZ_FULL = 1000


# -- the bag and the fuzz themselves (no node) -------------------------------------------------
def _msgs(msgs) -> list[str]:
    """The messages as DDS carries them, as text: CDR padding bytes are not set, NaN != NaN."""
    msgs = [getattr(m, "msg", m) for m in msgs]
    # a string ends at its first NUL on the wire, so compare with what the wire makes of it
    return [repr(deserialize_message(serialize_message(m), type(m))) for m in msgs]


@pytest.fixture(scope="module")
def hostile_bag(tmp_path_factory):
    out = tmp_path_factory.mktemp("hostile") / "bag"
    write_hostile_bag(out)
    return out


def test_hostile_bag_holds_every_case_of_every_input_type(hostile_bag, tmp_path):
    counts = topics(hostile_bag)
    for input_type in INPUT_TYPES:
        labels = case_labels(input_type)
        assert counts[TOPICS[input_type]][1] == len(labels)
        read = _msgs(read_messages(hostile_bag, (TOPICS[input_type],)))
        assert read == _msgs(m for c in hostile_cases(input_type) for m in c.messages)
        assert {e for _, e in labels} == {"accept", "reject", "any"}
    again = tmp_path / "again"
    write_hostile_bag(again)  # reproducible: the same messages in the same order
    for topic in TOPICS.values():
        assert _msgs(read_messages(again, (topic,))) == _msgs(read_messages(hostile_bag,
                                                                              (topic,)))


def test_the_hostile_bag_verb_writes_the_same_bag_and_keeps_an_existing_one(hostile_bag,
                                                                            tmp_path, capsys):
    """`save-ros robustness hostile-bag OUT`: the bag of `write_hostile_bag`; OUT not replaced."""
    from save_ros import cli

    out = tmp_path / "bag"
    assert cli.main(["robustness", "hostile-bag", str(out), "--types", "image"]) == 0
    topic = TOPICS["image"]
    assert list(topics(out)) == [topic]
    assert _msgs(read_messages(out, (topic,))) == _msgs(read_messages(hostile_bag, (topic,)))
    capsys.readouterr()
    assert cli.main(["robustness", "hostile-bag", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.strip() == (f"save-ros robustness hostile-bag: error: {out} exists; --force "
                           "replaces it, or choose another path")


def test_the_hostile_verb_runs_the_suite_and_records_it(tmp_path, capsys):
    """`save-ros robustness hostile`: one session, every promise kept, the JSON record."""
    import json

    from save_ros import cli

    out = tmp_path / "hostile.json"
    assert cli.main(["robustness", "hostile", "--types", "float32_multi_array", "--isolation",
                     "none", "--fuzz", "5", "--no-burst", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "VIOLATION" not in printed and "float32_multi_array" in printed
    record = json.loads(out.read_text())
    assert record["kind"] == "save_ros.hostile_suite" and record["violations"] == []
    assert [(s["input_type"], s["isolation"]) for s in record["sessions"]] == [
        ("float32_multi_array", "none")]


@pytest.mark.parametrize("input_type", INPUT_TYPES)
def test_fuzz_is_seeded_and_hits_every_kind_of_bad_field(input_type):
    msgs = fuzz_messages(input_type, FUZZ_FULL, seed=3)
    assert len(msgs) == FUZZ_FULL
    assert _msgs(msgs[:50]) == _msgs(fuzz_messages(input_type, 50, seed=3))
    assert _msgs(msgs[:50]) != _msgs(fuzz_messages(input_type, 50, seed=4))
    bad = {"nan": 0, "huge": 0, "shape": 0, "other": 0}
    for m in msgs:
        if input_type == "image":
            bad["other"] += m.encoding not in convert.IMAGE_ENCODINGS
            bad["shape"] += len(m.data) != m.step * m.height or m.height < 8
            values = (memoryview(bytes(m.data)).cast("f") if m.encoding == "32FC1"
                      and len(m.data) % 4 == 0 else [])
        elif input_type == "joint_state":
            bad["other"] += len(set(m.name)) != len(m.name)  # duplicated names
            bad["shape"] += len(m.name) != len(m.position)
            values = m.position
        else:
            bad["other"] += m.layout.data_offset > 0
            bad["shape"] += len(m.data) - min(m.layout.data_offset, len(m.data)) != 4
            values = m.data
        bad["nan"] += any(v != v for v in values)
        bad["huge"] += any(1e30 <= abs(v) < float("inf") for v in values)
    assert all(n >= 20 for n in bad.values()), bad


# -- through the node --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    out = tmp_path_factory.getbasetemp() / "save_ros_analysis"  # shared with other modules
    out.mkdir(exist_ok=True)
    return out


def _assert_kept_its_promises(session) -> None:
    problems = session.violations()
    assert not problems, "\n".join(problems) + f"\nnode output:\n{session.output_tail}"


SPECS = [("image", "none"), ("joint_state", "none"), ("float32_multi_array", "none"),
         ("image", "process")]


@pytest.fixture(scope="module")
def nodes(cache_dir):
    """The nodes under test, started (and stopped) together; their exit codes are checked
    when the module is done with them."""
    with hostile_nodes(SPECS, cache_dir) as started:
        yield started
    for node in started.values():
        _assert_kept_its_promises(node.session)


@pytest.fixture
def image_node(nodes):
    return nodes[("image", "none")]


def test_image_node_survives_the_hostile_bag_and_a_fuzz_slice(image_node, hostile_bag):
    # (the realtime pass of the bag runs under -m slow; test_realtime_replay_... floods here)
    runs = image_node.hostile(hostile_bag, burst=False) + [image_node.fuzz(FUZZ_SLICE, seed=0)]
    problems = [f"{r.run}: {v}" for r in runs for v in r.violations]
    assert not problems, "\n".join(problems)
    hostile, fuzz = runs
    assert hostile.answered == hostile.received == hostile.sent - hostile.lost_in_transport
    assert hostile.rejected >= 50 and hostile.accepted >= 70
    assert fuzz.answered == FUZZ_SLICE


def _replay_cli(tmp_path, bag, node, *extra) -> dict:
    """`save-ros replay --attach` to the node under test; its JSON report and exit code."""
    out = tmp_path / f"summary_{len(list(tmp_path.iterdir()))}.json"
    code = cli.main(["replay", str(bag), "--config", str(node.proc.config), "--attach",
                     "--namespace", node.proc.namespace, "--json", str(out), *extra])
    report = json.loads(out.read_text())
    report["exit_code"] = code
    return report


def test_replay_keeps_inputs_that_share_a_stamp_apart(image_node, tmp_path, capsys):
    """508 images, 500 with one stamp: 508 inputs, each answered, no negative latency."""
    frames = [m.msg for m in read_messages(BAGS_DIR / DIGITS_BAG)]
    bag = tmp_path / "same_stamp"
    with BagWriter(bag) as writer:
        for i in range(508):
            msg = frames[i % len(frames)]
            if i < 500:
                msg = type(msg)(header=type(msg.header)(frame_id="camera"), height=msg.height,
                                width=msg.width, encoding=msg.encoding, step=msg.step,
                                data=msg.data)
                msg.header.stamp.sec = 1_700_000_000
            writer.write(DIGITS_TOPIC, msg, 1_700_000_000 * 10**9 + i * 10**6)
    report = _replay_cli(tmp_path, bag, image_node)
    replay = report["replay"]
    assert report["exit_code"] == 0 and report["pace"] == "lockstep"
    assert replay["inputs"] == replay["statuses"] == replay["received"] == 508
    assert replay["losses"]["answered"] == 508 and replay["losses"]["stray_statuses"] == 0
    assert replay["latency_ms"]["n"] == 508 and replay["verdict_latency_ms"]["n"] == 508
    assert min(replay["latency_ms"]["p50"], replay["latency_ms"]["max"]) >= 0
    assert "inputs 508 sent (lockstep), 508 received by the node, 508 answered, 0 lost" in (
        capsys.readouterr().out)


def test_replay_delivers_every_bag_frame_by_default(image_node, tmp_path):
    """The bundled bag: all 60 frames reach the node and are answered (was 14-37 of 60)."""
    report = _replay_cli(tmp_path, BAGS_DIR / DIGITS_BAG, image_node)
    replay = report["replay"]
    assert report["exit_code"] == 0
    assert replay["inputs"] == replay["received"] == replay["statuses"] == 60
    assert replay["losses"]["causes"] == []


def test_realtime_replay_counts_losses_and_names_their_cause(image_node):
    """The bag at 4x its rate into the node's best-effort input: every loss counted and named."""
    inputs = load_inputs(BAGS_DIR / DIGITS_BAG, "image", None)
    result = image_node.client.replay(inputs, pace="realtime", rate=4.0, settle=1.0)
    assert result.node_parameters["qos.reliability"] == "best_effort"
    loss = result.losses()
    assert loss["sent"] == 60 and loss["received"] == loss["answered"] > 0
    lost = loss["sent"] - loss["received"]
    assert loss["lost_before_node"] == lost and loss["stray_statuses"] == 0
    # every loss has a named cause, and a loss-free run names none
    assert bool(loss["causes"]) == bool(lost or loss["dropped_by_node"])
    if lost:
        assert "never reached the node's input callback" in loss["causes"][0]


@pytest.mark.parametrize("input_type", ["joint_state", "float32_multi_array"])
def test_policy_node_survives_the_hostile_bag_and_a_fuzz_slice(nodes, input_type, hostile_bag):
    node = nodes[(input_type, "none")]
    runs = node.hostile(hostile_bag, burst=False) + [node.fuzz(FUZZ_SLICE, seed=1)]
    problems = [f"{r.run}: {v}" for r in runs for v in r.violations]
    assert not problems, "\n".join(problems)
    assert runs[0].answered == runs[0].sent and runs[1].answered == FUZZ_SLICE


def test_replay_plays_a_float32_multi_array_bag(nodes):
    """A policy bag of Float32MultiArray (no header) replays: inputs kept in bag order."""
    inputs = load_inputs(BAGS_DIR / CARTPOLE_ARRAY_BAG, "float32_multi_array", None, limit=50)
    result = nodes[("float32_multi_array", "none")].client.replay(inputs)
    summary = result.summary()
    assert summary["inputs"] == summary["statuses"] == summary["outputs"] == 50
    assert summary["verified"] == 50 and summary["received"] == 50
    model = models.load("cartpole_policy")
    with torch.no_grad():  # each output is its own input's, in bag order
        for record, item in zip(result.records, inputs, strict=True):
            expected = model(torch.tensor([list(item.msg.data)]))[0]
            got = torch.tensor(record.output, dtype=torch.float64)
            assert torch.allclose(got, expected.double(), atol=1e-5)


def test_image_worker_process_survives_the_hostile_bag_and_a_fuzz_slice(nodes, hostile_bag):
    node = nodes[("image", "process")]
    runs = node.hostile(hostile_bag, burst=False) + [node.fuzz(FUZZ_SLICE, seed=2)]
    problems = [f"{r.run}: {v}" for r in runs for v in r.violations]
    assert not problems, "\n".join(problems)
    assert node.proc.proc.poll() is None  # the node (and its workers) took it all


@pytest.mark.slow
@pytest.mark.parametrize("isolation", ["none", "process"])
@pytest.mark.parametrize("input_type", INPUT_TYPES)
def test_fuzz_of_1000_messages_per_type(input_type, isolation, cache_dir, hostile_bag):
    session = run_session(input_type, isolation, hostile_bag, fuzz=FUZZ_FULL, seed=0,
                          cache_dir=cache_dir)
    _assert_kept_its_promises(session)
    fuzz = session.runs[-1]
    assert fuzz.sent == fuzz.answered == FUZZ_FULL
    assert fuzz.rss_after_mb > 0



@pytest.mark.slow
def test_memory_levels_off_under_a_long_fuzz(cache_dir):
    """Six 1,000-message fuzz passes: what the node allocates early it reuses later."""
    session = run_session("image", "none", None, fuzz=FUZZ_FULL, seed=10, fuzz_passes=6,
                          cache_dir=cache_dir)
    _assert_kept_its_promises(session)
    rss = [session.runs[0].rss_before_mb] + [r.rss_after_mb for r in session.runs]
    # measured (8 passes): +10, +3, +2, +1, 0, +3, 0, 0 MiB; a node that kept even 3 kB of
    # each input would add 3 MiB per pass, every pass
    first, last = rss[3] - rss[0], rss[6] - rss[3]
    assert last <= max(6.0, 0.5 * first), rss
