"""The `abft` kind: for a linear / conv layer, the sum of its outputs against the golden weights.

For `nn.Linear` / `nn.Conv2d` (groups=1): the sum of the outputs over the output channels must
equal the input times the column sums of the *golden* weights plus the summed bias.

- plan entry (`offer`): takes a DMR check over where the layer is such a module with weights in
  the store, the bound holds on the example run, and it measured clearly cheaper than
  re-computing the layer on this machine (`ABFT_GAIN`) or `checks="abft"` forces it;
- eager check (`eager_check`): the largest excess over the tolerance, on the host;
- device check (`device_check`): the same comparison as a device bool, one flag per layer.

Tolerance (per output position; u = 2^-24, gamma(n) = n u / (1 - n u), K = fan-in, J = out
channels): each output y_j = sum_k W_jk x_k + b_j is computed with error <= gamma(K+1) A_j, where
A_j = sum_k |W_jk x_k| + |b_j| (any summation order, FMA or not); summing the J outputs adds
<= gamma(J) sum_j |y_j|; the check value c.x + sum(b) with c_k = fl(sum_j W_jk) adds <=
gamma(J) sum_k (sum_j |W_jk|) |x_k| + gamma(K+1) sum_k |c_k x_k| <= (gamma(J) + gamma(K+1)) A.
So |S_y - S_c| <= (2 gamma(K+1) + gamma(J)) A + gamma(J) sum_j |y_j| + gamma(J) A, with
A = |x| . a + sum|b|, a_k = sum_j |W_jk|. We use twice that bound (for the final subtraction and
the bias), plus the largest change a robust output bit can make (`robust_allowance`): a flip of
mantissa bit m changes an element by at most 2^(m-23) of its magnitude, so flips of bits below
the lowest non-robust bit of the output stay under 2^(m_robust-23) max|y| per flip.
Any flip that exceeds the tolerance is reported; a robust one never triggers a repair.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from save_ros.core.verify.checks import CheckKind, LayerCheck
from save_ros.core.verify.kinds.base import EagerRun, Kind, PlanContext, best_time
from save_ros.core.verify.status import Detection

U32 = 2.0**-24  # unit roundoff of fp32
ABFT_GAIN = 0.8  # ABFT must cost < 80 % of DMR to be picked (DMR is exact, ABFT has a tolerance)


def gamma(n: int, u: float = U32) -> float:
    """Higham's gamma_n = n u / (1 - n u): the relative error bound of an n-term fp sum."""
    return n * u / (1.0 - n * u)


@dataclass
class AbftCheck:
    """Checksum data of one linear / conv layer, built from the golden weights."""

    module: nn.Module
    colsum: torch.Tensor  # sum over output channels of the golden weight
    abssum: torch.Tensor  # sum over output channels of |golden weight|
    bias_sum: float
    bias_abs: float
    fan_in: int
    out_channels: int
    robust_allowance: float = 0.0  # relative (to max|y|) change a robust output flip can make

    def _reduce(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """x times a one-output-channel weight, laid out like the layer's summed output."""
        m = self.module
        if isinstance(m, nn.Linear):
            return x @ w
        return F.conv2d(x, w, None, m.stride, m.padding, m.dilation, 1).squeeze(1)

    def excess(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """|S_y - S_c| - tolerance per output position, on the device (no host sync)."""
        s_c = self._reduce(x, self.colsum) + self.bias_sum
        s_y = y.sum(-1) if isinstance(self.module, nn.Linear) else y.sum(1)
        return (s_y - s_c).abs() - self._tolerance(x, y)

    def fails(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """A device bool: the checksum exceeds its tolerance somewhere (NaN fails)."""
        e = self.excess(x, y)
        return ~(e <= 0).all()  # NaN compares False: a fault, never a pass

    def violation(self, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
        """(largest |S_y - S_c| - tolerance, that difference): positive means a fault."""
        excess = self.excess(x, y)
        tol_free = excess + self._tolerance(x, y)
        # NaN in the output or input makes `excess` NaN: a fault, never a pass
        worst = torch.nan_to_num(excess, nan=float("inf")).amax()
        return float(worst), float(torch.nan_to_num(tol_free, nan=float("inf")).amax())

    def _tolerance(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The tolerance per output position (for the report of the difference)."""
        a = self._reduce(x.abs(), self.abssum) + self.bias_abs
        ya = y.abs().sum(-1) if isinstance(self.module, nn.Linear) else y.abs().sum(1)
        g_k, g_j = gamma(self.fan_in + 1), gamma(self.out_channels)
        tol = 2.0 * ((2 * g_k + 2 * g_j) * a + g_j * ya) + 1e-30
        if self.robust_allowance:
            tol = tol + self.robust_allowance * y.abs().amax()
        return tol


def abft_for(module: nn.Module, golden_weight: torch.Tensor,
             golden_bias: torch.Tensor | None) -> AbftCheck | None:
    """ABFT data for a Linear or a plain Conv2d (groups=1, zero padding), else None."""
    if isinstance(module, nn.Linear):
        colsum = golden_weight.sum(0)
        abssum = golden_weight.abs().sum(0)
        fan_in, out_ch = golden_weight.shape[1], golden_weight.shape[0]
    elif isinstance(module, nn.Conv2d) and module.groups == 1 and module.padding_mode == "zeros" \
            and not isinstance(module.padding, str):
        colsum = golden_weight.sum(0, keepdim=True)
        abssum = golden_weight.abs().sum(0, keepdim=True)
        fan_in = golden_weight[0].numel()
        out_ch = golden_weight.shape[0]
    else:
        return None
    bias_sum = float(golden_bias.double().sum()) if golden_bias is not None else 0.0
    bias_abs = float(golden_bias.double().abs().sum()) if golden_bias is not None else 0.0
    return AbftCheck(module, colsum.contiguous(), abssum.contiguous(), bias_sum, bias_abs,
                     fan_in, out_ch)


def _robust_mantissa_bits(ta: Any) -> int:
    """Number of low mantissa bits that are (almost) always robust in a tensor."""
    n = 0
    for robust, _ranging, _vul in (ta.bit_shares if ta is not None else [])[:23]:
        if robust < 0.999:
            break
        n += 1
    return n


class AbftKind(Kind):
    """Algorithm-based checksum of a linear / conv layer against its golden weights."""

    kind = CheckKind.ABFT
    verifies = "sum of the outputs equals the input times the golden column sums"
    failure = "the output checksum differs from the input times the golden column sums beyond " \
        "its rounding tolerance"
    covers = "flips in the output or the weights that exceed the rounding tolerance"
    on_device = "the same comparison on the side stream, one flag per layer"
    redundant = True
    replaces = (CheckKind.DMR,)

    def data(self, inst: Any, i: int, store: Any) -> AbftCheck | None:
        """ABFT data for node i if it is a Linear / Conv2d module whose weights the store holds."""
        mod = inst.module_of(i)
        if mod is None:
            return None
        target = inst.node_of(i).target
        wname, bname = f"{target}.weight", f"{target}.bias"
        if wname not in store.slots:
            return None
        gb = store.golden(bname) if bname in store.slots else None
        return abft_for(mod, store.golden(wname), gb)

    def offer(self, c: LayerCheck, ctx: PlanContext, ta: Any) -> None:
        """ABFT instead of the DMR that `c` has, where its bound holds and it costs less."""
        if c.kind not in self.replaces:
            return
        abft = self.data(ctx.inst, c.index, ctx.store)
        if abft is None or ctx.force == "dmr":
            return
        saved = ctx.values[c.index]
        x = self.input_of(c, ctx.values, ctx.inst)
        if ctx.robust_allowance:
            m = _robust_mantissa_bits(ta)
            abft.robust_allowance = 2.0 ** (m - 23) if m else 0.0
        excess, _ = abft.violation(x, saved)
        if excess > 0:  # the bound does not hold on a fault-free run: never use it here
            c.reason += "; ABFT bound failed on the example run, DMR used"
            return
        cuda = isinstance(saved, torch.Tensor) and saved.is_cuda
        c.cost_s[self.name] = best_time(lambda: abft.fails(x, saved), cuda=cuda)
        mine, dmr = c.cost_s[self.name], c.cost_s["dmr"]
        if ctx.force == self.name or mine < ABFT_GAIN * dmr:
            c.kind, c.abft = self.kind, abft
            c.reason += f"; ABFT {mine * 1e6:.0f} us < DMR {dmr * 1e6:.0f} us"
        else:
            c.reason += f"; DMR {dmr * 1e6:.0f} us <= ABFT {mine * 1e6:.0f} us"

    @staticmethod
    def input_of(c: LayerCheck, values: Sequence[Any], inst: Any) -> Any:
        """The layer's input (its first argument) among the saved values."""
        return values[inst.index[inst.node_of(c.index).args[0].name]]

    def eager_check(self, c: LayerCheck, run: EagerRun) -> tuple[int, Detection] | None:
        excess, diff = c.abft.violation(self.input_of(c, run.values, run.inst),
                                        run.values[c.index])
        if excess <= 0:
            return None
        return c.index, Detection(c.name, c.name, self.name, f"|sum(y) - c.x| = {diff:.4g} "
                                  f"exceeds the tolerance by {excess:.4g}")

    def device_check(self, c: LayerCheck, vals: Sequence[Any], inst: Any
                     ) -> torch.Tensor | bool:
        return c.abft.fails(self.input_of(c, vals, inst), vals[c.index])


ABFT = AbftKind()
