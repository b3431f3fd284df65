"""The unprotected side of a fair comparison: the fastest configuration a user would deploy.

On a GPU the candidates are eager, a CUDA graph of the eager model, `torch.compile` (Inductor,
default mode) and `torch.compile(mode="reduce-overhead")` (Inductor's kernels replayed from CUDA
graphs). Each is warmed up, timed (median of blocks), and the fastest is the baseline the
protected model is compared against; every candidate's time is reported. On the CPU the plain
forward under `inference_mode` is the baseline (the issue's reference for the CPU ratio).
A candidate that fails (a model Inductor cannot compile) is reported with its error, not used.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from save_ros.eval.timing import median_ms

CANDIDATES = ("eager", "graph", "compile", "compile-graph")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _eager(model, x) -> Callable[[], None]:
    def run():
        with torch.inference_mode():
            model(x)
        _sync(x.device)
    return run


def _graph(model, x) -> Callable[[], None]:
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s), torch.inference_mode():
        for _ in range(3):
            model(x)
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.inference_mode(), torch.cuda.graph(g):
        model(x)

    def replay():
        g.replay()
        torch.cuda.synchronize()
    return replay


def _compiled(model, x, mode: str | None) -> Callable[[], None]:
    fn = torch.compile(model, mode=mode, dynamic=False)
    with torch.inference_mode():
        for _ in range(3):  # compile, then let reduce-overhead record its graphs
            fn(x)
    _sync(x.device)

    def run():
        with torch.inference_mode():
            fn(x)
        torch.cuda.synchronize()
    return run


def best_plain(model, x, wanted: tuple[str, ...] = CANDIDATES, iters: int = 20,
               blocks: int = 3) -> tuple[Callable[[], None], str, dict[str, float | str]]:
    """(the fastest candidate's run function, its name, ms or error text per candidate)."""
    if x.device.type != "cuda":
        return _eager(model, x), "eager", {}
    unknown = sorted(set(wanted) - set(CANDIDATES))
    if unknown:
        raise ValueError(f"unknown baseline(s) {unknown}; choose from {', '.join(CANDIDATES)}")
    makers = {"eager": lambda: _eager(model, x), "graph": lambda: _graph(model, x),
              "compile": lambda: _compiled(model, x, None),
              "compile-graph": lambda: _compiled(model, x, "reduce-overhead")}
    runs: dict[str, Callable[[], None]] = {}
    times: dict[str, float | str] = {}
    for name in wanted:
        try:
            runs[name] = makers[name]()
        except Exception as exc:  # noqa: BLE001 - reported, the others still compete
            times[name] = f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    for _ in range(blocks):  # interleaved blocks, as the protected comparison does
        for name, run in runs.items():
            t = median_ms(run, iters)
            times[name] = min(t, times.get(name, float("inf")))  # type: ignore[type-var]
    timed = {k: v for k, v in times.items() if isinstance(v, float)}
    if not timed:
        raise RuntimeError(f"no unprotected baseline ran: {times}")
    best = min(timed, key=timed.get)
    return runs[best], best, times
