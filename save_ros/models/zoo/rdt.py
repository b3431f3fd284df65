"""An RDT-class diffusion-transformer policy whose whole sampling loop is one forward.

The layout of RDT-1B (Liu et al., 2024): a DiT over [timestep token, proprio token, the action
chunk's tokens] with a learned position embedding; in each block self-attention, then
cross-attention to the conditioning (language tokens in even blocks, image tokens in odd ones),
then an MLP; MLP adaptors map language, image and proprio features to the model width; a final
norm + MLP predicts the clean chunk (RDT's "sample" prediction). RDT's RMSNorm is a LayerNorm
here (SAVE's range analysis has a rule for it).

`forward(noise, state, lang, img)` runs every denoising step: DDIM (eta = 0, deterministic) on
`steps` evenly spaced timesteps of a 1000-step squared-cosine schedule, each step
x_prev = a * x_t + b * x0_hat with constant a, b, and the last one returning x0_hat clipped to
[-1, 1] (normalised actions). The initial noise is an input, so the same noise gives the same
chunk bit for bit (a re-run, DMR), and the timestep embeddings are buffers computed at build
time: the traced graph holds no random op and no sin / cos.

`rdt_policy()` is ~416M parameters (width 1024, 24 blocks, 16 heads); `rdt_policy_tiny()` is the
same architecture small enough for CPU tests. `parameter_count(cfg)` counts on the meta device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from save_ros.models.zoo.attention import MLP, CrossAttention, SelfAttention, init_weights

TRAIN_STEPS = 1000


@dataclass(frozen=True)
class RDTConfig:
    """The sizes of an RDT-class policy."""

    dim: int = 1024
    depth: int = 24
    heads: int = 16
    horizon: int = 64  # actions per chunk
    action_dim: int = 14  # two 7-DoF arms
    state_dim: int = 14
    lang_len: int = 32
    lang_dim: int = 4096  # T5-XXL token features
    img_len: int = 64
    img_dim: int = 1152  # SigLIP patch features
    steps: int = 5  # denoising steps per forward
    freq_dim: int = 256  # sinusoidal timestep features
    cond_bound: float = 8.0  # conditioning features lie in [-this, this]
    noise_bound: float = 5.0  # the initial noise is N(0, 1) clipped to [-this, this]


TINY = RDTConfig(dim=64, depth=2, heads=4, lang_len=8, lang_dim=32, img_len=8, img_dim=48)


def _alphas_cumprod() -> torch.Tensor:
    """The squared-cosine ("squaredcos_cap_v2") schedule's cumulative alphas, float64."""
    def f(t: float) -> float:
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
    betas = [min(1 - f((i + 1) / TRAIN_STEPS) / f(i / TRAIN_STEPS), 0.999)
             for i in range(TRAIN_STEPS)]
    return torch.cumprod(1 - torch.tensor(betas, dtype=torch.float64, device="cpu"), 0)


def ddim_schedule(steps: int) -> list[tuple[int, float, float]]:
    """(timestep, a, b) per step: x_prev = a * x_t + b * x0_hat (DDIM, eta = 0)."""
    if not 1 <= steps <= TRAIN_STEPS:
        raise ValueError(f"steps must be in 1..{TRAIN_STEPS}, not {steps}")
    ac = _alphas_cumprod()
    ts = list(range(0, TRAIN_STEPS, TRAIN_STEPS // steps))[:steps][::-1]
    out = []
    for i, t in enumerate(ts):
        prev = ac[ts[i + 1]].item() if i + 1 < len(ts) else 1.0
        now = ac[t].item()
        a = math.sqrt((1 - prev) / (1 - now))
        b = math.sqrt(prev) - a * math.sqrt(now)
        out.append((t, a, b))
    return out


def timestep_features(timesteps: list[int], dim: int) -> torch.Tensor:
    """DiT's sinusoidal features (len(timesteps), dim): cos then sin of t * 10000^(-k/half)."""
    half = dim // 2  # on the CPU even while a model is built on the meta device
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float64, device="cpu")
                      / half)
    args = torch.tensor(timesteps, dtype=torch.float64, device="cpu")[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1).float()


class RDTBlock(nn.Module):
    """Self-attention, cross-attention to one conditioning sequence, MLP; pre-norm."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.cross_attn = CrossAttention(dim, heads)
        self.norm3 = nn.LayerNorm(dim)
        self.ffn = MLP(dim, 4 * dim)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """Tokens (N, S, D) conditioned on (N, L, D)."""
        x = x + self.attn(self.norm1(x))
        x = x + self.cross_attn(self.norm2(x), cond)
        return x + self.ffn(self.norm3(x))


class RDTPolicy(nn.Module):
    """The whole DDIM sampling loop of an RDT-class denoiser in one forward."""

    def __init__(self, cfg: RDTConfig = RDTConfig()) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.dim
        self.schedule = ddim_schedule(cfg.steps)
        self.register_buffer("t_features", timestep_features(
            [t for t, _, _ in self.schedule], cfg.freq_dim), persistent=False)
        self.t_embedder = MLP(cfg.freq_dim, d, d)
        self.t_embedder.act = nn.SiLU()  # DiT's timestep MLP: Linear, SiLU, Linear
        self.lang_adaptor = MLP(cfg.lang_dim, d, d)
        self.img_adaptor = MLP(cfg.img_dim, d, d)
        self.state_adaptor = MLP(cfg.state_dim, d, d)
        self.action_adaptor = MLP(cfg.action_dim, d, d)
        self.x_pos = nn.Parameter(torch.zeros(1, 2 + cfg.horizon, d))
        self.lang_pos = nn.Parameter(torch.zeros(1, cfg.lang_len, d))
        self.img_pos = nn.Parameter(torch.zeros(1, cfg.img_len, d))
        self.blocks = nn.ModuleList(RDTBlock(d, cfg.heads) for _ in range(cfg.depth))
        self.final_norm = nn.LayerNorm(d)
        self.final = MLP(d, d, cfg.action_dim)
        init_weights(self)
        for p in (self.x_pos, self.lang_pos, self.img_pos):
            nn.init.normal_(p, std=0.02)

    def denoise(self, x: torch.Tensor, step: int, state_tok: torch.Tensor,
                lang: torch.Tensor, img: torch.Tensor) -> torch.Tensor:
        """x0_hat (N, H, A): the clean chunk predicted from x (N, H, A) at step `step`."""
        t_tok = self.t_embedder(self.t_features[step : step + 1]).unsqueeze(0)  # (1, 1, D)
        t_tok = t_tok.expand(x.shape[0], -1, -1)
        h = torch.cat((t_tok, state_tok, self.action_adaptor(x)), dim=1) + self.x_pos
        for i, block in enumerate(self.blocks):
            h = block(h, lang if i % 2 == 0 else img)
        return self.final(self.final_norm(h[:, 2:]))

    def forward(self, noise: torch.Tensor, state: torch.Tensor, lang: torch.Tensor,
                img: torch.Tensor) -> torch.Tensor:
        """The clean action chunk (N, horizon, action_dim) in [-1, 1] from the initial noise
        (N, horizon, action_dim), proprio state (N, state_dim), language tokens
        (N, lang_len, lang_dim) and image tokens (N, img_len, img_dim)."""
        state_tok = self.state_adaptor(state).unsqueeze(1)
        lang_c = self.lang_adaptor(lang) + self.lang_pos
        img_c = self.img_adaptor(img) + self.img_pos
        x = noise
        for step, (_, a, b) in enumerate(self.schedule):
            x0 = self.denoise(x, step, state_tok, lang_c, img_c)
            x = x0 if step == len(self.schedule) - 1 else a * x + b * x0
        return x.clamp(-1.0, 1.0)


def rdt_policy(cfg: RDTConfig = RDTConfig()) -> RDTPolicy:
    """The ~416M-parameter RDT-class policy (chunk 64 x 14, 5 DDIM steps)."""
    return RDTPolicy(cfg)


def rdt_policy_tiny() -> RDTPolicy:
    """The same architecture at width 64, 2 blocks: for CPU tests."""
    return RDTPolicy(TINY)


def parameter_count(cfg: RDTConfig = RDTConfig()) -> int:
    """Parameters of an `RDTPolicy(cfg)`, counted on the meta device (nothing allocated)."""
    with torch.device("meta"):
        model = RDTPolicy(cfg)
    return sum(p.numel() for p in model.parameters())


def example_inputs(cfg: RDTConfig, batch: int = 1, seed: int = 0,
                   dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, ...]:
    """Seeded (noise, state, lang, img) inside `input_boxes(cfg)`."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(batch, cfg.horizon, cfg.action_dim, generator=g)
    state = torch.rand(batch, cfg.state_dim, generator=g) * 2 - 1
    lang = torch.randn(batch, cfg.lang_len, cfg.lang_dim, generator=g)
    img = torch.randn(batch, cfg.img_len, cfg.img_dim, generator=g)
    return (noise.clamp(-cfg.noise_bound, cfg.noise_bound).to(dtype), state.to(dtype),
            lang.clamp(-cfg.cond_bound, cfg.cond_bound).to(dtype),
            img.clamp(-cfg.cond_bound, cfg.cond_bound).to(dtype))


def input_boxes(cfg: RDTConfig) -> tuple[tuple[float, float], ...]:
    """(low, high) per input: clipped noise, normalised proprio, bounded token features."""
    return ((-cfg.noise_bound, cfg.noise_bound), (-1.0, 1.0),
            (-cfg.cond_bound, cfg.cond_bound), (-cfg.cond_bound, cfg.cond_bound))
