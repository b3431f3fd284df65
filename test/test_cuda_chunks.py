"""The CUDA backend's chunk plans and reductions: exact per-chunk checksums and min/max rows.

The torch reductions run on any device (these tests on the CPU); the Triton kernels are held
against them on a GPU (`cuda` tests, skipped with the reason elsewhere).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from save_ros.core.bits import flip_, int_view
from save_ros.core.cuda import triton_available
from save_ros.core.cuda.chunks import (
    ChunkPlanError,
    checksum_chunks_torch,
    minmax_chunks_torch,
    plan_chunks,
)
from save_ros.core.cuda.reducer import ChunkReducer, Kernels, Reduction

needs_triton = pytest.mark.skipif(not triton_available(), reason="needs Triton with CUDA")


def _sums(ts, plan):
    out = torch.zeros(plan.n_chunks, 2, dtype=torch.int64)
    return checksum_chunks_torch(ts, plan, out).numpy().copy()


def test_plan_cuts_tensors_into_chunks_that_never_span_two():
    plan = plan_chunks(["a", "b", "c"], [10, 1, 25], chunk=8)
    assert plan.offsets == (0, 2, 3, 7)
    assert plan.owner().tolist() == [0, 0, 1, 2, 2, 2, 2]
    assert plan.chunk_lengths().tolist() == [8, 2, 1, 8, 8, 8, 1]
    assert plan.chunk_start().tolist() == [0, 8, 0, 0, 8, 16, 24]
    assert plan.names_of(np.array([6, 3, 1])) == ["a", "c"]
    sub = plan.sub(1, 3)
    assert sub.names == ("b", "c") and sub.offsets == (0, 1, 5)
    with pytest.raises(ChunkPlanError, match="overflow"):
        plan_chunks(["a"], [4], chunk=1 << 15)
    with pytest.raises(ChunkPlanError, match="2 tensors"):
        plan.sub(0, 2).check([torch.zeros(10)])


def test_minmax_rows_are_exact_per_chunk():
    g = torch.Generator().manual_seed(1)
    ts = [torch.randn(37, generator=g), torch.randn(3, 5, generator=g)]
    plan = plan_chunks(["x", "y"], [37, 15], chunk=16)
    out = minmax_chunks_torch(ts, plan, torch.empty(plan.n_chunks, 2))
    flat = ts[0]
    for r, (a, b) in enumerate([(0, 16), (16, 32), (32, 37)]):
        assert out[r, 0] == flat[a:b].min() and out[r, 1] == flat[a:b].max()
    assert out[3, 0] == ts[1].min() and out[3, 1] == ts[1].max()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_every_single_bit_flip_changes_exactly_its_chunk(dtype):
    g = torch.Generator().manual_seed(2)
    w = torch.randn(40, generator=g).to(dtype)
    plan = plan_chunks(["w"], [40], chunk=16)
    golden = _sums([w], plan)
    width = int_view(w).element_size() * 8
    for idx in (0, 17, 39):
        for bit in range(width):
            flip_(w, idx, bit)
            diff = np.flatnonzero((_sums([w], plan) != golden).any(axis=1))
            assert diff.tolist() == [idx // 16], (idx, bit)
            flip_(w, idx, bit)
    assert (_sums([w], plan) == golden).all()


def test_weighted_sum_catches_flips_that_cancel_in_the_plain_sum():
    w = torch.tensor([1.0, 3.0, 1.0, 3.0])  # bit 22 of 3.0 is set, of 1.0 is clear
    plan = plan_chunks(["w"], [4])
    golden = _sums([w], plan)
    flip_(w, [0, 1], [22, 22])  # +2^22 in one element, -2^22 in the other
    now = _sums([w], plan)
    assert now[0, 0] == golden[0, 0]  # the plain sum is blind to this pair
    assert now[0, 1] != golden[0, 1]


@pytest.mark.cuda
@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_triton_rows_equal_the_torch_reference(dtype):
    g = torch.Generator(device="cuda").manual_seed(0)
    sizes = [1, 7, 16384, 16385, 100_000, 3 * 16384]
    ts = [torch.randn(n, generator=g, device="cuda").mul(50).to(dtype) for n in sizes]
    ts[3][16384] = float("nan")
    plan = plan_chunks([str(i) for i in range(len(ts))], sizes)
    for kind, ref_fn in ((Reduction.MINMAX, minmax_chunks_torch),
                         (Reduction.CHECKSUM, checksum_chunks_torch)):
        red = ChunkReducer(plan, dtype, kind, torch.device("cuda"), Kernels.TRITON)
        red.out.fill_(-7)  # poison: every row must be written
        red.bind(ts)
        red.launch(ts)
        ref = ref_fn(ts, plan, torch.empty_like(red.out))
        got = red.out
        if kind is Reduction.MINMAX:
            nan_row = plan.offsets[3] + 1
            assert got[nan_row, 0] == float("-inf") and got[nan_row, 1] == float("inf")
            assert torch.isnan(ref[nan_row]).all()
            keep = torch.ones(plan.n_chunks, dtype=torch.bool, device="cuda")
            keep[nan_row] = False
            got, ref = got[keep], ref[keep]
        assert torch.equal(got, ref), kind
