"""Crash-isolated workers serve a policy of several inputs (a float image, a float joint state
and an integer task id): the request carries one tensor per input (a tuple, a dict or an
InputBatch), and the worker's outputs and verdicts are those of protect() in this process,
clean and after the same seeded weight flips."""

import os
import re
import sys

import pytest
import torch

from save_ros.core.inputs import InputBatch, InputError
from save_ros.core.protect import ProtectConfig, protect
from save_ros.failover import FailoverConfig, FailoverModel, remote
from save_ros.failover.requests import as_tensors, to_array
from save_ros.faults import RandomFlips, Target, inject_weights

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "examples"))
import user_policy  # noqa: E402

BOXES = ((0.0, 1.0), (user_policy.LOW, user_policy.HIGH), (0, 3))


def _inputs(n: int, seed: int) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    low, high = torch.tensor(user_policy.LOW), torch.tensor(user_policy.HIGH)
    return (torch.rand(n, 3, 32, 32, generator=g),
            low + (high - low) * torch.rand(n, 7, generator=g),
            torch.randint(0, 4, (n, 1), generator=g))


def test_payloads_keep_the_structure_and_dtypes():
    xs = _inputs(2, 0)
    for given in (xs, list(xs), InputBatch(xs)):
        back = as_tensors(to_array(given))
        assert isinstance(back, tuple) and all(torch.equal(a, b) for a, b in zip(back, xs,
                                                                                 strict=True))
        assert back[2].dtype == torch.int64
    named = as_tensors(to_array(dict(zip(("image", "state", "task"), xs, strict=True))))
    assert list(named) == ["image", "state", "task"] and torch.equal(named["task"], xs[2])
    with pytest.raises(TypeError, match="empty sequence"):
        to_array(())


def test_worker_verdicts_equal_in_process_ones_clean_and_after_flips():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the workers' thread count: the same rounding
    example = tuple(x[:1] for x in _inputs(1, 1))
    calibration = _inputs(8, 2)
    config = ProtectConfig(calibration=calibration)
    local = protect(user_policy.make_policy().eval(), example, BOXES, config)
    fm = FailoverModel(user_policy.make_policy().eval(), example, BOXES,
                       FailoverConfig(backend="protect", standby=False), protect_config=config)
    try:
        for seed in (3, 4):
            xs = _inputs(1, seed)
            mine, theirs = local.infer(xs), fm.infer(xs)
            assert torch.equal(theirs.output, mine.output)
            assert theirs.status.verified and mine.status.verified
        # a bad input is the same clear InputError in the worker as here; the worker lives on
        for bad in (dict(zip(("image", "state", "task"), xs, strict=True)),
                    (xs[0], xs[1], xs[2].float()), (xs[0], xs[1][:, :6], xs[2]),
                    (xs[0], xs[1], xs[2] + 7)):  # structure, dtype, shape, a task id > 3
            with pytest.raises(InputError) as here:
                local.infer(bad)
            with pytest.raises(InputError, match=re.escape(str(here.value))):
                fm.infer(bad)
        clean = local.infer(_inputs(1, 5)).output
        records = fm.call(remote.inject_weight_flips, 6, "*", 11, (30,))
        log = inject_weights(None, RandomFlips(6, (30,)), Target(tensors=("*",)), 11,
                             tensors=local.normal_tensors())
        assert [(r.tensor, r.flat_index, r.bit) for r in log] == [
            (r["tensor"], r["index"], r["bit"]) for r in records]
        mine, theirs = local.infer(_inputs(1, 5)), fm.infer(_inputs(1, 5))
        assert torch.equal(theirs.output, mine.output) and torch.equal(mine.output, clean)
        assert theirs.status.verified and mine.status.verified
        assert len(theirs.status.detections) == len(mine.status.detections) > 0
        assert theirs.status.repaired == mine.status.repaired
    finally:
        fm.close()
        local.close()
        torch.set_num_threads(threads)
