"""The Ray executor of `save_ros.eval.shard`: trial chunks as Ray tasks on a cluster.

`--ray auto` joins the cluster this machine belongs to (started with `ray start`, or named by
RAY_ADDRESS); `--ray HOST:PORT` or `ray://HOST:PORT` joins that one. Each chunk is one task
that asks for `num_cpus` = the torch threads of a trial and, on CUDA, `num_gpus` = 1, so Ray
places as many trials at once as the cluster has CPUs or GPUs. The workers must have save_ros
(and the model's package, for an import path) installed, like any Ray job's code. A task whose
worker process or node dies is retried by Ray (`max_retries`); a chunk that still arrives twice
is stored once (`save_ros.eval.store`). Ray is imported here only: `pip install .[cluster]`.
"""

from __future__ import annotations

from collections.abc import Iterator

from save_ros.errors import UserError
from save_ros.eval.shard import Executor, Job, run_chunk
from save_ros.eval.trial import TrialKey

MAX_RETRIES = 8  # per chunk, after a worker or node death


class RayUnavailableError(UserError, RuntimeError):
    """--ray was given but Ray is not installed or the cluster cannot be reached."""


def _import_ray():
    try:
        import ray
    except ImportError:
        raise RayUnavailableError("--ray needs Ray: pip install 'ray>=2.9' (or save_ros[cluster])"
                                  ) from None
    return ray


def _chunk_task(job: Job, keys: list[TrialKey]) -> dict:
    """A Ray task: run a chunk on this worker (CUDA: the GPU Ray gave it is cuda:0)."""
    return run_chunk(job, keys)


def connect(address: str):
    """Join the Ray cluster at `address` (`auto`: the one this machine runs); the ray module."""
    ray = _import_ray()
    if not ray.is_initialized():
        try:
            ray.init(address=address, log_to_driver=False, configure_logging=False)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise RayUnavailableError(f"--ray {address}: cannot join a Ray cluster ({exc}); "
                                      "start one with `ray start --head`, or give its "
                                      "address") from None
    return ray


def cluster_device(address: str) -> str:
    """`cuda` when the cluster at `address` has a GPU resource, else `cpu`."""
    return "cuda" if connect(address).cluster_resources().get("GPU", 0) >= 1 else "cpu"


def ray_executor(address: str, device: str, threads: int) -> Executor:
    """An executor that runs chunks as tasks on the Ray cluster at `address`."""
    ray = connect(address)
    gpus = 1 if device.startswith("cuda") else 0
    resources = ray.cluster_resources()
    if gpus and resources.get("GPU", 0) < 1:
        raise RayUnavailableError("--device cuda, but the Ray cluster has no GPU resource")
    slots = int(resources.get("GPU", 0)) if gpus else int(resources.get("CPU", 1) // threads)
    task = ray.remote(_chunk_task).options(num_cpus=threads, num_gpus=gpus,
                                           max_retries=MAX_RETRIES)

    def execute(job: Job, parts: list[list[TrialKey]]) -> Iterator[dict]:
        job_ref = ray.put(job)
        pending = [task.remote(job_ref, part) for part in parts]
        try:
            while pending:
                ready, pending = ray.wait(pending, num_returns=1)
                for ref in ready:
                    yield ray.get(ref)
        finally:
            for ref in pending:
                ray.cancel(ref, force=True)
    execute.workers = max(1, slots)
    execute.name = "ray"
    return execute
