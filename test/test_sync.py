"""Approximate-time matching (save_ros.ros.sync), without ROS: a camera and joint states."""

import pytest

from save_ros.ros.sync import ApproximateSync

MS = 1_000_000


def _accounted(sync: ApproximateSync) -> None:
    """Every received message is matched, unmatched, late or still waiting."""
    for c in sync.stats().per_input:
        assert c.received == c.matched + c.unmatched + c.late + c.waiting


def test_pairs_within_slop_and_not_beyond():
    sync = ApproximateSync(("image", "joints"), slop_ns=5 * MS)
    assert sync.add(0, 100 * MS, "img100") is None
    match = sync.add(1, 104 * MS, "j104")
    assert match is not None
    assert match.items == ("img100", "j104")
    assert match.stamps_ns == (100 * MS, 104 * MS)
    assert match.newest_ns == 104 * MS and match.spread_ns == 4 * MS
    assert sync.add(0, 200 * MS, "img200") is None
    assert sync.add(1, 206 * MS, "j206") is None  # 6 ms apart: never mixed
    st = sync.stats()
    assert st.matched_sets == 1
    assert [c.waiting for c in st.per_input] == [1, 1]
    _accounted(sync)


def test_closest_partner_is_taken_and_older_ones_count_unmatched():
    sync = ApproximateSync(("image", "joints"), slop_ns=20 * MS)
    for t in (0, 10, 20, 30):  # 100 Hz joint states, no image yet
        assert sync.add(1, t * MS, f"j{t}") is None
    match = sync.add(0, 22 * MS, "img22")
    assert match.items == ("img22", "j20")
    st = sync.stats()
    joints = st.per_input[1]
    assert (joints.matched, joints.unmatched, joints.waiting) == (1, 2, 1)  # j0, j10 passed
    _accounted(sync)


def test_late_message_is_refused_not_matched():
    sync = ApproximateSync(("image", "joints"), slop_ns=5 * MS)
    sync.add(0, 100 * MS, "img100")
    assert sync.add(1, 101 * MS, "j101") is not None
    assert sync.add(0, 99 * MS, "img99") is None  # older than the image already served
    assert sync.add(1, 101 * MS, "j101again") is None
    st = sync.stats()
    assert [c.late for c in st.per_input] == [1, 1]
    assert [c.waiting for c in st.per_input] == [0, 0]
    _accounted(sync)


def test_queue_bound_drops_oldest_as_unmatched():
    sync = ApproximateSync(("image", "joints"), slop_ns=1 * MS, queue_size=3)
    for t in range(10):
        assert sync.add(1, t * 100 * MS, t) is None
    st = sync.stats()
    assert st.per_input[1].waiting == 3 and st.per_input[1].unmatched == 7
    match = sync.add(0, 900 * MS, "img")
    assert match.items == ("img", 9)
    _accounted(sync)


def test_three_inputs_need_all_within_slop():
    sync = ApproximateSync(("a", "b", "c"), slop_ns=10 * MS)
    sync.add(0, 0, "a0")
    sync.add(1, 8 * MS, "b8")
    assert sync.add(2, -8 * MS, "c-8") is None  # each within 10 ms of a0, but spread 16 ms
    match = sync.add(2, 5 * MS, "c5")
    assert match.items == ("a0", "b8", "c5")
    _accounted(sync)


def test_clear_counts_waiting_as_unmatched_and_bad_arguments_are_refused():
    sync = ApproximateSync(("image", "joints"), slop_ns=MS)
    sync.add(0, 0, "x")
    assert sync.clear() == 1
    assert sync.stats().per_input[0].unmatched == 1
    _accounted(sync)
    with pytest.raises(ValueError, match="2 or more"):
        ApproximateSync(("only",), slop_ns=MS)
    with pytest.raises(ValueError, match="slop"):
        ApproximateSync(("a", "b"), slop_ns=-1)
    with pytest.raises(IndexError):
        sync.add(2, 0, "x")
