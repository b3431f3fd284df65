"""The zoo's robot policies: several inputs, action chunks, transformer and diffusion.

- `decision_transformer`: rtg (N,20,1), states (N,20,17), actions (N,20,6), timesteps (N,20)
  int64 -> actions (N,20,6);
- `visuomotor`: image (N,3,224,224) in [0,1], joint_state (N,7) -> an action chunk (N,16,7);
- `visuomotor_tiny`: the same form at 64 px, a 5-conv trunk, width 32 -> (N,4,7) (CPU tests);
- `rdt_policy`: noise (N,64,14), state (N,14), lang (N,32,4096), img (N,64,1152) -> the clean
  chunk (N,64,14) after 5 DDIM steps;
- `rdt_policy_tiny`: the same architecture, narrow (CPU tests): lang (N,8,32), img (N,8,48).

`build_policy(name)` builds one from its architecture (seeded init, nothing downloaded), fp32,
eval mode, on the CPU (`device="meta"`: the skeleton without memory, e.g. to count
parameters of the 400M model). `example_inputs(name)` gives seeded inputs inside
`input_boxes(name)`, one (low, high) per input in the forward's order, as `protect()` takes them
with several inputs. Integer inputs (timesteps) carry their integer range; they are exact.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from save_ros.models.zoo import decision_transformer as dt
from save_ros.models.zoo import rdt
from save_ros.models.zoo import visuomotor as vm
from save_ros.models.zoo.errors import UnknownZooModelError


@dataclass(frozen=True)
class PolicyEntry:
    """How to build one policy and make inputs for it."""

    build: Callable[[], nn.Module]
    example_inputs: Callable[..., tuple[torch.Tensor, ...]]
    input_boxes: Callable[[], tuple]
    input_names: tuple[str, ...]
    description: str


_POLICIES: dict[str, PolicyEntry] = {
    "decision_transformer": PolicyEntry(
        lambda: dt.decision_transformer(dt.DTConfig()),
        lambda **kw: dt.example_inputs(dt.DTConfig(), **kw),
        lambda: dt.input_boxes(dt.DTConfig()),
        ("rtg", "states", "actions", "timesteps"),
        "Decision Transformer (gym HalfCheetah sizes, K=20, 3 causal GPT layers, hidden 128)"),
    "visuomotor": PolicyEntry(
        lambda: vm.visuomotor(vm.VisuomotorConfig()),
        lambda **kw: vm.example_inputs(vm.VisuomotorConfig(), **kw),
        lambda: vm.input_boxes(vm.VisuomotorConfig()),
        ("image", "joint_state"),
        "ACT-style visuomotor policy: ResNet-18 trunk + joint token -> 16 x 7 action chunk"),
    "visuomotor_tiny": PolicyEntry(
        lambda: vm.visuomotor(vm.TINY),
        lambda **kw: vm.example_inputs(vm.TINY, **kw),
        lambda: vm.input_boxes(vm.TINY),
        ("image", "joint_state"),
        "visuomotor at 64 px with a small conv trunk, width 32, a 4 x 7 chunk (CPU tests)"),
    "rdt_policy": PolicyEntry(
        lambda: rdt.rdt_policy(rdt.RDTConfig()),
        lambda **kw: rdt.example_inputs(rdt.RDTConfig(), **kw),
        lambda: rdt.input_boxes(rdt.RDTConfig()),
        ("noise", "state", "lang", "img"),
        "RDT-class diffusion transformer, ~416M, 64 x 14 chunk, 5 DDIM steps in one forward"),
    "rdt_policy_tiny": PolicyEntry(
        rdt.rdt_policy_tiny,
        lambda **kw: rdt.example_inputs(rdt.TINY, **kw),
        lambda: rdt.input_boxes(rdt.TINY),
        ("noise", "state", "lang", "img"),
        "rdt_policy's architecture at width 64, 2 blocks (CPU tests)"),
}


def available_policies() -> list[str]:
    """The zoo's policy names."""
    return list(_POLICIES)


def _entry(name: str) -> PolicyEntry:
    if name not in _POLICIES:
        raise UnknownZooModelError(
            f"unknown zoo policy {name!r}; the zoo's policies are {', '.join(_POLICIES)}")
    return _POLICIES[name]


def build_policy(name: str, seed: int = 0, dtype: torch.dtype = torch.float32,
                 device: str | torch.device = "cpu") -> nn.Module:
    """A zoo policy in eval mode: the seeded init (global RNG left as it was) in `dtype`.

    It is built in fp32 and converted (`.to(dtype)`), as a user converts a trained model;
    `device="meta"` builds the skeleton only (no memory, no init; for counting parameters).
    """
    entry = _entry(name)
    if torch.device(device).type == "meta":
        with torch.device("meta"):
            return entry.build().to(dtype).eval()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = entry.build()
    return model.eval().to(device=device, dtype=dtype)


def example_inputs(name: str, batch: int = 1, seed: int = 0,
                   dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, ...]:
    """Seeded inputs of a policy (float ones in `dtype`, integer ones int64), inside its boxes."""
    return _entry(name).example_inputs(batch=batch, seed=seed, dtype=dtype)


def input_boxes(name: str) -> tuple:
    """One (low, high) per input, in the forward's order (scalars or per-channel tuples)."""
    return _entry(name).input_boxes()


def input_names(name: str) -> tuple[str, ...]:
    """The forward's argument names, in order."""
    return _entry(name).input_names


def describe(name: str) -> str:
    """One line on what the policy is."""
    return _entry(name).description


def parameter_count(name: str) -> int:
    """Parameters of a policy, counted on the meta device (nothing allocated)."""
    return sum(p.numel() for p in build_policy(name, device="meta").parameters())
