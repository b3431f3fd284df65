"""Attention and MLP pieces shared by the zoo's policies (GPT, ACT and DiT/RDT blocks).

Attention is `F.scaled_dot_product_attention` (causal or not, self or cross), which SAVE's range
analysis has a rule for (a convex combination of V's rows). Shapes stay symbolic (`unflatten`,
`flatten`, `transpose`; no `x.shape[...]` arithmetic), so torch.fx traces every module, and every
op runs on the CPU in fp32 and bf16.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(N, S, D) -> (N, heads, S, D / heads)."""
    return x.unflatten(-1, (heads, -1)).transpose(1, 2)


def _merge(x: torch.Tensor) -> torch.Tensor:
    """(N, heads, S, d) -> (N, S, heads * d)."""
    return x.transpose(1, 2).flatten(2)


class SelfAttention(nn.Module):
    """Multi-head self-attention with one fused qkv projection (GPT-2's `c_attn` / `c_proj`)."""

    def __init__(self, dim: int, heads: int, causal: bool = False) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not a multiple of heads {heads}")
        self.heads = heads
        self.causal = causal
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Attend over the tokens of x (N, S, D); causal: token i sees tokens 0..i only."""
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        out = F.scaled_dot_product_attention(_heads(q, self.heads), _heads(k, self.heads),
                                             _heads(v, self.heads), is_causal=self.causal)
        return self.proj(_merge(out))


class CrossAttention(nn.Module):
    """Multi-head attention of query tokens to context tokens (of the same width)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not a multiple of heads {heads}")
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """Tokens x (N, S, D) attend to context (N, L, D)."""
        k, v = self.kv(context).chunk(2, dim=-1)
        out = F.scaled_dot_product_attention(_heads(self.q(x), self.heads),
                                             _heads(k, self.heads), _heads(v, self.heads))
        return self.proj(_merge(out))


class MLP(nn.Module):
    """Linear, GELU (tanh approximation, as GPT-2 and DiT), Linear."""

    def __init__(self, dim: int, hidden: int, out: int | None = None) -> None:
        super().__init__()
        self.fc = nn.Linear(dim, hidden)
        self.act = nn.GELU(approximate="tanh")
        self.proj = nn.Linear(hidden, out or dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The MLP on the last dimension."""
        return self.proj(self.act(self.fc(x)))


class EncoderBlock(nn.Module):
    """Pre-norm transformer block: x + attn(ln(x)), then + mlp(ln(.)); causal for GPT."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int = 4, causal: bool = False) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, heads, causal)
        self.ln_2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, mlp_ratio * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """One block on tokens (N, S, D)."""
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class DecoderBlock(nn.Module):
    """Pre-norm block with self-attention, cross-attention to a context, and an MLP."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int = 4) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, heads)
        self.ln_2 = nn.LayerNorm(dim)
        self.cross = CrossAttention(dim, heads)
        self.ln_3 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, mlp_ratio * dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """Tokens x (N, S, D) with context (N, L, D)."""
        x = x + self.attn(self.ln_1(x))
        x = x + self.cross(self.ln_2(x), context)
        return x + self.mlp(self.ln_3(x))


def init_weights(module: nn.Module, std: float = 0.02) -> None:
    """GPT-2 / BERT init: linear and embedding weights N(0, std), biases 0, LayerNorm (1, 0)."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=std)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
