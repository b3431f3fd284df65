"""Campaign methods (`eval.methods.Method`) for SAVE and two baselines: full DMR, range restriction.

- `save`: `protect()` with the default config: reliable pool (never injected), checks on the
  verifier thread, repair + re-run. `predict` waits for the verdict, so what it returns is what a
  node with the `verified` publish policy would publish. Reliable activations are excluded from
  activation faults through `activation_exclude` (module paths); the activation budget is per
  inference at the example batch (1), so a campaign batch of 256 samples stands for 256 batch-1
  inferences, each with its own reliable activation buffers.
- `full_dmr`: every inference runs twice on the inference thread and the outputs are compared
  bit-exactly; on a mismatch a third run decides by majority (per sample). Weights are in one copy
  in normal memory, so a weight flip corrupts both runs alike: DMR of execution cannot see it.
- `range_restriction`: clip every module input to the min/max profiled on the calibration split
  (NaN to 0), as Ranger does; nothing is detected, faults are only damped.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from save_ros.core.protect import ProtectConfig, ProtectedModel, protect
from save_ros.eval.methods import ForwardMethod, model_args


def _calib_x(calib: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
    if calib is None:
        raise ValueError("this method needs the calibration split (calib=(x, y)) to prepare")
    return calib[0]


class SaveMethod:
    """SAVE: Selection, Allocation, Verification and Edit through `protect()`."""

    name = "save"
    activations_injectable = True
    fx_activation_sites = False  # the runtime runs its own fx code: only module hooks reach it

    def __init__(self, config: ProtectConfig | None = None) -> None:
        self.config = config
        self.model: nn.Module = nn.Identity()
        self.pm: ProtectedModel | None = None
        self.activation_exclude: frozenset[str] = frozenset()

    def prepare(self, model: nn.Module, spec: Any,
                calib: tuple[torch.Tensor, torch.Tensor] | None) -> None:
        """Analyse and protect the model (fault-free) with the calibration split."""
        x = _calib_x(calib)
        cfg = self.config or ProtectConfig()
        if cfg.calibration is None:
            cfg = ProtectConfig(**{**cfg.__dict__, "calibration": x})
        if self.pm is not None:
            self.pm.close()
        # several inputs: x is an InputBatch and spec.input_range() one box per input
        self.pm = protect(model, x[:1], spec.input_range(), cfg)
        self.model = self.pm.model
        self.activation_exclude = frozenset(self.pm.reliable_activation_sites())

    def injectable(self) -> dict[str, torch.Tensor]:
        """Weights in normal memory (the reliable pool is never hit)."""
        return self.pm.normal_tensors()

    def predict(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The verified (repaired if needed) output; detected = a fault was found and handled."""
        r = self.pm.infer(x, wait=True)
        return r.output, torch.full((len(x),), r.status.faulty, dtype=torch.bool)

    def reset(self) -> None:
        """Make sure no weight differs from its golden copy (the undo log already restored)."""
        self.pm.recover()


class FullDmr(ForwardMethod):
    """Duplicated execution with output comparison; a third run votes on a mismatch.

    Weights stay in one copy in normal memory, so every parameter is injectable.
    """

    name = "full_dmr"

    def predict(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Run twice, compare per sample; re-run and take the majority where they differ."""
        with torch.inference_mode():
            args = model_args(x)
            a = self.model(*args)
            b = self.model(*args)
            diff = (a != b).reshape(len(x), -1).any(1)  # NaN != NaN: a mismatch
            if not bool(diff.any()):
                return a, diff
            c = self.model(*args)
            # majority: where a equals c, a is right; else b (b == c, or all three differ)
            a_ok = (a == c).reshape(len(x), -1).all(1)
            shape = (len(x),) + (1,) * (a.dim() - 1)
            out = torch.where(a_ok.reshape(shape), a, b)
        return out, diff


class RangeRestriction(ForwardMethod):
    """Clip every module's input to its profiled range (Ranger-style), NaN to 0.

    Every parameter is injectable; `predict` is one clipped forward pass that never detects.
    """

    name = "range_restriction"

    def __init__(self) -> None:
        super().__init__()
        self.bounds: dict[str, tuple[float, float]] = {}
        self._handles: list = []

    def prepare(self, model: nn.Module, spec: Any = None,
                calib: tuple[torch.Tensor, torch.Tensor] | None = None) -> None:
        """Profile the input range of every leaf module on the calibration split, then clip."""
        x = _calib_x(calib)
        super().prepare(model)
        for h in self._handles:
            h.remove()
        leaves = {p: m for p, m in model.named_modules() if p and next(m.children(), None) is None}
        seen: dict[str, list[float]] = {}
        handles = []
        for path, mod in leaves.items():
            def probe(_m, args, path=path):
                if args and isinstance(args[0], torch.Tensor) and args[0].is_floating_point():
                    lo, hi = float(args[0].min()), float(args[0].max())
                    old = seen.get(path)
                    seen[path] = [lo, hi] if old is None else [min(old[0], lo), max(old[1], hi)]
            handles.append(mod.register_forward_pre_hook(probe))
        try:
            with torch.inference_mode():
                model(*model_args(x))
        finally:
            for h in handles:
                h.remove()
        self.bounds = {p: (lo, hi) for p, (lo, hi) in seen.items()}
        for path, (lo, hi) in self.bounds.items():
            def clip(_m, args, lo=lo, hi=hi):
                if not args or not isinstance(args[0], torch.Tensor):
                    return None
                return (torch.nan_to_num(args[0], nan=0.0).clamp(lo, hi), *args[1:])
            self._handles.append(leaves[path].register_forward_pre_hook(clip))


def save_method() -> SaveMethod:
    """Registry factory: SAVE with the default config."""
    return SaveMethod()


def full_dmr() -> FullDmr:
    """Registry factory: full DMR of execution."""
    return FullDmr()


def range_restriction() -> RangeRestriction:
    """Registry factory: range restriction alone."""
    return RangeRestriction()
