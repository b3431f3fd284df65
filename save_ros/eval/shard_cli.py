"""The options of the campaign commands that say where trials run and where they are kept.

`add_arguments` adds `--workers`, `--ray`, `--store`, `--resume` (and `--device`); `executor`
turns them into a `save_ros.eval.shard` executor. Ray's executor is imported only for `--ray`.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from save_ros.eval import shard
from save_ros.eval.trial import CampaignError


def add_arguments(parser: argparse.ArgumentParser, device: bool = True) -> None:
    """The options that say where trials run and where they are kept."""
    where = parser.add_argument_group("where the trials run (save_ros.eval.shard)")
    if device:
        where.add_argument("--device", default="auto",
                           help="cpu, cuda (one worker process per visible GPU), cuda:N, or "
                                "auto (cuda where available, default)")
    where.add_argument("--workers", type=int, default=0,
                       help="worker processes on this host (cpu: default 1 = this process; "
                            "cuda: default every visible GPU)")
    where.add_argument("--ray", metavar="auto|ADDRESS", default=None,
                       help="run the trials as tasks on a Ray cluster (auto: the one this "
                            "machine runs); needs `pip install ray` (save_ros[cluster])")
    where.add_argument("--store", type=Path, default=None,
                       help="SQLite file that keeps every finished trial (resumable)")
    where.add_argument("--resume", action="store_true",
                       help="continue the campaign in --store: run only the trials it lacks")


def executor(args: argparse.Namespace, device: str,
             here: Callable[[], shard.Executor] | None = None) -> shard.Executor:
    """The executor the options of `add_arguments` ask for (`here`: the one-CPU-process one)."""
    if args.resume and args.store is None:
        raise CampaignError("--resume needs --store FILE (the store of the killed campaign)")
    if args.workers < 0:
        raise CampaignError(f"--workers must be >= 0, got {args.workers}")
    if args.ray:
        from save_ros.eval.shard_ray import ray_executor
        return ray_executor(args.ray, device, max(1, args.threads))
    devices = shard.local_devices(device, args.workers)
    if not devices:
        raise CampaignError(f"--device {device}: no GPU is visible")
    if devices == ["cpu"]:
        return here() if here is not None else shard.in_process()
    return shard.processes(devices)
