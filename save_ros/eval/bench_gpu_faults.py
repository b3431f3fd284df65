"""The fault side of `save-ros bench-gpu`: the coverage campaign per model and AccurateLatency.

`campaign` runs a seeded weight-flip coverage campaign (`save_ros.gpu.campaign`) on one model at
batch 1; `accurate_latency` combines its shares with the latencies `save_ros.eval.bench_gpu`
measured into AccurateLatency = Latency x (1 + ErrorRate) per config.
"""

from __future__ import annotations

import argparse

import torch


def campaign(name: str, args: argparse.Namespace) -> dict:
    """Coverage campaign for one model at batch 1."""
    from save_ros.eval.bench_gpu import DTYPES, _model  # here: bench_gpu imports this module
    from save_ros.gpu.campaign import run_campaign
    from save_ros.gpu.runtime import CudaProtectedModel, GpuProtectConfig

    dtype = DTYPES[args.campaign_dtype]
    torch.manual_seed(args.seed)
    model = _model(name).eval().cuda().to(dtype)
    gen = torch.Generator(device="cuda").manual_seed(args.seed + 1)
    shape = (1, 3, 224, 224)
    x = torch.randn(shape, generator=gen, device="cuda", dtype=dtype)
    calib = [torch.randn(shape, generator=gen, device="cuda", dtype=dtype) for _ in range(8)]
    pm = CudaProtectedModel(model, x, GpuProtectConfig(checksum_every=1), calibration=calib)
    res = run_campaign(pm, x, args.trials, seed=args.seed,
                       time_limit_s=args.campaign_time_limit)
    pm.close()
    out = {"model": name, "dtype": args.campaign_dtype, "batch": 1, "seed": args.seed,
           **res.to_dict()}
    del pm, model
    torch.cuda.empty_cache()
    return out


def accurate_latency(result: dict, rate: float) -> None:
    """Fill AccurateLatency = Latency x (1 + ErrorRate) per config from the measured parts.

    Fault model: with probability `rate` per inference one random weight bit flips. Protected:
    latency + rate x repair time, error rate = rate x (measured SDC share of flips + share of
    output-changing flips the range checks miss x (n - 1) / 2, the mean number of inferences
    such a flip waits for its slice of a rotating checksum over n inferences). Unprotected:
    error rate = rate x (measured share of flips that change the output), which is optimistic
    for it (an unrepaired flip stays and corrupts later inferences too).
    """
    camp = {c["model"]: c for c in result["campaigns"]}
    for row in result["configs"]:
        c = camp.get(row["model"])
        if c is None:
            continue
        sdc_share = c["sdc"]["count"] / c["trials"]
        sdc_hi = c["sdc"]["ci95"][1] * c["output_changed"] / c["trials"]
        changed_share = c["output_changed"] / c["trials"]
        # output-changing flips the range checks miss wait for their checksum slice
        unseen = (c["output_changed"]
                  - c["range_only_share_of_output_changing"]["count"]) / c["trials"]
        row["unprotected_accurate_latency_ms"] = row["unprotected_best_ms"] * (
            1 + rate * changed_share)
        for p in row["protected"].values():
            lat = p["latency"]["median_ms"] + rate * p["repair"]["median_ms"]
            exposure = unseen * (p["checksum_every"] - 1) / 2  # wrong outputs before the slice
            p["error_rate"] = rate * (sdc_share + exposure)
            p["accurate_latency_ms"] = lat * (1 + p["error_rate"])
            p["accurate_latency_ms_sdc_ci_high"] = lat * (1 + rate * (sdc_hi + exposure))
            p["ratio_vs_unprotected_best"] = p["accurate_latency_ms"] / row["unprotected_best_ms"]
            p["ratio_sdc_ci_high"] = p["accurate_latency_ms_sdc_ci_high"] / row[
                "unprotected_best_ms"]
            p["sdc_share_from_campaign"] = {"model": c["model"], "dtype": c["dtype"],
                                            "share": sdc_share}
