"""How a replay matches fault statuses and outputs to inputs, and explains losses (no node)."""

from save_ros.tools.replay_result import InputRecord, ReplayResult, compare


def _sent(result: ReplayResult, stamps, t0: float = 100.0) -> list[InputRecord]:
    records = []
    for i, stamp in enumerate(stamps):
        record = InputRecord(i, stamp, matched=1, sent_at=t0 + i * 0.01)
        result.add_input(record)
        records.append(record)
    return records


def _status(result: ReplayResult, stamp: int, t: float, **values) -> InputRecord | None:
    text = {k: ("true" if v is True else "false" if v is False else str(v))
            for k, v in values.items()}
    return result.add_status(stamp, t, {"_level": "0", "_message": "ok", **text})


def test_duplicate_stamps_stay_separate_inputs():
    """508 images, 500 sharing one stamp: 508 inputs, each answered once, no negative latency."""
    result = ReplayResult()
    stamps = [7] * 500 + list(range(100, 108))
    records = _sent(result, stamps)
    for i, stamp in enumerate(stamps):
        answered = _status(result, stamp, records[i].sent_at + 0.002, published=True,
                           verified=True)
        result.add_output(stamp, records[i].sent_at + 0.001, [float(i)])
        assert answered is records[i]
    summary = result.summary()
    assert summary["inputs"] == 508 and summary["statuses"] == 508
    assert summary["outputs"] == 508 and summary["verified"] == 508
    assert all(r.output == [float(r.index)] for r in records)
    assert result.latencies_ms().min() > 0 and result.verdict_latencies_ms().min() > 0
    assert len(result.sent) == 9  # the by-stamp view merges, the records do not


def test_header_less_inputs_are_answered_in_order():
    """A Float32MultiArray has no stamp: the node stamps it on arrival; FIFO matches."""
    result = ReplayResult()
    records = _sent(result, [None] * 3)
    for k, node_stamp in enumerate((555, 556, 557)):
        _status(result, node_stamp, 101.0 + k, published=True)
        result.add_output(node_stamp, 101.0 + k, [float(k)])
    assert [r.output for r in records] == [[0.0], [1.0], [2.0]]
    assert result.summary()["statuses"] == 3


def test_outputs_go_to_the_input_whose_status_announced_them():
    result = ReplayResult()
    a, b, c = _sent(result, [1, 2, 3])
    result.add_output(1, 101.0, [0.5])  # provisional output of a (immediate)
    result.add_output(2, 101.1, [0.7])
    _status(result, 3, 101.2, rejected=True, published=False)  # c: rejected, no output
    result.add_output(1, 101.3, [0.6])  # a's corrected output
    _status(result, 1, 101.4, published=True, corrected_output_published=True, detected=2,
            repaired=1, verified=True)
    _status(result, 2, 101.5, published=True, verified=True)
    assert a.outputs == [(101.0, [0.5]), (101.3, [0.6])] and a.output == [0.6]
    assert b.output == [0.7] and c.output is None and c.complete()
    assert not result.unclaimed_outputs
    # a status that comes before its output (two topics): the output is claimed on arrival
    late = ReplayResult()
    (d,) = _sent(late, [9])
    _status(late, 9, 101.0, published=True)
    assert d.answered() and not d.complete()
    late.add_output(9, 101.1, [1.0])
    assert d.complete() and d.output == [1.0]


def test_an_extra_status_is_a_stray_not_a_second_answer():
    result = ReplayResult()
    (a,) = _sent(result, [5])
    _status(result, 5, 101.0, published=False, rejected=True)
    assert _status(result, 5, 101.1, published=False) is None
    assert len(a.statuses) == 1 and len(result.stray_statuses) == 1
    assert "matched no input" in " ".join(result.losses()["causes"])


def _with_counters(result: ReplayResult, **after) -> None:
    result.counters_before = {k: "10" for k in after}
    result.diagnostics.append({k: str(10 + v) for k, v in after.items()})


def test_losses_before_the_node_are_counted_and_explained_from_its_qos():
    result = ReplayResult(pace="realtime", node_parameters={"qos.depth": 5,
                                                            "qos.reliability": "best_effort"})
    records = _sent(result, list(range(60)))
    for r in records[:45]:
        _status(result, r.stamp, r.sent_at + 0.4, published=True)
    _with_counters(result, received=45, dropped=0)
    loss = result.losses()
    assert loss["sent"] == 60 and loss["received"] == 45 and loss["answered"] == 45
    assert loss["lost_before_node"] == 15 and loss["unanswered_in_node"] == 0
    (cause,) = loss["causes"]
    assert cause.startswith("15 never reached the node's input callback")
    assert "newest 5 unread inputs (best_effort)" in cause and "lagged" in cause
    assert "--pace lockstep" in cause


def test_node_side_losses_are_told_apart():
    result = ReplayResult(pace="afap")
    records = _sent(result, list(range(10)))
    records[0].matched = 0  # published before discovery matched the subscription
    for r in records[1:5]:
        _status(result, r.stamp, 101.0, dropped=True, published=False,
                _message="dropped: inference queue full")
    for r in records[5:8]:
        _status(result, r.stamp, 101.0, published=False, rejected=True)
    _with_counters(result, received=9)  # 9 reached the node, 7 answered
    loss = result.losses()
    assert loss["published_unmatched"] == 1 and loss["lost_before_node"] == 0
    assert loss["unanswered_in_node"] == 2 and loss["dropped_by_node"] == 4
    causes = " | ".join(loss["causes"])
    assert "1 published while no input subscription of the node was matched" in causes
    assert "2 reached the node but got no fault status" in causes
    assert "4 dropped by the node (dropped: inference queue full)" in causes


def test_lockstep_loss_is_transport_not_a_busy_node():
    result = ReplayResult(pace="lockstep", node_parameters={"qos.reliability": "best_effort"})
    records = _sent(result, [1, 2])
    _status(result, 1, records[0].sent_at + 0.01, published=True)
    _with_counters(result, received=1)
    (cause,) = result.losses()["causes"]
    assert "idle, matched node" in cause and "lost in transport" in cause


def test_compare_goes_input_by_input_even_with_one_stamp():
    clean, faulty = ReplayResult(), ReplayResult()
    for result, values in ((clean, [0.0, 1.0, 2.0]), (faulty, [0.0, 9.0, 2.0])):
        records = _sent(result, [3, 3, 3])
        for r, v in zip(records, values, strict=True):
            _status(result, 3, r.sent_at + 0.01, published=True, verified=True)
            result.add_output(3, r.sent_at + 0.01, [v])
    cmp = compare(clean, faulty)
    assert cmp["all_compared"] == 3 and cmp["all_equal"] == 2
    assert cmp["verified_compared"] == 3 and cmp["verified_mismatches"] == [1]


def test_a_copy_published_again_is_counted_as_such_not_as_a_node_fault():
    """Lockstep published an input again; the node had taken the first copy late: 2 answers."""
    result = ReplayResult(pace="lockstep")
    (a,) = _sent(result, [4])
    a.attempts = 2
    _status(result, 4, 101.0, published=False, rejected=True)
    _status(result, 4, 101.1, published=False, rejected=True)
    _with_counters(result, received=2)
    loss = result.losses()
    assert loss["republished_duplicates"] == 1 and loss["stray_statuses"] == 0
    assert loss["unanswered_in_node"] == 0 and loss["lost_before_node"] == 0
    assert "published again" in " ".join(loss["causes"])


def test_rejected_dropped_and_unverified_are_counted_apart():
    """Issue 19: 5 rejected inputs were printed as "unverified"; each outcome has its count."""
    result = ReplayResult()
    records = _sent(result, range(10))
    kinds = ["verified"] * 4 + ["rejected"] * 3 + ["dropped"] * 2 + ["unverified"]
    for record, kind in zip(records, kinds, strict=True):
        _status(result, record.stamp, record.sent_at + 0.001, verified=kind == "verified",
                rejected=kind == "rejected", dropped=kind == "dropped",
                published=kind == "verified")
    s = result.summary()
    assert (s["verified"], s["rejected"], s["unverified"]) == (4, 3, 1)
    assert s["losses"]["dropped_by_node"] == 2
