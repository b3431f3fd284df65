"""Coverage of SAVE through `protect()` at robot scale: weight flips, activation flips, clean runs.

Each trial runs one inference of the protected model (the same object users get from
`save_ros.protect()`; on CUDA its graph backend, built with `fault_sites=True` so activation
flips happen inside the replayed graph) on one of a fixed set of inputs whose fault-free outputs
were recorded first, and classifies the outcome:

- `raw_changed`: the output before any repair has another top-1 (classification) or an output
  outside its tolerance (regression) than the fault-free run: what an unprotected model returns
  under the same fault;
- `detected`: a check fired (a detection in the status);
- `sdc`: the result is marked verified but its answer differs from the fault-free one - the
  silent data corruption SAVE promises never to produce;
- `not_exact`: verified, same answer, but not bit-equal (a flip Selection classes robust);
- `unverified`: the status says unverified (a loud failure, not an SDC).

Weight trials flip one bit of one element of a normal-memory weight (the reliable pool is
never hit); activation trials one bit of one element of a normal-memory activation. Bits are
drawn uniformly over all bits (`uniform`) or over the sign and exponent bits (`high`, the flips
that matter). Clean trials count false alarms on varied inputs.

Each function runs one chunk of a section: `n` trials from trial `start` on, drawn from one
generator seeded with `seed`; trial t of the section runs on input t mod len(inputs) (clean
trials also mirror it on every other pass). `save_ros.eval.bench.scale_shard` cuts sections into
chunks with seeds of their own, so a chunk is a function of its key wherever it runs.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field

import torch

from save_ros.core import bits


@dataclass
class Outcome:
    """Counts of one section of trials."""

    trials: int = 0
    raw_changed: int = 0
    detected: int = 0
    sdc: int = 0
    sdc_uncovered: int = 0  # of those, on inputs closer to a decision than the robust claim covers
    not_exact: int = 0
    unverified: int = 0
    notes: int = 0  # benign range alarms (input-driven), clean runs
    seconds: float = 0.0
    examples: list[dict] = field(default_factory=list)  # the first few SDCs, for the record

    latencies_ms: list[float] = field(default_factory=list)  # detection latency, per detection
    draws: list = field(default_factory=list)  # what each trial drew (site and bit, or noise gain)

    COUNTS = ("trials", "raw_changed", "detected", "sdc", "sdc_uncovered", "not_exact",
              "unverified", "notes")

    def to_dict(self) -> dict:
        """Plain data with the 95 % upper bound of the SDC rate (latencies left out)."""
        d = asdict(self)
        d.pop("latencies_ms")
        d.pop("draws")
        d["sdc_upper95"] = upper95(self.sdc, self.trials)
        return d

    @classmethod
    def total(cls, parts: Iterable[Outcome]) -> Outcome:
        """The counts of several chunks together (the first 5 SDC examples, in chunk order)."""
        o = cls()
        for p in parts:
            for k in cls.COUNTS:
                setattr(o, k, getattr(o, k) + getattr(p, k))
            o.seconds += p.seconds
            o.examples.extend(p.examples[: 5 - len(o.examples)])
            o.latencies_ms.extend(p.latencies_ms)
            o.draws.extend(p.draws)
        return o


def upper95(k: int, n: int) -> float | None:
    """One-sided 95 % upper bound of a rate with k events in n trials (exact for k = 0)."""
    if n == 0:
        return None
    if k == 0:
        return 1.0 - 0.05 ** (1.0 / n)
    p = k / n  # Wilson score bound otherwise
    z = 1.645
    return min(1.0, (p + z * z / (2 * n) + z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)))
               / (1 + z * z / n))


class Answer:
    """The task's notion of 'the same answer': top-1, or every output within tolerance."""

    def __init__(self, task: str, tolerance: list[float] | None,
                 min_gap: float | None = None) -> None:
        self.task = task
        self.tol = None if tolerance is None else torch.tensor(tolerance)
        self.min_gap = min_gap or 0.0

    def covered(self, ref: torch.Tensor) -> bool:
        """The robust claim speaks for this input: its top-1 gap >= the analysed minimum."""
        if self.task != "classification":
            return True
        top2 = ref.float().topk(2, dim=1).values
        return bool((top2[:, 0] - top2[:, 1] >= self.min_gap).all())

    def same(self, out: torch.Tensor, ref: torch.Tensor) -> bool:
        """True when `out` gives the answer `ref` gives."""
        out, ref = out.float(), ref.float()
        if self.task == "classification":
            return torch.equal(out.argmax(1), ref.argmax(1))
        d = torch.nan_to_num((out - ref).abs().reshape(len(out), -1), nan=float("inf"))
        return bool((d <= self.tol.to(d.device)).all())


def _pick_bit(gen: torch.Generator, width: int, mode: str) -> int:
    lo = width - 9 if mode == "high" and width == 32 else (width - 6 if mode == "high" else 0)
    return int(torch.randint(lo, width, (1,), generator=gen))


def _score(o: Outcome, st, raw, out, ref, answer: Answer, site: dict | None = None) -> None:
    """Fold one trial into the counts (`site`: where the flip was, kept with an SDC)."""
    o.trials += 1
    o.raw_changed += not answer.same(raw, ref)
    o.detected += bool(st.detections)
    o.unverified += not st.verified
    o.notes += bool(st.notes)
    if st.detection_latency_s is not None:
        o.latencies_ms.append(st.detection_latency_s * 1e3)
    if st.verified:
        if not answer.same(out, ref):
            o.sdc += 1
            o.sdc_uncovered += not answer.covered(ref)
            if len(o.examples) < 5:
                o.examples.append({"site": site or {},
                                   "detections": [d.to_dict() for d in st.detections],
                                   "notes": st.notes[:2]})
        elif not torch.equal(out, ref):
            o.not_exact += 1


def reference_outputs(pm, inputs: torch.Tensor) -> list[torch.Tensor]:
    """Fault-free outputs of the protected model, one per input (each verified, else error)."""
    refs = []
    for i in range(len(inputs)):
        r = pm.infer(inputs[i : i + 1])
        if not r.verified or r.status.detections:
            raise RuntimeError(f"reference input {i} is not verified clean: {r.status}")
        refs.append(r.output.clone())
    return refs


def weight_trials(pm, inputs, refs, answer: Answer, n: int, seed: int, mode: str,
                  start: int = 0) -> Outcome:
    """Trials start..start+n-1 of one weight bit flip each."""
    gen = torch.Generator().manual_seed(seed)
    tensors = pm.normal_tensors()
    names = sorted(tensors)
    sizes = torch.tensor([float(tensors[k].numel()) for k in names])
    o, t0 = Outcome(), time.perf_counter()
    while o.trials < n:
        name = names[int(torch.multinomial(sizes, 1, generator=gen))]
        w = tensors[name]
        idx = int(torch.randint(w.numel(), (1,), generator=gen))
        bit = _pick_bit(gen, bits.layout_of(w.dtype).width, mode)
        j = (start + o.trials) % len(inputs)
        bits.flip_(w, idx, bit)
        site = {"tensor": name, "index": idx, "bit": bit, "input": j}  # no device sync here
        o.draws.append(site)
        r = pm.infer(inputs[j : j + 1])
        if not r.status.repaired:  # undetected: put the bit back before the next trial
            bits.flip_(w, idx, bit)
        _score(o, r.status, pm.last_raw_output, r.output, refs[j], answer, site)
    o.seconds = time.perf_counter() - t0
    return o


def activation_trials(pm, inputs, refs, answer: Answer, n: int, seed: int, mode: str,
                      start: int = 0) -> Outcome:
    """Trials start..start+n-1 of one transient activation bit flip each, inside the protected
    program."""
    gen = torch.Generator().manual_seed(seed)
    sites = pm.activation_sites()
    names = list(sites)
    sizes = torch.tensor([float(sites[k]) for k in names])
    width = bits.layout_of(pm._example[0].dtype).width
    o, t0 = Outcome(), time.perf_counter()
    while o.trials < n:
        name = names[int(torch.multinomial(sizes, 1, generator=gen))]
        idx = int(torch.randint(sites[name], (1,), generator=gen))
        j = (start + o.trials) % len(inputs)
        bit = _pick_bit(gen, width, mode)
        pm.arm_activation_fault(name, idx, bit)
        r = pm.infer(inputs[j : j + 1])
        site = {"node": name, "index": idx, "bit": bit, "input": j}
        o.draws.append(site)
        _score(o, r.status, pm.last_raw_output, r.output, refs[j], answer, site)
    o.seconds = time.perf_counter() - t0
    return o


def clean_trials(pm, inputs: torch.Tensor, n: int, seed: int, start: int = 0) -> Outcome:
    """Fault-free inferences start..start+n-1 on varied inputs (mirrored, brightness, noise):
    false alarms."""
    gen = torch.Generator(device=inputs.device).manual_seed(seed)
    o, t0 = Outcome(), time.perf_counter()
    while o.trials < n:
        t = start + o.trials
        x = inputs[t % len(inputs)][None].float()
        if t // len(inputs) % 2:
            x = x.flip(-1)
        gain = 0.8 + 0.4 * torch.rand((), generator=gen, device=x.device)
        x = (x * gain + 0.01 * torch.randn(x.shape, generator=gen, device=x.device))
        r = pm.infer(x.clamp(0.0, 1.0).to(inputs.dtype))
        o.draws.append(float(gain))
        o.trials += 1
        o.detected += bool(r.status.detections)  # a false alarm: no fault was injected
        o.unverified += not r.verified
        o.notes += bool(r.status.notes)
    o.seconds = time.perf_counter() - t0
    return o
