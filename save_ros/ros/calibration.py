"""Calibration inputs for Selection: from a file, a rosbag, or the first N live inputs.

Selection tightens its interval ranges with the values that real inputs produce. A file holds
model inputs as they are (a `.pt` tensor of shape (N, *input_shape), or a `.npy` array); a bag
holds messages, decoded by the node's own decoder (so calibration sees exactly what inference
will). Samples are checked as live inputs are: one with a NaN or infinite value, or outside the
declared input box, is dropped (it would widen the ranges past what SAVE's checks assume, or
poison them) and the `warn` callback says how many and why; none left is a CalibrationError
(the node: one line, exit 2).

A policy of several inputs calibrates with one batch per input (`sets_from_file`,
`sets_from_bag`): a file holds a tuple of batches in the forward's order or a dict keyed by
input name (`.pt`, or `.npz` keyed by name); a bag's topics (one per input topic) are decoded
per input and matched in time by the node's own `ApproximateSync` (the same slop), so a
calibration sample is a set the live node would have served. A sample with any bad input is
dropped whole.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from save_ros.errors import UserError
from save_ros.preprocess import InputError, InputSpec, check_in_box


class CalibrationError(UserError, ValueError):
    """The calibration source cannot be used; says what to fix."""


def from_file(path: str, spec: InputSpec, limit: int,
              warn: Callable[[str], None] | None = None) -> torch.Tensor:
    """Inputs from a .pt tensor (or a dict with 'inputs') or a .npy array, shaped (N, *shape)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise CalibrationError(f"calibration.file {path!r} does not exist")
    try:
        if p.suffix == ".npy":
            data = torch.from_numpy(np.load(p, allow_pickle=False))
        else:
            data = torch.load(p, map_location="cpu", weights_only=True)
            if isinstance(data, dict):
                data = data.get("inputs")
    except Exception as exc:  # torch.load/np.load raise many unrelated types
        raise CalibrationError(f"cannot read calibration.file {path}: {type(exc).__name__}; "
                               "save a tensor with torch.save(x, path) or np.save") from exc
    if not isinstance(data, torch.Tensor):
        raise CalibrationError(f"calibration.file {path} holds no tensor (or dict with "
                               "'inputs')")
    data = data.float()
    if tuple(data.shape[1:]) != spec.shape:
        raise CalibrationError(f"calibration.file {path} has shape {tuple(data.shape)}; the "
                               f"model takes (N, {', '.join(map(str, spec.shape))})")
    return _checked(list(data[:limit].unsqueeze(1)), spec, f"calibration.file {path}", warn)


def from_bag(path: str, topic: str, msgtype: str, decode: Callable[[object], torch.Tensor],
             spec: InputSpec, limit: int,
             warn: Callable[[str], None] | None = None) -> torch.Tensor:
    """Inputs decoded from the messages of one topic of a rosbag2 folder."""
    from save_ros.ros.bags import BagError, read_messages, topics

    try:
        found = topics(path)
    except Exception as exc:  # rosbags raises its own types for a folder that is not a bag
        raise CalibrationError(f"calibration.bag {path!r} is not a rosbag2 folder "
                               f"({type(exc).__name__})") from exc
    if not topic:
        fitting = [t for t, (ty, _) in found.items() if ty == msgtype]
        if len(fitting) != 1:
            raise CalibrationError(f"calibration.bag {path} has {len(fitting)} topics of type "
                                   f"{msgtype}; set calibration.topic")
        topic = fitting[0]
    elif topic not in found or found[topic][0] != msgtype:
        raise CalibrationError(f"calibration.bag {path} has no topic {topic!r} of type "
                               f"{msgtype}")
    samples, bad = [], Counter()
    try:
        for item in read_messages(path, (topic,)):
            try:
                samples.append(decode(item.msg).cpu())
            except InputError as exc:  # the live decoder's own checks (finite, in the box)
                bad[exc.kind] += 1
            if len(samples) >= limit:
                break
    except BagError as exc:
        raise CalibrationError(str(exc)) from exc
    why = ", ".join(f"{n} {kind}" for kind, n in sorted(bad.items()))
    if not samples:
        raise CalibrationError(f"calibration.bag {path} topic {topic}: no usable input "
                               f"({sum(bad.values())} rejected: {why})")
    if bad and warn is not None:
        warn(f"calibration.bag {path} topic {topic}: dropped {sum(bad.values())} of "
             f"{len(samples) + sum(bad.values())} inputs ({why}); calibrating with "
             f"{len(samples)}")
    return torch.cat(samples)


def _checked(samples: list[torch.Tensor], spec: InputSpec, source: str,
             warn: Callable[[str], None] | None) -> torch.Tensor:
    """The samples that are finite and inside the box; the others dropped, counted, warned."""
    kept, nonfinite, outside = [], 0, 0
    for x in samples:
        if not bool(torch.isfinite(x).all()):  # NaN compares false: the box alone passes it
            nonfinite += 1
            continue
        try:
            kept.append(check_in_box(x, spec))
        except InputError:
            outside += 1
    why = (f"{nonfinite} with NaN or infinite values, {outside} outside the declared input "
           "box")
    if not kept:
        raise CalibrationError(f"{source}: no usable calibration input of {len(samples)} "
                               f"({why}); check its units or input_low/input_high")
    if (nonfinite or outside) and warn is not None:
        warn(f"{source}: dropped {nonfinite + outside} of {len(samples)} calibration inputs "
             f"({why}); calibrating with {len(kept)}")
    return torch.cat(kept)


def _read_sets(p: Path) -> object:
    """The raw content of a calibration file of several inputs."""
    if p.suffix == ".npz":
        with np.load(p, allow_pickle=False) as data:
            return {k: torch.from_numpy(data[k]) for k in data.files}
    data = torch.load(p, map_location="cpu", weights_only=True)
    return data["inputs"] if isinstance(data, dict) and "inputs" in data else data


def sets_from_file(path: str, names: tuple[str, ...], specs: tuple[InputSpec, ...], limit: int,
                   warn: Callable[[str], None] | None = None) -> tuple[torch.Tensor, ...]:
    """One batch per input (forward order) from a .pt tuple / dict or an .npz keyed by name."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise CalibrationError(f"calibration.file {path!r} does not exist")
    try:
        data = _read_sets(p)
    except Exception as exc:  # torch.load/np.load raise many unrelated types
        raise CalibrationError(f"cannot read calibration.file {path}: {type(exc).__name__}; "
                               "save one batch per input with torch.save((x1, x2), path), a "
                               "dict keyed by input name, or np.savez(path, name=x, ...)") from exc
    if isinstance(data, dict):
        missing = [n for n in names if n not in data]
        if missing:
            raise CalibrationError(f"calibration.file {path} has {sorted(map(str, data))}; "
                                   f"the policy's inputs are {list(names)} (missing {missing})")
        data = [data[n] for n in names]
    if not isinstance(data, tuple | list) or len(data) != len(names) or \
            not all(isinstance(t, torch.Tensor) for t in data):
        raise CalibrationError(f"calibration.file {path} must hold one batch per input "
                               f"({', '.join(names)}): a tuple in that order or a dict by name")
    batches = []
    for name, t, spec in zip(names, data, specs, strict=True):
        if tuple(t.shape[1:]) != spec.shape:
            raise CalibrationError(f"calibration.file {path}: input {name!r} has shape "
                                   f"{tuple(t.shape)}; the model takes (N, "
                                   f"{', '.join(map(str, spec.shape))})")
        if spec.integer and t.is_floating_point():
            raise CalibrationError(f"calibration.file {path}: input {name!r} is an integer "
                                   f"input but holds {t.dtype}; save it as integers")
        batches.append(t.long() if spec.integer else t.float())
    if len({len(t) for t in batches}) != 1:
        raise CalibrationError(f"calibration.file {path}: the inputs have different sample "
                               f"counts ({', '.join(str(len(t)) for t in batches)})")
    samples = [tuple(t[i:i + 1] for t in batches) for i in range(min(len(batches[0]), limit))]
    return _checked_sets(samples, names, specs, f"calibration.file {path}", warn)


def _checked_sets(samples: list[tuple[torch.Tensor, ...]], names: tuple[str, ...],
                  specs: tuple[InputSpec, ...], source: str,
                  warn: Callable[[str], None] | None) -> tuple[torch.Tensor, ...]:
    """The sets whose every input is finite and inside its box (or valid values)."""
    kept, nonfinite, outside = [], 0, 0
    for sample in samples:
        if any(x.is_floating_point() and not bool(torch.isfinite(x).all()) for x in sample):
            nonfinite += 1
            continue
        try:
            kept.append(tuple(check_in_box(x, spec) for x, spec in zip(sample, specs,
                                                                      strict=True)))
        except InputError:
            outside += 1
    why = (f"{nonfinite} with NaN or infinite values, {outside} outside an input's declared box "
           "or valid values")
    if not kept:
        raise CalibrationError(f"{source}: no usable calibration set of {len(samples)} ({why})")
    if (nonfinite or outside) and warn is not None:
        warn(f"{source}: dropped {nonfinite + outside} of {len(samples)} calibration sets "
             f"({why}); calibrating with {len(kept)}")
    return tuple(torch.cat(parts) for parts in zip(*kept, strict=True))


def bag_topics(path: str, msgtypes: tuple[str, ...], wanted: tuple[str, ...],
               given: tuple[str, ...]) -> tuple[str, ...]:
    """The bag topic of each input topic: `given` (calibration.topics), else the input topic
    itself (`wanted`) where the bag has it, else the bag's only topic of that type."""
    from save_ros.ros.bags import topics

    try:
        found = topics(path)
    except Exception as exc:  # rosbags raises its own types for a folder that is not a bag
        raise CalibrationError(f"calibration.bag {path!r} is not a rosbag2 folder "
                               f"({type(exc).__name__})") from exc
    chosen = []
    for i, (msgtype, want) in enumerate(zip(msgtypes, wanted, strict=True)):
        name = given[i] if given and given[i] else ""
        if name:
            if name not in found or found[name][0] != msgtype:
                raise CalibrationError(f"calibration.bag {path} has no topic {name!r} of type "
                                       f"{msgtype} (calibration.topics[{i}])")
        elif want in found and found[want][0] == msgtype:
            name = want
        else:
            fitting = [t for t, (ty, _) in found.items() if ty == msgtype]
            if len(fitting) != 1 or msgtypes.count(msgtype) > 1:
                raise CalibrationError(
                    f"calibration.bag {path} has no topic {want} and {len(fitting)} topics of "
                    f"type {msgtype}; set calibration.topics (one bag topic per input topic; "
                    f"the bag has {sorted(found)})")
            name = fitting[0]
        chosen.append(name)
    return tuple(chosen)


def sets_from_bag(path: str, topics: tuple[str, ...],
                  decoders: tuple[Callable[[object], torch.Tensor], ...],
                  names: tuple[str, ...], slop_ns: int, queue_size: int, limit: int,
                  warn: Callable[[str], None] | None = None) -> tuple[torch.Tensor, ...]:
    """Matched sets of a bag's `topics` (one per input topic, decoded by `decoders`), one
    batch per input topic; a message without a header is stamped with its bag time."""
    from save_ros.ros.bags import BagError, read_messages
    from save_ros.ros.sync import ApproximateSync

    index = {t: i for i, t in enumerate(topics)}
    sync: ApproximateSync = ApproximateSync(names, slop_ns, queue_size)
    sets, bad = [], Counter()
    try:
        for item in read_messages(path, tuple(index)):
            i = index[item.topic]
            header = getattr(item.msg, "header", None)
            stamp = (int(header.stamp.sec) * 1_000_000_000 + int(header.stamp.nanosec)
                     if header is not None else item.time_ns)
            try:
                x = decoders[i](item.msg).cpu()
            except InputError as exc:  # the live decoder's own checks
                bad[f"{names[i]} ({exc.kind})"] += 1
                continue
            match = sync.add(i, stamp, x)
            if match is not None:
                sets.append(match.items)
            if len(sets) >= limit:
                break
    except BagError as exc:
        raise CalibrationError(str(exc)) from exc
    stats = sync.stats()
    why = ", ".join(f"{n} {kind}" for kind, n in sorted(bad.items())) or "none rejected"
    if not sets:
        raise CalibrationError(
            f"calibration.bag {path} topics {list(topics)}: no matched set within sync.slop "
            f"({stats.total('received')} messages, {sum(bad.values())} rejected: {why}); check "
            "the stamps or widen sync.slop")
    if bad and warn is not None:
        warn(f"calibration.bag {path}: rejected {sum(bad.values())} messages: {why}; "
             f"calibrating with {len(sets)} matched sets")
    return tuple(torch.cat(parts) for parts in zip(*sets, strict=True))
