"""A visuomotor policy: camera image + joint state -> a chunk of joint-position actions.

The shape of ACT (Zhao et al., 2023) without its CVAE (at inference ACT's latent is zero) and
of diffusion policy's observation encoder without the diffusion: a torchvision-faithful
ResNet-18 trunk (to layer4, BatchNorm in eval) turns the image (ImageNet-normalised inside the
model) into a 7x7 grid of features, projected to `dim` tokens with a learned position embedding;
the joint state is one more token. A transformer encoder mixes them; `chunk` learned action
queries cross-attend to the encoded tokens in a transformer decoder, and a linear head gives
one action (a joint-position target per joint) per query: (N, chunk, joints).

The joint box is the Franka Emika Panda's joint limits (rad), as a robot's URDF declares them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from save_ros.models.zoo.attention import DecoderBlock, EncoderBlock, init_weights
from save_ros.models.zoo.resnet import resnet18

PANDA_LOW = (-2.8973, -1.7628, -2.8973, -3.0718, -2.8973, -0.0175, -2.8973)
PANDA_HIGH = (2.8973, 1.7628, 2.8973, -0.0698, 2.8973, 3.7525, 2.8973)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class VisuomotorConfig:
    """The sizes of a visuomotor policy."""

    image_size: int = 224
    joints: int = 7
    chunk: int = 16
    dim: int = 256
    heads: int = 8
    enc_layers: int = 2
    dec_layers: int = 2
    # 0: the ResNet-18 trunk; c > 0: five stride-2 3x3 convs (c, 2c, 2c, 4c, 4c channels), the
    # same 32x downsampling at a fraction of the weights (the node's CPU tests)
    small_trunk: int = 0


class VisuomotorPolicy(nn.Module):
    """ResNet-18 image tokens + a joint-state token -> encoder -> action queries -> actions."""

    def __init__(self, cfg: VisuomotorConfig = VisuomotorConfig()) -> None:
        super().__init__()
        if cfg.image_size % 32:
            raise ValueError(f"image_size {cfg.image_size} is not a multiple of 32")
        self.cfg = cfg
        if cfg.small_trunk:
            c = cfg.small_trunk
            widths = (3, c, 2 * c, 2 * c, 4 * c, 4 * c)
            self.trunk = nn.Sequential(*(layer for a, b in zip(widths[:-1], widths[1:], strict=True)
                                         for layer in (nn.Conv2d(a, b, 3, 2, 1), nn.ReLU())))
            trunk_out = widths[-1]
        else:
            r = resnet18()
            self.trunk = nn.Sequential(r.conv1, r.bn1, r.relu, r.maxpool, r.layer1, r.layer2,
                                       r.layer3, r.layer4)
            trunk_out = 512
        grid = (cfg.image_size // 32) ** 2
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).reshape(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).reshape(1, 3, 1, 1))
        self.input_proj = nn.Conv2d(trunk_out, cfg.dim, kernel_size=1)
        self.image_pos = nn.Parameter(torch.zeros(1, grid, cfg.dim))
        self.joint_proj = nn.Linear(cfg.joints, cfg.dim)
        self.joint_pos = nn.Parameter(torch.zeros(1, 1, cfg.dim))
        self.encoder = nn.Sequential(*(EncoderBlock(cfg.dim, cfg.heads)
                                       for _ in range(cfg.enc_layers)))
        self.queries = nn.Parameter(torch.zeros(1, cfg.chunk, cfg.dim))
        self.decoder = nn.ModuleList(DecoderBlock(cfg.dim, cfg.heads)
                                     for _ in range(cfg.dec_layers))
        self.ln_f = nn.LayerNorm(cfg.dim)
        self.action_head = nn.Linear(cfg.dim, cfg.joints)
        init_weights(nn.ModuleList([self.input_proj, self.joint_proj, self.encoder,
                                    self.decoder, self.ln_f, self.action_head]))
        for p in (self.image_pos, self.joint_pos, self.queries):
            nn.init.normal_(p, std=0.02)

    def forward(self, image: torch.Tensor, joint_state: torch.Tensor) -> torch.Tensor:
        """Actions (N, chunk, joints) from image (N, 3, H, W) in [0, 1] and joint_state
        (N, joints) in rad."""
        feats = self.input_proj(self.trunk((image - self.mean) / self.std))  # (N, dim, h, w)
        tokens = feats.flatten(2).transpose(1, 2) + self.image_pos  # (N, h*w, dim)
        joint = self.joint_proj(joint_state).unsqueeze(1) + self.joint_pos  # (N, 1, dim)
        memory = self.encoder(torch.cat((tokens, joint), dim=1))
        x = self.queries.expand(image.shape[0], -1, -1)
        for block in self.decoder:
            x = block(x, memory)
        return self.action_head(self.ln_f(x))


# the node's CPU tests: 64 px images, a small conv trunk, a 4-action chunk, one narrow encoder
# and decoder layer
TINY = VisuomotorConfig(image_size=64, chunk=4, dim=32, heads=2, enc_layers=1, dec_layers=1,
                        small_trunk=8)


def visuomotor(cfg: VisuomotorConfig = VisuomotorConfig()) -> VisuomotorPolicy:
    """The visuomotor policy at 224 px, 7 joints, a chunk of 16 actions."""
    return VisuomotorPolicy(cfg)


def example_inputs(cfg: VisuomotorConfig, batch: int = 1, seed: int = 0,
                   dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded (image, joint_state) inside `input_boxes(cfg)`: a zoo image, joints uniform
    within the limits."""
    from save_ros.models.zoo.images import images

    g = torch.Generator().manual_seed(seed)
    low, high = torch.tensor(PANDA_LOW[:cfg.joints]), torch.tensor(PANDA_HIGH[:cfg.joints])
    joints = low + (high - low) * torch.rand(batch, cfg.joints, generator=g)
    return images(batch, cfg.image_size, seed).to(dtype), joints.to(dtype)


def input_boxes(cfg: VisuomotorConfig) -> tuple[tuple, tuple]:
    """(low, high) per input: the image in [0, 1], each joint within its limits."""
    if cfg.joints > len(PANDA_LOW):
        return (0.0, 1.0), (-3.1416, 3.1416)
    return (0.0, 1.0), (PANDA_LOW[:cfg.joints], PANDA_HIGH[:cfg.joints])
