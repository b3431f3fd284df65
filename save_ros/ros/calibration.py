"""Calibration inputs for Selection: from a file, a rosbag, or the first N live inputs.

Selection tightens its interval ranges with the values that real inputs produce. A file holds
model inputs as they are (a `.pt` tensor of shape (N, *input_shape), or a `.npy` array); a bag
holds messages, decoded by the node's own decoder (so calibration sees exactly what inference
will). Samples are checked as live inputs are: one with a NaN or infinite value, or outside the
declared input box, is dropped (it would widen the ranges past what SAVE's checks assume, or
poison them) and the `warn` callback says how many and why; none left is a CalibrationError
(the node: one line, exit 2).
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
