"""Measurements of SAVE under faults for `save-ros bench cpu`: latency when every inference is
faulty, detection latency, and the reliable-memory budget sweep with its plot."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from save_ros.core.allocate import DEFAULT_BUDGET_FRACTION
from save_ros.eval.timing import interleaved


def protected_model(name: str, fraction: float | None, analysis=None, chain_dmr: bool = False):
    """A freshly loaded model protected at a budget fraction (sharing `analysis` if given)."""
    from save_ros import models
    from save_ros.core.protect import ProtectConfig, protect

    spec = models.get_spec(name)
    xc, _ = models.dataset(name, "calib")
    cfg = ProtectConfig(calibration=xc, analysis=analysis,
                        reliable_budget_fraction=DEFAULT_BUDGET_FRACTION if fraction is None
                        else fraction, chain_dmr=chain_dmr)
    return protect(models.load(name), xc[:1], spec.input_range(), cfg)


def faulty_latency(pm, plain, xs: list[torch.Tensor], rounds: int) -> dict[str, Any]:
    """Verified latency when *every* inference meets a fault (the upper bound under faults).

    `activation`: one exponent-bit flip (bit 30) in a normal-memory layer output per inference,
    through the fault injector's hooks (the unprotected model runs under the same hooks, so the
    injector's own cost cancels); `weight`: one exponent-bit flip in a normal-memory weight before
    each inference, which SAVE detects, restores and re-runs from (compared with unprotected plus
    the same `flip_` call on a scratch tensor).
    """
    from save_ros.core import bits
    from save_ros.faults import (
        ActivationFaults,
        BitFault,
        EmptyTargetError,
        Target,
        TargetKind,
        activation_sites,
    )

    excl = frozenset(pm.reliable_activation_sites())
    try:
        sites = activation_sites(pm.model, xs[0], Target(TargetKind.ACTIVATIONS, exclude=excl))
    except EmptyTargetError:
        sites = []
    normal = pm.normal_tensors()
    wname = max(normal, key=lambda n: normal[n].numel()) if normal else None
    fns: dict[str, Callable[[], None]] = {}
    detected = {"activation": 0, "weight": 0, "n_act": 0, "n_w": 0}
    if sites:
        site = sites[len(sites) // 2]

        def unprot_act() -> None:
            with torch.inference_mode():
                for x in xs:
                    with ActivationFaults(plain, [BitFault(site.name, 0, 30)]):
                        plain(x)

        def save_act() -> None:
            for x in xs:
                with ActivationFaults(pm.model, [BitFault(site.name, 0, 30)]):
                    st = pm.infer(x).status
                detected["activation"] += st.faulty
                detected["n_act"] += 1

        fns |= {"unprotected_act_hooks": unprot_act, "save_verified_act_fault": save_act}
    if wname is not None:
        w = normal[wname]

        def save_weight() -> None:
            for i, x in enumerate(xs):
                bits.flip_(w, i % w.numel(), 30)
                st = pm.infer(x).status
                detected["weight"] += st.faulty
                detected["n_w"] += 1

        scratch = torch.zeros_like(w)

        def unprot_flip() -> None:  # the injector's own cost, on a tensor nobody reads
            with torch.inference_mode():
                for i, x in enumerate(xs):
                    bits.flip_(scratch, i % scratch.numel(), 30)
                    plain(x)

        fns["unprotected_flip_call"] = unprot_flip
        fns["save_verified_weight_fault"] = save_weight
    if not fns:
        return {}

    def unprot() -> None:
        with torch.inference_mode():
            for x in xs:
                plain(x)

    sp = {k: r.spread_us() for k, r in
          interleaved({"unprotected": unprot, **fns}, rounds, len(xs)).items()}
    out: dict[str, Any] = {k: v["thread_cpu_us"] for k, v in sp.items()}
    if "save_verified_act_fault" in sp:
        out["ratio_act"] = sp["save_verified_act_fault"]["thread_cpu_us"] / \
            sp["unprotected_act_hooks"]["thread_cpu_us"]
        out["act_site"] = site.name
    if "save_verified_weight_fault" in sp:
        out["ratio_weight"] = sp["save_verified_weight_fault"]["thread_cpu_us"] / \
            sp["unprotected_flip_call"]["thread_cpu_us"]
        out["weight_tensor"] = wname
    out["detected"] = detected
    pm.recover()
    return out


def detection_latency(name: str, n: int = 200) -> dict[str, Any]:
    """Inference start -> verdict (ms) under one exponent flip per inference, per verifier mode.

    Activation flips go through the injector's hooks into a normal-memory layer output; weight
    flips into a normal-memory weight before the inference. The verdict comes after repair.
    """
    from save_ros import models
    from save_ros.core import bits
    from save_ros.core.protect import ProtectConfig, protect
    from save_ros.faults import ActivationFaults, BitFault, Target, TargetKind, activation_sites

    spec = models.get_spec(name)
    xc, _ = models.dataset(name, "calib")
    xt, _ = models.dataset(name, "test")
    out: dict[str, Any] = {}
    for mode in ("thread", "external"):
        pm = protect(models.load(name), xc[:1], spec.input_range(),
                     ProtectConfig(calibration=xc, verifier=mode))
        excl = frozenset(pm.reliable_activation_sites())
        sites = activation_sites(pm.model, xt[:1], Target(TargetKind.ACTIVATIONS, exclude=excl))
        normal = pm.normal_tensors()
        w = normal[max(normal, key=lambda k: normal[k].numel())]
        lat: dict[str, list[float]] = {"activation_wait_true": [], "weight_wait_true": []}
        if mode == "thread":
            lat["activation_wait_false"] = []
        for i in range(n):
            x = xt[i % len(xt) : i % len(xt) + 1]
            fault = [BitFault(sites[i % len(sites)].name, 0, 30)]
            with ActivationFaults(pm.model, fault):
                lat["activation_wait_true"].append(pm.infer(x).status.detection_latency_s)
            if mode == "thread":
                with ActivationFaults(pm.model, fault):
                    r = pm.infer(x, wait=False)
                lat["activation_wait_false"].append(r.verdict.result().detection_latency_s)
            bits.flip_(w, i % w.numel(), 30)
            lat["weight_wait_true"].append(pm.infer(x).status.detection_latency_s)
        out[mode] = {k: {"n": len(v), "detected": sum(e is not None for e in v),
                         "median_ms": 1e3 * statistics.median(e for e in v if e is not None),
                         "max_ms": 1e3 * max(e for e in v if e is not None)}
                     for k, v in lat.items()}
        pm.close()
    return out


def sweep(name: str, fractions: list[float], trials: int, flips: int,
          n: int, rounds: int) -> list[dict[str, Any]]:
    """Per budget: latency ratio and accuracy under activation / weight flips."""
    from save_ros import models
    from save_ros.core.select import analyze
    from save_ros.faults import (
        ActivationFaults,
        EmptyTargetError,
        RandomFlips,
        Target,
        TargetKind,
        activation_sites,
        inject_weights,
    )

    spec = models.get_spec(name)
    xc, _ = models.dataset(name, "calib")
    xt, yt = models.dataset(name, "test")
    analysis = analyze(models.load(name), xc[:1], spec.input_range(), xc)
    plain = models.load(name)
    xb, yb = xt[::2][:256], yt[::2][:256]
    xs = [xt[i : i + 1] for i in range(min(n, len(xt)))]
    rows = []
    for frac in fractions:
        pm = protected_model(name, frac, analysis)

        def unprotected() -> None:
            with torch.inference_mode():
                for x in xs:
                    plain(x)

        def immediate(pm=pm) -> None:
            rs = [pm.infer(x, wait=False) for x in xs]
            rs[-1].verdict.result()

        def verified(pm=pm) -> None:
            for x in xs:
                pm.infer(x, wait=True)

        per = interleaved({"u": unprotected, "i": immediate, "v": verified}, rounds, len(xs))
        lat = {k: r.spread_us()["thread_cpu_us"] for k, r in per.items()}  # module docstring
        excl = frozenset(pm.reliable_activation_sites())
        try:
            sites = activation_sites(pm.model, xb, Target(TargetKind.ACTIVATIONS, exclude=excl))
        except EmptyTargetError:  # every layer output is in the reliable pool
            sites = []
        acc_a, acc_w = [], []
        for t in range(trials):
            gen = torch.Generator().manual_seed(10_000 + t)
            faults = RandomFlips(flips).sample(sites, gen) if sites else []
            with ActivationFaults(pm.model, faults):
                out = pm.infer(xb).output
            acc_a.append(float((out.argmax(1) == yb).float().mean()))
            log = inject_weights(pm.model, RandomFlips(4096), Target(), seed=20_000 + t,
                                 tensors=pm.normal_tensors())
            out = pm.infer(xb).output
            log.undo(pm.normal_tensors())
            pm.recover()
            acc_w.append(float((out.argmax(1) == yb).float().mean()))
        rows.append({"budget_fraction": frac, "budget_bytes": pm.placement.reliable_budget_bytes,
                     "used_bytes": pm.placement.used_bytes,
                     "reliable": pm.placement.reliable,
                     "checks": pm._plan.by_kind(),
                     "ratio_immediate": lat["i"] / lat["u"], "ratio_verified": lat["v"] / lat["u"],
                     "accuracy_activation_flips": statistics.mean(acc_a),
                     "accuracy_weight_flips_4096": statistics.mean(acc_w),
                     "activation_flips": flips, "trials": trials})
        pm.close()
    return rows


def plot(rows: list[dict[str, Any]], name: str, path: Path) -> None:
    """Accuracy and overhead against the reliable-memory budget (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    f = [r["budget_fraction"] * 100 for r in rows]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.5))
    a1.plot(f, [r["accuracy_activation_flips"] * 100 for r in rows], "o-",
            label=f"{rows[0]['activation_flips']} activation flips")
    a1.plot(f, [r["accuracy_weight_flips_4096"] * 100 for r in rows], "s-",
            label="4096 weight flips")
    a1.set_xlabel("reliable pool (% of weight bytes)")
    a1.set_ylabel("accuracy (%)")
    a1.legend()
    a2.plot(f, [r["ratio_immediate"] for r in rows], "o-", label="immediate (wait=False)")
    a2.plot(f, [r["ratio_verified"] for r in rows], "s-", label="verified (wait=True)")
    a2.axhline(1.25, color="grey", ls="--", lw=1)
    a2.set_xlabel("reliable pool (% of weight bytes)")
    a2.set_ylabel("latency / unprotected (batch 1)")
    a2.legend()
    fig.suptitle(f"SAVE on {name}: accuracy and overhead vs reliable-memory budget")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
