"""`save-ros robustness training`: faults during a short fine-tune, and what rollback changes.

For each fault configuration (target x fault model) it runs N seeded faulty fine-tunes of a
bundled classifier and sorts each into no effect / crash / silent degradation against the
fault-free fine-tune with the same training seed (see `save_ros.faults.training`). With
`--rollback` every configuration also runs with rollback to the last in-memory checkpoint on a
NaN/Inf loss (and, with `--spike-factor`, on a loss spike), on the same faults. A run that had
no NaN/Inf loss (nor spike) is identical with rollback (checkpoints only copy state), so only
the runs that had one are repeated.

Trials run where `--workers` / `--ray` say and are kept in `--store` (resumable with
`--resume`), like `save-ros robustness campaign`'s (`save_ros.eval.shard`, `eval.training_trial`).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

from save_ros.argtypes import int_list
from save_ros.eval import shard, shard_cli
from save_ros.eval.record import run_record, write_json
from save_ros.eval.store import StoreError, TrialStore
from save_ros.eval.training_trial import TrainJob, TrainSpec, build_faults, fault_seed
from save_ros.eval.trial import CampaignError
from save_ros.faults import ProcessingElementFault, RandomFlips, StuckAt
from save_ros.faults.training import Outcome, TrainingFault, TrainingFaultError
from save_ros.models import ModelError

__all__ = ["build_faults", "fault_seed", "run_campaign"]


def label(fault: TrainingFault) -> str:
    """A short name for a table row."""
    m = fault.model
    if isinstance(m, RandomFlips):
        what = f"{m.n} flip{'s' if m.n != 1 else ''}"
    elif isinstance(m, StuckAt):
        what = f"stuck-at-{m.value} bit {m.bit}"
    elif isinstance(m, ProcessingElementFault):
        what = f"PE {m.mode.value} bit {m.bit}"
    else:
        what = type(m).__name__
    return f"{fault.target.value}: {what}"


def shares(outcomes: list[str]) -> dict[str, float]:
    """Share of each outcome."""
    n = max(len(outcomes), 1)
    return {o.value: outcomes.count(o.value) / n for o in Outcome}


def stuck_bit(text: str) -> int:
    """argparse type: a bit of an fp32 word (0..31), or -1 for no stuck-at fault."""
    try:
        value = int(text)
    except ValueError:
        value = -2
    if not -1 <= value <= 31:  # found only at injection time, after the configs before it ran
        raise argparse.ArgumentTypeError(f"expected a bit 0..31 of the fp32 weights or -1 "
                                         f"(none), got {text!r}")
    return value


def spike_factor(text: str) -> float:
    """argparse type: a loss-spike factor > 1 (at <= 1 every ordinary loss counts as a spike)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 1 < value < math.inf:
        raise argparse.ArgumentTypeError(f"expected a factor > 1 like 10, got {text!r}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `save-ros robustness training`."""
    parser.add_argument("--model", default="digits_cnn", help="bundled classifier to fine-tune")
    parser.add_argument("--targets", default="weights,activations,gradients,pe",
                        help="comma-separated: weights, activations, gradients, pe")
    parser.add_argument("--flips", type=int_list, default=(1, 16, 256),
                        help="transient flip counts (one step each), comma-separated")
    parser.add_argument("--stuck-bit", type=stuck_bit, default=30,
                        help="also a stuck-at-1 cell at this bit per target (-1: none)")
    parser.add_argument("--pe-bits", type=int_list, default=(22, 27),
                        help="bits a faulty PE flips in every product, comma-separated")
    parser.add_argument("--trials", type=int, default=20, help="faulty fine-tunes per config")
    parser.add_argument("--epochs", type=int, default=3, help="fine-tune epochs")
    parser.add_argument("--batch", type=int, default=64, help="mini-batch size")
    parser.add_argument("--lr", type=float, default=0.01, help="SGD learning rate (momentum 0.9)")
    parser.add_argument("--seed", type=int, default=0, help="training and campaign seed")
    parser.add_argument("--threshold", type=float, default=0.02,
                        help="accuracy drop that counts as silent degradation (default 0.02)")
    parser.add_argument("--rollback", action="store_true",
                        help="also run with rollback to the last checkpoint on NaN/Inf loss")
    parser.add_argument("--spike-factor", type=spike_factor, default=None,
                        help="with --rollback, also roll back a loss above this many times the "
                             "largest of the last 16 (default: off, NaN/Inf only)")
    parser.add_argument("--checkpoint-every", type=int, default=8, help="steps per checkpoint")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--json", type=Path, default=None, help="write every trial here")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    shard_cli.add_arguments(parser, device=False)


def run_campaign(args: argparse.Namespace, command: list[str] | None = None) -> dict:
    """Run the campaign where the options say (`save_ros.eval.shard`); the JSON-ready result."""
    spec = TrainSpec.from_args(args)
    faults = spec.faults()
    execute = shard_cli.executor(args, "cpu")
    store = TrialStore(args.store or ":memory:", {"format": 1, "kind": "train-campaign",
                                                   "spec": asdict(spec)}, resume=args.resume)
    started = time.time()
    try:
        job = TrainJob(spec, max(1, args.threads), store.key)
        meta, records, execution = shard.drive(job, spec.keys(), execute, store,
                                               progress=not args.quiet)
    finally:
        store.close()
    by_config: dict[int, list[dict]] = {}
    for r in records:
        by_config.setdefault(r["point"], []).append(r)
    rows = []
    for c, fault in enumerate(faults):
        runs = sorted(by_config.get(c, []), key=lambda r: r["trial"])
        plain = [r["plain"] for r in runs]
        row = {"label": label(fault), "fault": fault.to_dict(), "trials": len(runs),
               "shares": shares([r["outcome"] for r in plain]), "runs": plain}
        if args.rollback:
            rolled = [r["rollback"] for r in runs]
            row["shares_rollback"] = shares([r["outcome"] for r in rolled])
            row["rollbacks_mean"] = sum(r["rollbacks"] for r in rolled) / max(1, len(rolled))
            row["runs_rollback"] = rolled
        rows.append(row)
    return {
        **run_record("save_ros.train_campaign", started, command),
        "version": 1, "wall_s": time.time() - started,
        "model": args.model, **meta, "threshold": args.threshold,
        "seed_rule": "training seed = --seed; fault seed = (seed * 1000003 + config) * 10007 + "
                     "trial",
        "rows": rows, "execution": execution,
    }


def format_row(row: dict) -> str:
    """One table row: outcome shares without (and with) rollback."""
    s = row["shares"]
    line = (f"{row['label']:<30}{row['trials']:>6}  {s['no_effect']:>9.2f}{s['crash']:>7.2f}"
            f"{s['degraded']:>9.2f}")
    if "shares_rollback" in row:
        r = row["shares_rollback"]
        line += (f"   | {r['no_effect']:>9.2f}{r['crash']:>7.2f}{r['degraded']:>9.2f}"
                 f"{row['rollbacks_mean']:>11.2f}")
    return line


def format_table(result: dict) -> str:
    """The whole table with a header."""
    head = f"{'fault':<30}{'trials':>6}  {'no effect':>9}{'crash':>7}{'degraded':>9}"
    if result["rows"] and "shares_rollback" in result["rows"][0]:
        head += f"   | {'no effect':>9}{'crash':>7}{'degraded':>9}{'rollbacks':>11}"
    return "\n".join([head, "-" * len(head), *(format_row(r) for r in result["rows"])])


def run(args: argparse.Namespace) -> int:
    """Run `save-ros robustness training`."""
    torch.set_num_threads(max(1, args.threads))
    if args.trials < 1:
        print("save-ros robustness training: --trials must be >= 1", file=sys.stderr)
        return 2
    try:
        result = run_campaign(args)
    except (TrainingFaultError, ModelError, StoreError, CampaignError, ValueError) as exc:
        print(f"save-ros robustness training: {exc}", file=sys.stderr)
        return 2
    ref = result["reference"]
    print(f"{result['model']}: fault-free fine-tune {ref['steps']} steps, held-out accuracy "
          f"{ref['accuracy']:.4f} (before {ref['accuracy_before']:.4f}); degraded = drop > "
          f"{result['threshold']}" + ("; right: with --rollback" if "shares_rollback" in
                                       (result["rows"] or [{}])[0] else ""))
    print(format_table(result))
    print(f"wall time {result['wall_s']:.1f} s")
    if args.json:
        write_json(args.json, result)
    return 0
