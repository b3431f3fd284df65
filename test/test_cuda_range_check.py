"""The CUDA backend's range checks: every element against its own channel's bounds.

The torch reference runs on any device (these tests on the CPU); the Triton kernel is held
against it on a GPU (`cuda` tests, skipped with the reason elsewhere). The regression pinned
here: the check used to compare the min / max of 4096-element chunks with the hull of the
channels a chunk spans - for (N, T, D) token tensors the whole tensor's hull - so a flip that
Selection classed *ranging* (outside its own channel's range) but inside another channel's
range passed unseen.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from save_ros.core.cuda import triton_available
from save_ros.core.cuda.chunks import ChunkPlanError, plan_chunks
from save_ros.core.cuda.range_check import (
    Kernels,
    RangeChecker,
    RangeCheckError,
    channel_layout,
    violations_torch,
)

needs_triton = pytest.mark.skipif(not triton_available(), reason="needs Triton with CUDA")


def test_plan_cuts_tensors_into_chunks_that_never_span_two():
    plan = plan_chunks(["a", "b", "c"], [10, 1, 25], chunk=8)
    assert plan.offsets == (0, 2, 3, 7)
    assert plan.owner().tolist() == [0, 0, 1, 2, 2, 2, 2]
    assert plan.chunk_lengths().tolist() == [8, 2, 1, 8, 8, 8, 1]
    assert plan.chunk_start().tolist() == [0, 8, 0, 0, 8, 16, 24]
    assert plan.names_of(np.array([6, 3, 1])) == ["a", "c"]
    sub = plan.sub(1, 3)
    assert sub.names == ("b", "c") and sub.offsets == (0, 1, 5)
    with pytest.raises(ChunkPlanError, match="1..16384"):
        plan_chunks(["a"], [4], chunk=1 << 15)
    with pytest.raises(ChunkPlanError, match="2 tensors"):
        plan.sub(0, 2).check([torch.zeros(10)])


def _checker(tensors, cdims, bounds, chunk=16, device="cpu", backend=Kernels.TORCH):
    return RangeChecker([str(i) for i in range(len(tensors))], [t.shape for t in tensors],
                        cdims, [b[0] for b in bounds], [b[1] for b in bounds],
                        tensors[0].dtype, torch.device(device), backend, chunk=chunk)


def test_channel_layout_of_images_tokens_and_whole_tensors():
    assert channel_layout((2, 3, 4, 5), 1, 3) == (20, 3)
    assert channel_layout((1, 7, 6), 2, 6) == (1, 6)
    assert channel_layout((1, 7, 6), None, 1) == (1, 1)
    with pytest.raises(RangeCheckError, match="do not fit"):
        channel_layout((1, 7, 6), 2, 5)


def test_a_value_inside_the_hull_but_outside_its_channel_is_counted():
    # tokens (N, T, D): channel 0 lives in [0, 1], channel 1 in [10, 11]
    x = torch.tensor([[[0.5, 10.5], [0.2, 10.9], [0.9, 10.1]]])
    lo, hi = torch.tensor([0.0, 10.0]), torch.tensor([1.0, 11.0])
    rc = _checker([x], [2], [(lo, hi)], chunk=4)
    rc.launch([x])
    assert rc.out.tolist() == [0, 0] and not bool(rc.failed())
    x[0, 1, 0] = 5.0  # inside the tensor's hull [0, 11], outside channel 0
    rc.launch([x])
    assert rc.out.tolist() == [1, 0] and bool(rc.failed())


def test_image_channels_rows_and_nan_are_exact():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 5, 5, generator=g)  # a chunk of 16 spans channels
    lo = torch.tensor([0.0, 0.0, 0.0])
    hi = torch.tensor([1.0, 1.0, 0.5])
    want = (x > hi.reshape(1, 3, 1, 1)).reshape(-1)
    x2 = x.clone()
    x2.view(-1)[7] = float("nan")
    want2 = want.clone()
    want2[7] = True
    rc = _checker([x2], [1], [(lo, hi)], chunk=16)
    rc.launch([x2])
    ref = torch.nn.functional.pad(want2.int(), (0, 16 * 10 - 150)).reshape(10, 16).sum(1)
    assert rc.out.tolist() == ref.tolist()


def test_several_tensors_share_one_launch_with_their_own_bounds():
    a = torch.full((1, 4, 3), 0.5)
    b = torch.full((1, 2, 2, 2), 3.0)
    rc = _checker([a, b], [None, 1],
                  [(torch.tensor([0.0]), torch.tensor([1.0])),
                   (torch.tensor([2.0, 0.0]), torch.tensor([4.0, 1.0]))], chunk=8)
    rc.launch([a, b])
    # b's channel 1 ([0, 1]) holds 3.0 in all 4 of its elements
    assert rc.out.tolist() == [0, 0, 4]
    with pytest.raises(RangeCheckError, match="float16"):
        rc.bind([a.half(), b.half()])


@pytest.mark.cuda
@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_triton_rows_equal_the_torch_reference(dtype):
    g = torch.Generator(device="cuda").manual_seed(0)
    shapes = [(1,), (1, 7), (2, 64, 9, 9), (1, 197, 768), (8, 3, 64, 64)]
    cdims = [None, 1, 1, 2, 1]
    ts = [torch.randn(s, generator=g, device="cuda").mul(3).to(dtype) for s in shapes]
    ts[3].view(-1)[5000] = float("nan")
    bounds = []
    for s, c in zip(shapes, cdims, strict=True):
        n = 1 if c is None else s[c]
        lo = -torch.rand(n, generator=g, device="cuda") * 6
        bounds.append((lo, lo + torch.rand(n, generator=g, device="cuda") * 12))
    rc = _checker(ts, cdims, bounds, chunk=4096, device="cuda", backend=Kernels.TRITON)
    rc.out.fill_(-7)  # poison: every row must be written
    rc.bind(ts)
    rc.launch(ts)
    ref = violations_torch(ts, rc, torch.empty_like(rc.out))
    assert torch.equal(rc.out, ref)
    assert int(ref.sum()) > 0 and bool(rc.failed())
