"""Per-layer checks of SAVE Verification: range, DMR and ABFT, and the fp32 tolerance they use.

A `LayerCheck` is what the verifier runs for one layer on the values an inference saved:

- `RANGE`: min/max of the layer's output against the analysed range (per channel when known).
  Range checks of all layers are batched into one comparison (`RangeBatch`).
- `DMR`: re-compute the layer from its saved inputs and compare. Exact (`torch.equal`) where the
  op is deterministic on this machine (probed at protect time), else within the fp32 bound below.
- `ABFT`: for `nn.Linear` / `nn.Conv2d` (groups=1): the sum of the outputs over the output channels
  must equal the input times the column sums of the *golden* weights plus the summed bias.

ABFT tolerance (per output position; u = 2^-24, gamma(n) = n u / (1 - n u), K = fan-in, J = out
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

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

U32 = 2.0**-24  # unit roundoff of fp32


def gamma(n: int, u: float = U32) -> float:
    """Higham's gamma_n = n u / (1 - n u): the relative error bound of an n-term fp sum."""
    return n * u / (1.0 - n * u)


class CheckKind(str, enum.Enum):
    """Which check a layer gets."""

    NONE = "none"  # robust bits only, the output lives in reliable memory, or no tensor output
    RANGE = "range"  # ranging bits: min/max against the analysed range
    DMR = "dmr"  # vulnerable bits: re-compute from the saved input and compare
    ABFT = "abft"  # vulnerable bits of linear/conv: checksum of golden weights
    CHECKSUM = "checksum"  # memory flips: bit sum when written vs after the last read
    WEIGHTS = "weights"  # checksums of weights in normal memory (not a layer check)
    INPUT = "input"  # the model input against the declared input range


@dataclass
class LayerCheck:
    """The check planned for one layer and everything it needs at run time."""

    index: int  # position of the layer's node in the runtime's value tuple
    name: str  # fx node name = activation name
    kind: CheckKind
    reason: str  # why this check (for the report)
    recompute: Callable[[Sequence[Any]], Any] | None = None  # layer from saved values
    exact: bool = True  # DMR: compare bit-exactly (the op is deterministic here)
    range_low: torch.Tensor | None = None  # RANGE: scalar or per-channel bounds
    range_high: torch.Tensor | None = None
    channel_dim: int | None = None
    range_source: str = ""
    abft: AbftCheck | None = None
    cost_s: dict[str, float] = field(default_factory=dict)  # measured per-check cost
    # chained DMR (`ProtectConfig.chain_dmr`): the first layer of the re-computed segment this
    # check compares at its end, and every layer of that segment (else None / empty)
    head: int | None = None
    members: tuple[int, ...] = ()

    def describe(self) -> str:
        """One line for reports: layer, check, why."""
        extra = "" if self.kind is not CheckKind.DMR else (" exact" if self.exact else " tol")
        return f"{self.name}: {self.kind.value}{extra} ({self.reason})"


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


def dmr_differs(recomputed: Any, saved: Any, exact: bool) -> torch.Tensor | bool:
    """A device bool (no host sync): the re-computation differs from the saved value.

    The device-side twin of `dmr_mismatch` for captured check programs; NaN always differs.
    """
    if isinstance(saved, torch.Tensor):
        if not isinstance(recomputed, torch.Tensor) or recomputed.shape != saved.shape:
            return True
        if exact or not recomputed.is_floating_point():
            return ~(recomputed == saved).all()
        scale = recomputed.abs().amax() * 1e-6 + 1e-30
        return ~((recomputed - saved).abs() <= 1e-5 * recomputed.abs() + scale).all()
    if isinstance(saved, (tuple, list)):
        if not isinstance(recomputed, (tuple, list)) or len(recomputed) != len(saved):
            return True
        flags = [dmr_differs(r, s, exact) for r, s in zip(recomputed, saved, strict=True)]
        tensors = [f for f in flags if isinstance(f, torch.Tensor)]
        if any(f is True for f in flags):
            return True
        return torch.stack(tensors).any() if tensors else False
    return recomputed != saved


def dmr_mismatch(recomputed: Any, saved: Any, exact: bool) -> str | None:
    """None when a DMR re-computation agrees with the saved output, else what differs."""
    if isinstance(saved, torch.Tensor):
        if not isinstance(recomputed, torch.Tensor) or recomputed.shape != saved.shape:
            return "re-computed value has another type or shape"
        if torch.equal(recomputed, saved):
            return None
        if not exact and recomputed.is_floating_point():
            scale = float(recomputed.abs().amax()) if recomputed.numel() else 0.0
            # a non-deterministic op (parallel reduction order) differs by a few ulps
            if bool(torch.isclose(recomputed, saved, rtol=1e-5, atol=1e-6 * scale + 1e-30).all()):
                return None
        diff = torch.nan_to_num((recomputed.double() - saved.double()).abs(), nan=float("inf"))
        n_bad = int((~(recomputed == saved)).sum())
        return f"{n_bad} element(s) differ, max |diff| {float(diff.max()):.3g}"
    if isinstance(saved, (tuple, list)):
        if not isinstance(recomputed, (tuple, list)) or len(recomputed) != len(saved):
            return "re-computed value has another structure"
        for r, s in zip(recomputed, saved, strict=True):
            msg = dmr_mismatch(r, s, exact)
            if msg:
                return msg
        return None
    return None if recomputed == saved else "re-computed value differs"


class RangeBatch:
    """All range checks of a plan, reduced layer by layer and compared in one vector op."""

    def __init__(self, checks: Sequence[LayerCheck]) -> None:
        self.checks = list(checks)
        lows, highs, self.owner = [], [], []
        for i, c in enumerate(self.checks):
            lo = c.range_low.reshape(-1).float()
            hi = c.range_high.reshape(-1).float()
            lows.append(lo)
            highs.append(hi)
            self.owner += [i] * lo.numel()
        self.low = torch.cat(lows) if lows else torch.empty(0)
        self.high = torch.cat(highs) if highs else torch.empty(0)
        self.owner_t = torch.tensor(self.owner, dtype=torch.int64)

    def reduce(self, values: Sequence[Any], checks: Sequence[LayerCheck] | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Concatenated (mins, maxs) of the given checks' outputs (all by default), on device."""
        mins, maxs = [], []
        for c in self.checks if checks is None else checks:
            t = values[c.index]
            if c.channel_dim is None:
                mn, mx = torch.aminmax(t)
                mins.append(mn.reshape(1))
                maxs.append(mx.reshape(1))
            else:
                dims = [d for d in range(t.dim()) if d != c.channel_dim]
                mins.append(t.amin(dim=dims))
                maxs.append(t.amax(dim=dims))
        return torch.cat(mins).float(), torch.cat(maxs).float()

    def bounds_of(self, checks: Sequence[LayerCheck], device) -> tuple[torch.Tensor, torch.Tensor]:
        """The (low, high) rows of the given checks, in `reduce` order, on `device`."""
        pos = {id(c): i for i, c in enumerate(self.checks)}
        rows = [j for c in checks for j, o in enumerate(self.owner) if o == pos[id(c)]]
        idx = torch.tensor(rows, dtype=torch.int64)
        return self.low[idx.to(self.low.device)].to(device), \
            self.high[idx.to(self.high.device)].to(device)

    def failures(self, values: Sequence[Any]) -> list[tuple[LayerCheck, str]]:
        """The checks whose layer output leaves its range (NaN always does)."""
        if not self.checks:
            return []
        mn, mx = self.reduce(values)
        if self.low.device != mn.device:
            self.low, self.high = self.low.to(mn.device), self.high.to(mn.device)
        ok = (mn >= self.low) & (mx <= self.high)  # NaN compares False: a failure
        if bool(ok.all()):
            return []
        out = []
        bad = (~ok).nonzero().flatten().tolist()
        seen: set[int] = set()
        for j in bad:
            i = self.owner[j]
            if i in seen:
                continue
            seen.add(i)
            c = self.checks[i]
            out.append((c, f"[{float(mn[j]):.4g}, {float(mx[j]):.4g}] outside "
                           f"{c.range_source} range [{float(self.low[j]):.4g}, "
                           f"{float(self.high[j]):.4g}]"))
        return out
