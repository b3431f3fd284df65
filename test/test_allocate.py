"""Allocation: greedy by vulnerable bits per byte, within the budget, with honest totals."""

from __future__ import annotations

import pytest

from save_ros.core.allocate import BudgetError, Candidate, default_budget, plan


def _cands() -> list[Candidate]:
    return [
        Candidate("a.weight", "weight", 400, 800.0, 2.0),
        Candidate("b.weight", "weight", 4000, 2000.0, 0.5),
        Candidate("relu1", "activation", 100, 300.0, 3.0),
        Candidate("c.bias", "weight", 40, 0.0, 0.0),
        Candidate("fc", "activation", 300, 300.0, 1.0),
    ]


def test_highest_score_first_and_skips_what_does_not_fit():
    p = plan(_cands(), reliable_budget_bytes=600)
    # relu1 (3.0, 100 B), a.weight (2.0, 400 B); fc (300 B) no longer fits; b too big
    assert p.reliable == ["relu1", "a.weight"]
    assert p.used_bytes == 500
    assert p.vulnerable_bits_reliable == 1100.0
    assert p.vulnerable_bits_normal == 2300.0
    assert p.is_reliable("relu1") and not p.is_reliable("fc")
    assert p.reliable_of("weight") == ["a.weight"]
    assert p.golden_bytes == 4040  # normal weights: b.weight + c.bias


def test_a_smaller_tensor_after_a_skipped_one_still_fits():
    p = plan(_cands(), reliable_budget_bytes=850)
    assert p.reliable == ["relu1", "a.weight", "fc"]
    assert p.used_bytes == 800


def test_zero_vulnerability_is_never_placed():
    p = plan(_cands(), reliable_budget_bytes=10**9)
    assert "c.bias" not in p.reliable
    assert p.vulnerable_bits_normal == 0.0


def test_zero_budget_places_nothing():
    p = plan(_cands(), reliable_budget_bytes=0)
    assert p.reliable == [] and p.used_bytes == 0
    assert "0 / 0 B" in p.summary()


def test_bad_budgets_raise():
    with pytest.raises(BudgetError):
        plan(_cands(), reliable_budget_bytes=-1)
    with pytest.raises(BudgetError):
        default_budget(1000, -0.1)
    assert default_budget(1000) == 100


def test_to_dict_lists_kinds_of_reliable_tensors():
    d = plan(_cands(), reliable_budget_bytes=600).to_dict()
    assert d["reliable_kinds"] == {"relu1": "activation", "a.weight": "weight"}
