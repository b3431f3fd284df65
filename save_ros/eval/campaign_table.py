"""A campaign result as a person reads it: what was evaluated, the clean figures, one row per
(method, flips) with every column explained under the table.

Accuracy counts every output a method returned, the ones it flagged included: a method that
detects without repairing (full DMR under weight flips: both runs read the same corrupted weights,
and only a NaN output compares unequal to itself) returns wrong outputs that are flagged, so its
accuracy falls while its SDC rate stays 0. The `changed` and `flagged` columns show that, and a
note under the table names such rows.
"""

from __future__ import annotations

from save_ros.eval.table import render


def describe_data(data: object) -> str:
    """The evaluation data record in words (`test split, 256 of 540 samples, every 2nd`)."""
    if not isinstance(data, dict):
        return str(data)
    d = dict(data)
    parts = []
    if "split" in d:
        parts.append(f"{d.pop('split')} split")
    if "n" in d:
        of = d.pop("of", None)
        stride = d.pop("stride", None)
        parts.append(f"{d.pop('n')} samples" + (f" of {of}" if of is not None else "")
                     + (f", every {_ordinal(stride)}" if stride not in (None, 1) else ""))
    episodes = d.pop("episodes_per_trial", None)
    if episodes:
        parts.append(f"{episodes} episodes per trial")
    parts += [f"{k.replace('_', ' ')} {v}" for k, v in d.items()]
    return ", ".join(parts)


def _ordinal(n: object) -> str:
    if not isinstance(n, int):
        return str(n)
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def clean_lines(result: dict) -> list[str]:
    """The fault-free figures: one line when every method agrees, else one per method."""
    methods: dict[str, dict] = result["methods"]
    out = []
    for key, label in (("clean_accuracy", "accuracy"), ("clean_success", "success rate")):
        values = {m: v[key] for m, v in methods.items() if key in v}
        if not values:
            continue
        if len(set(values.values())) == 1:
            out.append(f"without faults: {label} {next(iter(values.values())):.4f} "
                       f"({'every method' if len(values) > 1 else next(iter(values))})")
        else:
            out.append(f"without faults: {label} " + ", ".join(f"{m} {v:.4f}"
                                                                for m, v in values.items()))
    alarms = {m: v.get("clean_detected", 0) for m, v in methods.items()}
    flagged = {m: n for m, n in alarms.items() if n}
    out.append("false alarms (fault-free samples flagged): " + (
        ", ".join(f"{m} {n}" for m, n in flagged.items()) if flagged else "none"))
    return out


def header_lines(result: dict) -> list[str]:
    """What was evaluated, and the clean figures."""
    return [f"{result['model']['name']}: {describe_data(result['model']['eval_data'])}",
            *clean_lines(result)]


def format_table(result: dict) -> str:
    """A readable table of a campaign result: one row per (method, flips), then a legend."""
    task = result["model"]["task"]
    acc = {"control": "success", "regression": "within tol"}.get(task, "accuracy")
    rows, unrepaired = [], []
    for p in result["points"]:
        a, s = p["accuracy"], p["sdc"]
        count = f"{p['flips']}" if p.get("ber") is None else f"ber {p['ber']:.0e}"
        changed = p.get("changed", {}).get("rate", float("nan"))
        rows.append([p["method"], p["target"], count,
                     f"{a['mean']:.3f} ± {a['std']:.3f}" if a["n"] else "n/a",
                     f"{a['min']:.2f}..{a['max']:.2f}" if a["n"] else "",
                     f"{changed:.4f}", f"{s['rate']:.4f} [{s['ci95'][0]:.4f}, {s['ci95'][1]:.4f}]",
                     f"{p['detected']['rate']:.4f}", f"{p['nonfinite']['rate']:.4f}",
                     f"{p['latency_ms']['mean']:.2f}"])
        caught = changed - s["rate"]  # changed samples the method flagged
        if changed > 0 and caught > 0.5 * changed and a["n"] and a["mean"] < 0.5:
            nan = p["nonfinite"]["rate"] == p["detected"]["rate"]
            unrepaired.append(f"{p['method']} at {count} flips" + (
                " (as many flagged as NaN/Inf outputs: its check caught non-finite outputs, "
                "the only ones that differ between its runs)" if nan else ""))
    notes = [
        f"{acc}: over every output the method returned, flagged ones included; "
        "changed: share of samples whose top-1 (or output, beyond tolerance) differs from the "
        "fault-free run; SDC: changed and not flagged (silent); flagged: share of samples the "
        "method reported as faulty; NaN/Inf: share of non-finite outputs; ms/batch: mean "
        "latency of one faulty batch",
    ]
    if unrepaired:
        notes.append("detected but not repaired (low " + acc + ", no SDC: the wrong outputs "
                     "were flagged, none silent): " + "; ".join(unrepaired))
    return render(["method", "target", "flips", f"{acc} mean ± std", "min..max", "changed",
                   "SDC rate [95% CI]", "flagged", "NaN/Inf", "ms/batch"], rows,
                  align="llrllrlrrr", notes=notes)
