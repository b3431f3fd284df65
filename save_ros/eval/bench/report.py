"""Tables for `docs/results/runtime.md` from the campaign and bench JSONs, and AccurateLatency."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

RESULTS = Path("docs/results")


def accurate_latency(lat: dict[str, Any], model: str) -> list[dict[str, Any]]:
    """AccurateLatency per method and flip count from the campaign JSONs (if present)."""
    rows = []
    for target in ("weights", "activations"):
        path = RESULTS / f"runtime_campaign_{model}_{target}.json"
        if not path.is_file():
            continue
        data = json.loads(path.read_text())
        rerun = RESULTS / f"runtime_campaign_{model}_{target}_save_rerun.json"
        if rerun.is_file():  # SAVE re-run after a fix: its points replace the first run's
            data["points"] = [p for p in data["points"] if p["method"] != "save"] + \
                json.loads(rerun.read_text())["points"]
        for p in data["points"]:
            key = {"save": "save_verified", "ecc_oracle": "unprotected"}.get(p["method"],
                                                                             p["method"])
            if key not in lat["spread_us"]:
                continue
            err = p["changed"]["rate"]
            # latency: thread CPU time of the best round (what one inference costs on a core
            # of its own; wall time on this shared machine mostly measures the neighbours)
            al = lat["spread_us"][key]["thread_cpu_us"] * (1 + err)
            base = lat["spread_us"]["unprotected"]["thread_cpu_us"]
            un = next((q for q in data["points"] if q["method"] == "unprotected"
                       and q["flips"] == p["flips"]), None)
            al_un = base * (1 + un["changed"]["rate"]) if un else None
            rows.append({"target": target, "flips": p["flips"], "method": p["method"],
                         "error_rate": err, "accurate_latency_us": al,
                         "ratio_to_unprotected": al / al_un if al_un else None})
    return rows


def campaign_tables(model: str, results: Path = RESULTS) -> str:
    """Markdown tables of the runtime campaigns of one model (accuracy / SDC per method)."""
    out = []
    for target in ("weights", "activations"):
        path = results / f"runtime_campaign_{model}_{target}.json"
        if not path.is_file():
            continue
        data = json.loads(path.read_text())
        points = data["points"]
        rerun = results / f"runtime_campaign_{model}_{target}_save_rerun.json"
        if rerun.is_file():  # SAVE re-run after a fix: its points replace the first run's
            points = [p for p in points if p["method"] != "save"]
            points += json.loads(rerun.read_text())["points"]
        methods = [m for m in data["config"]["methods"]]
        # other methods run later with the same settings (e.g. weight scaling): extra columns
        for extra in sorted(results.glob(f"runtime_campaign_{model}_{target}_extra_*.json")):
            more = json.loads(extra.read_text())
            points += more["points"]
            methods += [m for m in more["config"]["methods"] if m not in methods]
        flips = sorted({p["flips"] for p in points})
        cfg = data["config"]
        metric = "success" if cfg.get("episodes") and data["model"]["task"] == "control" \
            else "accuracy"
        out.append(f"**{model}, {target} flips** ({cfg['trials']} trials per point, batch "
                   f"{cfg['batch']}, seed {cfg['seed']}; cell: {metric} % / SDC rate "
                   f"[95% CI] / detected share; {metric} counts every output, detected ones "
                   "included, so a method that detects without repairing shows a low "
                   f"{metric} and no SDC)\n")
        out.append("| flips | " + " | ".join(methods) + " |")
        out.append("|---:|" + "---|" * len(methods))
        for n in flips:
            cells = []
            for m in methods:
                p = next((q for q in points if q["method"] == m and q["flips"] == n), None)
                if p is None:
                    cells.append("")
                    continue
                acc = f"{p['accuracy']['mean'] * 100:.1f}" if p["accuracy"]["n"] else "n/a"
                s = p["sdc"]
                cells.append(f"{acc} / {s['rate']:.4f} [{s['ci95'][0]:.4f}, "
                             f"{s['ci95'][1]:.4f}] / {p['detected']['rate']:.2f}")
            out.append(f"| {n} | " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


def latency_tables(models_: list[str], results: Path = RESULTS) -> str:
    """Markdown: batch-1 latency ratios, where the time goes, AccurateLatency ratios."""
    rows, parts, acc = [], [], []
    keys = ["unprotected", "save_immediate", "save_verified", "range_restriction", "full_dmr"]
    for m in models_:
        path = results / f"runtime_bench_{m}.json"
        if not path.is_file():
            continue
        d = json.loads(path.read_text())
        lat = d["latency"]
        sp = lat["spread_us"]
        cells = [f"{sp[k]['thread_cpu_us']:.0f} us" if k == "unprotected" else
                 f"{lat['cpu_ratio'][k]:.2f}" for k in keys]
        med = lat["median_ratio"]["save_verified"]
        rows.append(f"| {m} | " + " | ".join(cells) + f" | {med:.2f}"
                    f" | {lat['loadavg_before'][0]:.1f} | {lat['fault_free_inferences']} / "
                    f"{lat['false_alarms']} |")
        b = lat["breakdown_us"]
        parts.append(f"| {m} | {b['plain_forward']:.0f} | {b['instrumented_forward']:.0f} | "
                     f"{b['input_range_check']:.1f} | {b['weight_checksum']:.1f} | "
                     f"{b['layer_checks']:.1f} | {b['verify_total']:.1f} | "
                     f"{len(lat.get('checks', {}))} |")
        # recomputed from the bench's latencies and the campaign JSONs as they are now
        by = {(r["target"], r["flips"], r["method"]): r for r in accurate_latency(lat, m)}
        for target in ("weights", "activations"):
            flips = sorted({f for (t, f, _) in by if t == target})
            for f in flips:
                cell = [by.get((target, f, meth)) for meth in
                        ("save", "range_restriction", "full_dmr", "ecc_oracle")]
                if not any(cell):
                    continue
                acc.append(f"| {m} | {target} | {f} | " + " | ".join(
                    f"{c['ratio_to_unprotected']:.2f}" if c else "" for c in cell) + " |")
    out = ["| model | unprotected (thread CPU) | SAVE immediate | SAVE verified | range "
           "restriction | full DMR | SAVE verified, wall median | load avg | fault-free "
           "inferences / false alarms |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|", *rows, "",
           "Where a verified inference's time goes (thread CPU us, each part timed alone):", "",
           "| model | plain forward | instrumented forward | input range | weight checksum | "
           "layer checks | verify total | checked layers |",
           "|---|---:|---:|---:|---:|---:|---:|---:|", *parts, "",
           "AccurateLatency = latency x (1 + error rate), as a ratio to unprotected at the same "
           "flip count (latency: thread CPU, best round, fault-free; error rate: campaign, top-1 "
           "changed):", "",
           "| model | target | flips | SAVE (verified) | range restriction | full DMR | ECC "
           "oracle |", "|---|---|---:|---:|---:|---:|---:|", *acc]
    return "\n".join(out)
