"""The result of SAVE Selection: per-tensor ranges and bit attribution, saved as JSON or YAML.

An `Analysis` holds one `TensorAnalysis` per weight (parameters and float buffers, named as in
`named_parameters()` / `named_buffers()`) and per activation (named by the fx node that produces
it). `bit_shares[bit] = (robust, ranging, vulnerable)`, bit 0 the least significant; the three
shares of a bit sum to 1. For a weight the share is over its elements (golden values); for an
activation over (element, calibration input) pairs: the chance that a flip of that bit during one
inference falls in that class.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from save_ros.errors import UserError

SCHEMA_VERSION = 2
_CORE = Path(__file__).resolve().parent
# the code that decides what an Analysis holds: a change to any of it makes a saved one stale
SELECTION_SOURCES = ("analysis.py", "graph.py", "bits.py", "box.py", "select")


@functools.lru_cache(maxsize=4)
def code_fingerprint(core: Path = _CORE) -> str:
    """16 hex digits of SHA-256 over save_ros's version and the source of the Selection code.

    Part of every analysis key, so an Analysis saved by another checkout, branch or version of
    save_ros whose Selection code differs never loads as if it were this one's. `core` is the
    `save_ros/core` folder to fingerprint (a test passes a modified copy).
    """
    h = hashlib.sha256()
    # save_ros/__init__.py holds __version__: read, not imported (core imports nothing above it)
    try:
        h.update((core.parent / "__init__.py").read_bytes())
    except OSError:
        h.update(b"?")
    for name in SELECTION_SOURCES:
        path = core / name
        files = sorted(path.rglob("*.py")) if path.is_dir() else [path]
        for f in files:
            h.update(f.relative_to(core).as_posix().encode())
            try:
                h.update(f.read_bytes())
            except OSError:  # no source installed: the version alone keys it
                h.update(b"?")
    return h.hexdigest()[:16]


class TensorKind(str, enum.Enum):
    """Where a tensor lives: persistent weights or per-inference activations."""

    WEIGHT = "weight"
    ACTIVATION = "activation"


class RangeSource(str, enum.Enum):
    """Which range a runtime check uses."""

    SOUND = "sound"  # interval propagation from the input box: holds for every valid input
    CALIBRATION = "calibration"  # observed on calibration inputs, widened by the margin


class BitClass(enum.IntEnum):
    """What a single flip of one bit of one element does."""

    ROBUST = 0  # masked: numerically or by the consuming op
    RANGING = 1  # leaves the tensor's known range (or becomes NaN / Inf): a range check sees it
    VULNERABLE = 2  # neither


class AnalysisFormatError(UserError, ValueError):
    """A saved analysis file that cannot be read back."""


@dataclass
class TensorAnalysis:
    """Ranges and bit attribution of one tensor."""

    name: str
    kind: TensorKind
    layer: str  # the layer that reads it (weight) or produces it (activation)
    dtype: str
    shape: list[int]  # without the batch dimension for activations
    numel: int
    sound_low: float
    sound_high: float
    calib_low: float
    calib_high: float
    check: RangeSource
    channel_dim: int | None = None  # dim of the per-channel ranges (batch dim included for acts)
    sound_low_ch: list[float] | None = None
    sound_high_ch: list[float] | None = None
    calib_low_ch: list[float] | None = None
    calib_high_ch: list[float] | None = None
    looseness: float = 1.0  # sound width / calibration width (summed over channels)
    bit_shares: list[tuple[float, float, float]] = field(default_factory=list)
    robust_bits: float = 0.0
    ranging_bits: float = 0.0
    vulnerable_bits: float = 0.0
    nbytes: int = 0
    score: float = 0.0  # vulnerable bits per byte: what Allocation ranks by
    masked_by: str | None = None  # consuming op that masks flips ("relu"), if any
    # False: an op between the input and this tensor has no interval rule, so its "sound" range
    # is only a calibrated one (and `check` is never "sound")
    sound: bool = True
    sampled: int | None = None  # bit shares estimated on this many values (None: all)

    def check_range(self) -> tuple[list[float], list[float]] | tuple[float, float]:
        """The range the runtime checks: per channel lists when known, else scalars."""
        if self.check is RangeSource.SOUND:
            if self.sound_low_ch is not None:
                return self.sound_low_ch, self.sound_high_ch
            return self.sound_low, self.sound_high
        if self.calib_low_ch is not None:
            return self.calib_low_ch, self.calib_high_ch
        return self.calib_low, self.calib_high

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON / YAML."""
        d = asdict(self)
        d["kind"] = self.kind.value
        d["check"] = self.check.value
        d["bit_shares"] = [list(s) for s in self.bit_shares]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TensorAnalysis:
        """Inverse of to_dict."""
        known = {f.name for f in fields(cls)}
        d = {k: v for k, v in d.items() if k in known}
        d["kind"] = TensorKind(d["kind"])
        d["check"] = RangeSource(d["check"])
        d["bit_shares"] = [tuple(s) for s in d.get("bit_shares", [])]
        return cls(**d)


@dataclass
class Totals:
    """Bit counts of a set of tensors (expected counts: share x elements, summed)."""

    robust: float = 0.0
    ranging: float = 0.0
    vulnerable: float = 0.0
    bits: int = 0

    def share(self) -> tuple[float, float, float]:
        """(robust, ranging, vulnerable) as fractions of all bits."""
        if not self.bits:
            return (0.0, 0.0, 0.0)
        return (self.robust / self.bits, self.ranging / self.bits, self.vulnerable / self.bits)


@dataclass
class Analysis:
    """SAVE Selection result for one model, input box and calibration set."""

    key: str
    capture: str  # "fx" or "hooks"
    layers: list[dict[str, Any]]  # Layer records (index, name, op, target, kind, inputs, params)
    tensors: dict[str, TensorAnalysis]
    unsupported: list[str] = field(default_factory=list)  # "node: op" that fell back to calib
    input_range: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)  # margin, thresholds, seeds, sizes
    timings: dict[str, float] = field(default_factory=dict)  # seconds per phase
    task: str = "classification"  # what a robust flip may not change: top-1, or outputs
    schema: int = SCHEMA_VERSION
    code: str = field(default_factory=code_fingerprint)  # the Selection code that made it
    # In-memory only (not saved): the per-tensor flip rules and the captured graph, for
    # validation and the runtime in the process that ran the analysis.
    rules: dict[str, Any] | None = field(default=None, repr=False, compare=False)
    graph: Any = field(default=None, repr=False, compare=False)

    def weights(self) -> list[TensorAnalysis]:
        """Weight tensors in order."""
        return [t for t in self.tensors.values() if t.kind is TensorKind.WEIGHT]

    def activations(self) -> list[TensorAnalysis]:
        """Activation tensors in order."""
        return [t for t in self.tensors.values() if t.kind is TensorKind.ACTIVATION]

    def totals(self, kind: TensorKind | None = None) -> Totals:
        """Summed robust / ranging / vulnerable bits over tensors of `kind` (all if None)."""
        tot = Totals()
        for t in self.tensors.values():
            if kind is not None and t.kind is not kind:
                continue
            tot.robust += t.robust_bits
            tot.ranging += t.ranging_bits
            tot.vulnerable += t.vulnerable_bits
            tot.bits += t.numel * len(t.bit_shares)
        return tot

    @property
    def unsound(self) -> list[str]:
        """Activations whose range rests on an op without an interval rule (calibrated)."""
        return [t.name for t in self.tensors.values() if not t.sound]

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON / YAML."""
        return {
            "schema": self.schema,
            "key": self.key,
            "capture": self.capture,
            "layers": self.layers,
            "unsupported": self.unsupported,
            "input_range": self.input_range,
            "settings": self.settings,
            "timings": self.timings,
            "task": self.task,
            "code": self.code,
            "tensors": [t.to_dict() for t in self.tensors.values()],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Analysis:
        """Inverse of to_dict."""
        if d.get("schema") != SCHEMA_VERSION:
            raise AnalysisFormatError(
                f"analysis schema {d.get('schema')!r} is not {SCHEMA_VERSION}; re-run the analysis"
            )
        tensors = [TensorAnalysis.from_dict(t) for t in d["tensors"]]
        return cls(
            key=d["key"],
            capture=d["capture"],
            layers=d["layers"],
            tensors={t.name: t for t in tensors},
            unsupported=d.get("unsupported", []),
            input_range=d.get("input_range", {}),
            settings=d.get("settings", {}),
            timings=d.get("timings", {}),
            task=d.get("task", "classification"),
            schema=d["schema"],
            code=d.get("code", ""),  # "" : saved before the code was recorded
        )

    def save(self, path: str | Path) -> Path:
        """Write JSON (.json) or YAML (.yaml / .yml)."""
        path = Path(path)
        data = self.to_dict()
        if path.suffix in (".yaml", ".yml"):
            import yaml

            text = yaml.safe_dump(data, sort_keys=False)
        elif path.suffix == ".json":
            text = json.dumps(data, indent=1)
        else:
            raise AnalysisFormatError(f"{path}: use a .json, .yaml or .yml file name")
        path.parent.mkdir(parents=True, exist_ok=True)
        # write beside it, then rename: two processes sharing a cache never read half a file
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | Path, expect_key: str | None = None) -> Analysis:
        """Read an analysis; with `expect_key`, raise AnalysisFormatError if it is stale."""
        path = Path(path)
        text = path.read_text()
        try:
            if path.suffix in (".yaml", ".yml"):
                import yaml

                data = yaml.safe_load(text)
            else:
                data = json.loads(text)
        except Exception as exc:
            raise AnalysisFormatError(f"{path}: not a readable analysis ({exc})") from exc
        analysis = cls.from_dict(data)
        if expect_key is not None and analysis.key != expect_key:
            if analysis.code != code_fingerprint():
                raise AnalysisFormatError(
                    f"{path} was written by other save_ros Selection code (code "
                    f"{analysis.code or 'not recorded'}, this one {code_fingerprint()}: another "
                    "checkout, branch or version); Selection runs again")
            raise AnalysisFormatError(
                f"{path} was made for another model or input box (key {analysis.key[:12]}, "
                f"expected {expect_key[:12]}); re-run the analysis"
            )
        return analysis


def analysis_key(
    model: nn.Module, architecture: str, input_range: Any, settings: dict[str, Any] | None = None,
    code: str | None = None,
) -> str:
    """SHA-256 of the parameters and buffers (names, shapes, bytes), architecture, box, settings
    and the Selection code (`code_fingerprint()` unless given)."""
    h = hashlib.sha256()
    h.update((code if code is not None else code_fingerprint()).encode())
    h.update(architecture.encode())
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        h.update(f"{name}|{tuple(t.shape)}|{t.dtype}".encode())
        h.update(t.detach().contiguous().cpu().view(-1).view(torch.uint8).numpy().tobytes())
    h.update(json.dumps(input_range, sort_keys=True, default=str).encode())
    h.update(json.dumps(settings or {}, sort_keys=True, default=str).encode())
    return h.hexdigest()
