"""Decision Transformer (Chen et al., 2021) as its reference code builds it for gym locomotion.

Each timestep t gives three tokens, return-to-go R_t, state s_t and action a_t, each embedded
by its own linear layer plus a learned embedding of the episode timestep, interleaved as
(R_1, s_1, a_1, R_2, ...), layer-normed, and run through a GPT-2 stack with causal
self-attention and no position embedding of its own (the timestep embedding replaces it). The
action a_t is predicted from the hidden state of the token s_t (it sees R_1..R_t, s_1..s_t and
a_1..a_{t-1}), through a linear layer and tanh. Defaults are the paper's gym configuration:
HalfCheetah's 17-d states and 6-d actions, context K = 20, hidden 128, 3 layers, 1 head,
max episode length 1000.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from save_ros.models.zoo.attention import EncoderBlock, init_weights


@dataclass(frozen=True)
class DTConfig:
    """The sizes of a Decision Transformer."""

    state_dim: int = 17
    act_dim: int = 6
    context: int = 20  # K: timesteps per input window
    hidden: int = 128
    layers: int = 3
    heads: int = 1
    max_ep_len: int = 1000
    max_return: float = 12.0  # returns-to-go are scaled (gym: / 1000), the box is [0, this]
    state_bound: float = 10.0  # normalised states lie in [-this, this]


class DecisionTransformer(nn.Module):
    """Causal GPT over (return-to-go, state, action) tokens; predicts actions in [-1, 1]."""

    def __init__(self, cfg: DTConfig = DTConfig()) -> None:
        super().__init__()
        self.cfg = cfg
        h = cfg.hidden
        self.embed_timestep = nn.Embedding(cfg.max_ep_len, h)
        self.embed_return = nn.Linear(1, h)
        self.embed_state = nn.Linear(cfg.state_dim, h)
        self.embed_action = nn.Linear(cfg.act_dim, h)
        self.embed_ln = nn.LayerNorm(h)
        self.blocks = nn.Sequential(*(EncoderBlock(h, cfg.heads, causal=True)
                                      for _ in range(cfg.layers)))
        self.ln_f = nn.LayerNorm(h)
        self.predict_action = nn.Sequential(nn.Linear(h, cfg.act_dim), nn.Tanh())
        init_weights(self)

    def forward(self, rtg: torch.Tensor, states: torch.Tensor, actions: torch.Tensor,
                timesteps: torch.Tensor) -> torch.Tensor:
        """Actions (N, T, A) from rtg (N, T, 1), states (N, T, S), actions (N, T, A) and
        timesteps (N, T) int64 in [0, max_ep_len)."""
        time = self.embed_timestep(timesteps)
        tokens = torch.stack((self.embed_return(rtg) + time, self.embed_state(states) + time,
                              self.embed_action(actions) + time), dim=2)  # (N, T, 3, h)
        x = self.embed_ln(tokens.flatten(1, 2))  # (N, 3T, h): R_1, s_1, a_1, R_2, ...
        x = self.ln_f(self.blocks(x))
        state_tokens = x.unflatten(1, (-1, 3))[:, :, 1]  # (N, T, h)
        return self.predict_action(state_tokens)


def decision_transformer(cfg: DTConfig = DTConfig()) -> DecisionTransformer:
    """The paper's gym Decision Transformer (HalfCheetah sizes, K = 20)."""
    return DecisionTransformer(cfg)


def example_inputs(cfg: DTConfig, batch: int = 1, seed: int = 0,
                   dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, ...]:
    """Seeded (rtg, states, actions, timesteps) inside `input_boxes(cfg)`: a window of K
    consecutive timesteps of an episode, returns-to-go decreasing along it."""
    g = torch.Generator().manual_seed(seed)
    t = cfg.context
    start = torch.randint(0, cfg.max_ep_len - t + 1, (batch, 1), generator=g)
    timesteps = start + torch.arange(t)
    rewards = torch.rand(batch, t, generator=g) * cfg.max_return / cfg.max_ep_len
    rtg = (cfg.max_return * torch.rand(batch, 1, generator=g) - rewards.cumsum(1)).clamp(min=0)
    states = (torch.randn(batch, t, cfg.state_dim, generator=g)).clamp(-cfg.state_bound,
                                                                      cfg.state_bound)
    actions = torch.rand(batch, t, cfg.act_dim, generator=g) * 2 - 1
    return rtg.unsqueeze(-1).to(dtype), states.to(dtype), actions.to(dtype), timesteps


def input_boxes(cfg: DTConfig) -> tuple[tuple[float, float] | tuple[int, int], ...]:
    """(low, high) per input: rtg, states, actions; the timesteps' inclusive integer range."""
    return ((0.0, cfg.max_return), (-cfg.state_bound, cfg.state_bound), (-1.0, 1.0),
            (0, cfg.max_ep_len - 1))
