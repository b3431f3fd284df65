"""`save-ros robustness campaign`: a seeded fault-injection campaign; print / save its figures."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from save_ros.argtypes import bit_list, float_list, int_list, name_list
from save_ros.eval import model_cli
from save_ros.eval.campaign import (
    ACTIVATION_SITES,
    TARGETS,
    CampaignConfig,
    CampaignError,
)
from save_ros.eval.campaign_table import format_table, header_lines
from save_ros.eval.methods import UnknownMethodError
from save_ros.eval.record import write_json
from save_ros.eval.store import StoreError, TrialStore
from save_ros.faults import EmptyTargetError, NoBitsError, UnknownNameError
from save_ros.models import ModelError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `save-ros robustness campaign`."""
    model_cli.add_arguments(parser)
    parser.add_argument("--target", choices=TARGETS, default="weights",
                        help="memory the flips hit (both = uniform per bit over the union)")
    parser.add_argument("--activation-sites", choices=ACTIVATION_SITES, default="auto",
                        help="activation faults at every fx node (fx), at leaf-module outputs "
                             "(modules), or fx where the model and every method allow (auto)")
    parser.add_argument("--flips", type=int_list, default=(1, 16, 256, 4096),
                        help="flip counts per trial, comma-separated (default 1,16,256,4096)")
    parser.add_argument("--ber", type=float_list, default=(),
                        help="bit error rates per bit, e.g. 1e-7,1e-6 (replaces --flips; the "
                             "count per trial is binomial)")
    parser.add_argument("--trials", type=int, default=100, help="trials per flip count")
    parser.add_argument("--seed", type=int, default=0, help="campaign seed")
    parser.add_argument("--method", type=name_list, default=("unprotected",),
                        help="comma-separated methods (see save_ros.eval.methods.METHODS)")
    parser.add_argument("--batch", type=int, default=256,
                        help="evaluation samples: a fixed strided subset of the test split "
                             "(import-path models: this many inputs)")
    parser.add_argument("--episodes", type=int, default=3,
                        help="gymnasium episodes per trial for a control policy (0 = none)")
    parser.add_argument("--bits", type=bit_list, default=None,
                        help="restrict flipped bits, e.g. 23-30 (fp32 exponent)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--json", type=Path, default=None, help="write every figure here")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    from save_ros.eval import shard_cli

    shard_cli.add_arguments(parser)


class Progress:
    """One updating line on stderr (a line per point when stderr is not a terminal)."""

    def __init__(self, stream=None) -> None:
        stream = stream or sys.stderr  # looked up per call: a default bound at import goes stale
        self.stream, self.tty, self.last = stream, stream.isatty(), 0.0

    def __call__(self, msg: str) -> None:
        """Show `msg`; throttled to a few updates a second on a terminal."""
        done = msg.rsplit("trial ", 1)[-1].split("/")
        final = len(done) == 2 and done[0] == done[1]
        now = time.monotonic()
        if self.tty and (final or now - self.last > 0.2):
            self.stream.write("\r" + msg.ljust(78) + ("\n" if final else ""))
            self.stream.flush()
            self.last = now
        elif not self.tty and final:
            self.stream.write(msg + "\n")
            self.stream.flush()


def run_where(args: argparse.Namespace, cfg: CampaignConfig, command: list[str]) -> dict:
    """Run the campaign where the options say: here, in worker processes, or on Ray."""
    from save_ros.eval import shard, shard_cli

    device = args.device
    if args.ray and device == "auto":  # the cluster's GPUs count, not this machine's
        from save_ros.eval.shard_ray import cluster_device
        device = cluster_device(args.ray)
    elif device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if not args.ray and device.startswith("cuda") and not torch.cuda.is_available():
        raise CampaignError(f"--device {device}: CUDA is not available here; use --device cpu")
    source = shard.ModelSource.from_args(args)
    execute = shard_cli.executor(  # one CPU process: here, the model built once, as always
        args, device, lambda: shard.in_process(model_cli.setup_from_args(args, cfg.batch,
                                                                         cfg.episodes)))
    store = TrialStore(args.store or ":memory:", shard.campaign_spec(cfg, source, device),
                       resume=args.resume)
    try:
        return shard.run_sharded(cfg, source, execute, store, device, max(1, args.threads),
                                 progress=not args.quiet, command=command)
    finally:
        store.close()


def run(args: argparse.Namespace) -> int:
    """Run the campaign described by the parsed options."""
    torch.set_num_threads(max(1, args.threads))
    try:
        cfg = CampaignConfig(model=args.model, target=args.target, flips=args.flips,
                             trials=args.trials, seed=args.seed,
                             methods=args.method,
                             batch=args.batch, episodes=args.episodes, bits=args.bits,
                             ber=args.ber, activation_sites=args.activation_sites)
        command = (["save-ros", "campaign", *sys.argv[2:]] if sys.argv[1:2] == ["campaign"]
                   else sys.argv)
        result = run_where(args, cfg, command)
    except (CampaignError, UnknownMethodError, ModelError, EmptyTargetError, NoBitsError,
            UnknownNameError, StoreError) as exc:  # ModelError: a --model that does not load
        print(f"save-ros robustness campaign: {exc}", file=sys.stderr)
        return 2
    print("\n".join(header_lines(result)))
    if result["activation_sites"]["naming"] != "none":
        sites = result["activation_sites"]
        print(f"activation sites: {sites['naming']} ({sites['why']})")
    print(format_table(result))
    ex = result["execution"]
    print(f"wall time {result['wall_s']:.1f} s; {ex['executor']} x{ex['workers']} on "
          f"{ex['device']}; {ex['trials_run']} trials run, {ex['trials_resumed']} resumed"
          + (f", {ex['duplicates_ignored']} duplicates ignored" if ex["duplicates_ignored"]
             else "") + (f", {ex['conflicts']} CONFLICTING duplicates" if ex["conflicts"]
                         else ""))
    if args.json:
        write_json(args.json, result)
    return 0
