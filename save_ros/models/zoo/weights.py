"""Trained zoo weights on disk: a state dict per model, in one file or in shards, fp32 or fp16.

`save_state(model, folder, name)` writes `<name>.pt` (a plain `state_dict`, floating tensors in
the chosen dtype), or `<name>.part0.pt`, `<name>.part1.pt`, ... when a shard limit is given and
one file would pass it (a device machine hands back files of at most 16 MiB; a single tensor
larger than the limit still goes whole into a shard of its own). `find(where, name)`
resolves a file or a folder to those files; `load_state` merges them back into one state dict in
fp32. The training record (`<name>.json`) sits beside them.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from save_ros.errors import UserError


class WeightsError(UserError, FileNotFoundError):
    """Trained weights that are missing or do not fit the model (the message says which)."""


def _shards(state: dict[str, torch.Tensor], limit: int | None) -> list[dict[str, torch.Tensor]]:
    """Split a state dict into consecutive groups of at most `limit` bytes (one if None)."""
    if limit is None:
        return [state]
    out: list[dict[str, torch.Tensor]] = [{}]
    used = 0
    for key, t in state.items():
        size = t.numel() * t.element_size()
        if out[-1] and used + size > limit:
            out.append({})
            used = 0
        out[-1][key] = t
        used += size
    return out


def save_state(model: nn.Module, folder: Path, name: str, dtype: torch.dtype = torch.float32,
               shard_bytes: int | None = None) -> list[Path]:
    """Write `model`'s state dict as `<name>.pt` (or shards); floating tensors cast to `dtype`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: (v.detach().to("cpu", dtype) if v.is_floating_point() else v.detach().cpu())
             for k, v in model.state_dict().items()}
    for old in [*folder.glob(f"{name}.part*.pt"), folder / f"{name}.pt"]:
        old.unlink(missing_ok=True)  # a re-run must not leave shards of the last one
    groups = _shards(state, shard_bytes)
    paths = ([folder / f"{name}.pt"] if len(groups) == 1
             else [folder / f"{name}.part{i}.pt" for i in range(len(groups))])
    for path, group in zip(paths, groups, strict=True):
        torch.save(group, path)
    return paths


def find(where: str | Path, name: str) -> list[Path]:
    """The weight files of model `name`: `where` itself if a file, else `<name>.pt` or its
    shards in the folder `where`."""
    where = Path(where)
    if where.is_file():
        return [where]
    if not where.is_dir():
        raise WeightsError(f"trained weights: {where} is neither a file nor a folder")
    if (where / f"{name}.pt").is_file():
        return [where / f"{name}.pt"]
    parts = sorted(where.glob(f"{name}.part*.pt"),
                   key=lambda p: int(p.name.removeprefix(f"{name}.part").removesuffix(".pt")))
    if not parts:
        raise WeightsError(f"no trained weights for {name} in {where} (expected {name}.pt or "
                           f"{name}.part0.pt ...; `save-ros maintainer train-zoo --models {name} "
                           f"--out {where}` writes them)")
    return parts


def load_state(where: str | Path, name: str) -> dict[str, torch.Tensor]:
    """The state dict of model `name` from `where` (see `find`), floating tensors in fp32."""
    state: dict[str, torch.Tensor] = {}
    for path in find(where, name):
        part = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(part, dict):
            raise WeightsError(f"{path} holds a {type(part).__name__}, not a state dict")
        state.update(part)
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}


def load_into(model: nn.Module, where: str | Path, name: str) -> nn.Module:
    """Load trained weights into `model` (strict: every key, every shape); return it."""
    state = load_state(where, name)
    mine = model.state_dict()
    bad = [k for k in state if k in mine and state[k].shape != mine[k].shape]
    if bad:
        k = bad[0]
        hint = (f" (ViT-B/16's position embedding fixes the image size: these weights are for "
                f"{image_size_of(state)} px)" if "pos_embedding" in k else "")
        raise WeightsError(f"trained weights of {name} do not fit: {k} is "
                           f"{tuple(state[k].shape)} there, {tuple(mine[k].shape)} here{hint}")
    missing, unexpected = sorted(set(mine) - set(state)), sorted(set(state) - set(mine))
    if missing or unexpected:
        raise WeightsError(f"trained weights of {name} do not fit: missing {missing[:3]}, "
                           f"unexpected {unexpected[:3]}")
    model.load_state_dict(state, strict=True)
    return model


def image_size_of(state: dict[str, torch.Tensor], patch: int = 16) -> int | None:
    """The image side a ViT state dict was trained at (from its position embedding), else None."""
    pos = state.get("encoder.pos_embedding")
    if pos is None:
        return None
    side = round((pos.shape[1] - 1) ** 0.5)
    return side * patch
