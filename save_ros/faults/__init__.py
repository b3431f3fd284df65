"""Fault injection into tensors: seeded bit faults in weights and activations, faulty PEs.

Knows tensors, not SAVE. Every bit operation goes through `save_ros.core.bits` (bit 0 = least
significant). Weight faults persist until `UndoLog.undo(model)`; activation and PE faults live in
a context manager. Quick use::

    log = inject_weights(model, RandomFlips(16), Target(exclude={"fc.weight"}), seed=0)
    ...
    log.undo(model)
"""

from save_ros.faults.activations import (
    ActivationFaults,
    activation_faults,
    activation_sites,
    resolve_sites,
    sample_activation_faults,
)
from save_ros.faults.faultlist import (
    AppliedFaults,
    FaultList,
    FaultPlan,
    PlanEntry,
    apply_faults,
)
from save_ros.faults.faultmodels import (
    BitErrorRate,
    BitFault,
    BitPositions,
    FaultModel,
    FaultOp,
    MemoryFaultModel,
    NoBitsError,
    PEMode,
    PESite,
    ProcessingElementFault,
    RandomFlips,
    StuckAt,
    bit_range,
    check_bit_position,
    model_from_dict,
    model_to_dict,
)
from save_ros.faults.fxsites import UntraceableModelError
from save_ros.faults.inject import (
    ReplayMismatchError,
    apply_bit_faults,
    apply_weight_faults,
    inject_weights,
    replay,
    sample_weight_faults,
)
from save_ros.faults.pe import PEFaults, PEFaultSpec, UnsupportedLayerError, sample_pe_faults
from save_ros.faults.records import FlipRecord, UndoLog, UndoMismatchError
from save_ros.faults.targets import (
    EmptyTargetError,
    Site,
    Target,
    TargetKind,
    UnknownNameError,
    select_modules,
    select_weights,
    weight_sites,
)

__all__ = [
    "ActivationFaults", "AppliedFaults", "BitErrorRate", "BitFault", "BitPositions",
    "EmptyTargetError", "FaultList", "FaultModel", "FaultOp", "FaultPlan", "FlipRecord",
    "MemoryFaultModel", "NoBitsError", "PEFaultSpec", "PEFaults", "PEMode", "PESite",
    "PlanEntry", "ProcessingElementFault", "RandomFlips", "ReplayMismatchError", "Site",
    "StuckAt", "Target", "TargetKind", "UndoLog", "UndoMismatchError", "UnknownNameError",
    "UnsupportedLayerError", "UntraceableModelError",
    "activation_faults", "activation_sites", "apply_bit_faults", "apply_faults",
    "apply_weight_faults", "bit_range", "check_bit_position", "inject_weights",
    "model_from_dict", "model_to_dict", "replay", "resolve_sites", "sample_activation_faults",
    "sample_pe_faults", "sample_weight_faults", "select_modules", "select_weights",
    "weight_sites",
]
