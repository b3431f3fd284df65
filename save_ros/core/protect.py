"""`protect(model, example_input, input_range, config) -> ProtectedModel`: SAVE at run time.

The facade of the four stages, each in its own place: Selection (`core.select`) says which bits
of which tensor are robust, ranging or vulnerable; Allocation (`core.allocate`) puts the most
vulnerable bytes in the reliable pool; Verification (`core.verify`) checks every inference off
the inference thread; Edit (`core.edit`) restores corrupted weights from their golden copies
(`core.weights`) and re-runs from the first failing layer. `protect()` analyses (unless
`ProtectConfig.analysis` brings an Analysis) and returns the runtime for the example input's
device: `core.runtime.ProtectedModel` (eager, any device), or on CUDA its subclass
`core.cuda.runtime.CudaProtectedModel` (one CUDA-graph replay per inference). Both keep one
contract: the same result and status types, every config field honoured or refused.

Inputs (`core.inputs`): one tensor, or a tuple / list / dict of tensors (passed to forward
positionally, or as keyword arguments for a dict), batch first; `input_range` is one box per
input (in the same order, or keyed like the dict; None for integer inputs, which are exact), a
single box for a single input. `ProtectConfig.calibration` is a batch in the same structure.
`infer()` raises `InputError` for an input of another structure, dtype, shape or device, with
NaN / Inf, or outside its box, before the model runs: an input error is never a fault.
"""

from __future__ import annotations

import warnings
from typing import Any

from torch import nn

from save_ros.core.analysis import Analysis
from save_ros.core.config import ProtectConfig
from save_ros.core.cuda.runtime import CudaProtectedModel
from save_ros.core.inputs import InputError, ModelInputs
from save_ros.core.instrument import UnsupportedModelError
from save_ros.core.runtime import InferenceResult, ProtectedModel
from save_ros.core.select import analyze
from save_ros.core.verify.verifier import VerifierMode

__all__ = ["InferenceResult", "InputError", "ProtectConfig", "ProtectedModel",
           "UnsupportedModelError", "protect"]


class UnsupportedOpWarning(UserWarning):
    """Ops without an interval rule: their ranges (and what follows) are calibrated only."""


def warn_unsupported(analysis: Analysis) -> None:
    """One warning naming the ops without an interval rule and what that means."""
    if not analysis.unsupported:
        return
    ops = "; ".join(analysis.unsupported[:5])
    more = f" (+{len(analysis.unsupported) - 5} more)" if len(analysis.unsupported) > 5 else ""
    warnings.warn(UnsupportedOpWarning(
        f"{len(analysis.unsupported)} op(s) have no interval rule: {ops}{more}. Their ranges "
        f"and the {len(analysis.unsound)} activation range(s) computed from them are calibrated "
        "(observed on calibration inputs), not sound: pass calibration inputs that cover real "
        "use, or add a rule in save_ros/core/select/propagate.py"), stacklevel=3)


def protect(model: nn.Module, example_input: Any, input_range: Any,
            config: ProtectConfig | None = None, fault_sites: bool = False) -> ProtectedModel:
    """Analyse, allocate and instrument `model`; return it protected (it is changed in place:
    its weights move into checksummed flat storage, in-place modules become out-of-place).

    `example_input`: a tensor, or a tuple / list / dict of tensors, shaped like one batch of
    real input; `input_range`: one box per input (module docstring)."""
    config = config or ProtectConfig()
    VerifierMode(config.verifier)  # fail early on a typo
    if config.cuda_backend not in ("graph", "generic"):
        raise ValueError(f"cuda_backend={config.cuda_backend!r}; use 'graph' or 'generic'")
    inputs = ModelInputs.of(model, example_input, input_range)
    inputs.normalize(example_input, "example_input")
    device = inputs.device
    devices = {p.device for p in model.parameters()}
    if devices and devices != {device}:
        raise ValueError(f"the model is on {', '.join(sorted(map(str, devices)))} but "
                         f"example_input on {device}: move both to one device "
                         "(model.to(device), x.to(device)) before protect()")
    model.eval()
    analysis = config.analysis
    if analysis is None:
        calib = config.calibration
        if calib is not None:
            calib = inputs.batch(inputs.to(calib, device), "calibration")
        analysis = analyze(model, example_input, inputs, calib,
                           config=config.select_config())
    warn_unsupported(analysis)
    if device.type == "cuda" and config.cuda_backend == "graph":
        # one replay of a CUDA graph per inference, checks captured beside the forward
        return CudaProtectedModel(model, example_input, inputs, config, analysis,
                                  fault_sites=fault_sites)
    return ProtectedModel(model, example_input, inputs, config, analysis, fault_sites=fault_sites)
