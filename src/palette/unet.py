"""The ADM U-Net of Dhariwal & Nichol (2021) as Palette uses it.

Palette takes the 256x256 class-conditional network of "Diffusion Models Beat GANs", removes the class
embedding and concatenates the source image x to the noisy target y_t at the input. The blocks are:
residual blocks with GroupNorm whose normalised activations are scaled and shifted by the noise-level
embedding (FiLM), BigGAN-style residual blocks that resample, and global multi-head self-attention at the
feature resolutions the configuration names (e.g. 32, 16 and 8).

The network is conditioned on the noise level gamma, not on an integer step: gamma is multiplied by
``noise_level_scale`` and fed to a sinusoidal embedding (see :func:`noise_level_embedding`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint as activation_checkpoint


@dataclass(frozen=True)
class UNetConfig:
    """Plain values that fully describe the network (saved beside the weights)."""

    image_size: int = 256
    channels: int = 3  # image channels C of y: the network reads x and y_t and writes C
    source_channels: int | None = None  # channels of x when they differ from C (paired data); None: C
    base_channels: int = 256
    channel_mult: tuple[int, ...] = (1, 1, 2, 2, 4, 4)
    num_res_blocks: int = 2
    attention_resolutions: tuple[int, ...] = (32, 16, 8)
    head_channels: int = 64
    dropout: float = 0.0
    noise_level_scale: float = 1000.0
    groups: int = 32

    @property
    def condition_channels(self) -> int:
        """Channels of the source image x."""
        return self.channels if self.source_channels is None else self.source_channels

    @property
    def in_channels(self) -> int:
        return self.condition_channels + self.channels

    @property
    def out_channels(self) -> int:
        return self.channels


def noise_level_embedding(gamma: torch.Tensor, dim: int, scale: float, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of the noise level: [cos(s * gamma * w_k), sin(s * gamma * w_k)].

    ``w_k = max_period ** (-k / (dim / 2))`` for k = 0 .. dim/2 - 1 and ``s = scale``. gamma lies in (0, 1); without
    the scale only the lowest frequencies would move and neighbouring noise levels would embed alike.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=gamma.device) / half)
    args = (scale * gamma.float())[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)


class GroupNorm(nn.GroupNorm):
    """``nn.GroupNorm`` that can normalise in autocast's low-precision dtype.

    autocast runs ``group_norm`` in float32: every bf16 activation is cast up before the norm and its float32 result
    cast down again by the next convolution, two extra passes over memory per norm (on an H100, copies took 16% of
    the GPU time of an NCHW bf16 training step of ``base``; docs/performance.md). With ``low_precision`` set, under
    autocast the norm reads and writes the autocast dtype instead; PyTorch's kernels accumulate the statistics in
    float32 either way, so only the output is rounded. Off by default (autocast's choice); outside autocast it
    changes nothing.
    """

    low_precision: bool = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        device = x.device.type
        if not (self.low_precision and torch.is_autocast_enabled(device)):
            return super().forward(x)
        dtype = torch.get_autocast_dtype(device)
        with torch.autocast(device, enabled=False):
            weight = None if self.weight is None else self.weight.to(dtype)
            bias = None if self.bias is None else self.bias.to(dtype)
            return F.group_norm(x.to(dtype), self.num_groups, weight, bias, self.eps)


def _norm(channels: int, groups: int) -> GroupNorm:
    """GroupNorm with ``groups`` groups (32 in ADM), or the largest divisor of the channels below it."""
    return GroupNorm(math.gcd(groups, channels), channels)


def _zero(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, the noise embedding applied as a scale and shift of the second GroupNorm.

    With ``resample='down'`` or ``'up'`` this is BigGAN's residual resampling block: both the residual path and the
    skip path are average-pooled (or nearest-upsampled) between the first normalisation and the first convolution.
    """

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, dropout: float, groups: int, resample: str | None = None):
        super().__init__()
        self.resample = resample
        self.in_norm = _norm(in_ch, groups)
        self.in_conv = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * out_ch)
        self.out_norm = _norm(out_ch, groups)
        self.dropout = nn.Dropout(dropout)
        self.out_conv = _zero(nn.Conv2d(out_ch, out_ch, 3, padding=1))
        self.skip = nn.Identity() if in_ch == out_ch else nn.Conv2d(in_ch, out_ch, 1)

    def _resample(self, h: torch.Tensor) -> torch.Tensor:
        if self.resample == "down":
            return F.avg_pool2d(h, 2)
        if self.resample == "up":
            return F.interpolate(h, scale_factor=2.0, mode="nearest")
        return h

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = F.silu(self.in_norm(x))
        h = self.in_conv(self._resample(h))
        x = self._resample(x)
        scale, shift = self.emb(F.silu(emb))[:, :, None, None].chunk(2, dim=1)
        h = self.out_norm(h) * (1 + scale) + shift
        h = self.out_conv(self.dropout(F.silu(h)))
        return self.skip(x) + h


class AttentionBlock(nn.Module):
    """Global multi-head self-attention over all positions of a feature map (``head_channels`` per head)."""

    def __init__(self, channels: int, head_channels: int, groups: int):
        super().__init__()
        if channels % head_channels:
            raise ValueError(f"attention over {channels} channels cannot be split into heads of {head_channels}")
        self.heads = channels // head_channels
        self.norm = _norm(channels, groups)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj = _zero(nn.Conv1d(channels, channels, 1))

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        b, c, h, w = x.shape
        qkv = self.qkv(self.norm(x).reshape(b, c, h * w))
        q, k, v = qkv.reshape(b, 3 * self.heads, c // self.heads, h * w).transpose(2, 3).chunk(3, dim=1)
        out = F.scaled_dot_product_attention(q, k, v)  # (b, heads, hw, d)
        out = out.transpose(2, 3).reshape(b, c, h * w)
        return x + self.proj(out).reshape(b, c, h, w)


class Stage(nn.ModuleList):
    """A sequence of blocks, each given the noise embedding (attention ignores it)."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        for block in self:
            x = block(x, emb)
        return x


class UNet(nn.Module):
    """f(x, y_t, gamma) -> predicted noise (or y in the regression baseline), shape (B, C, H, W)."""

    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = c = config
        if c.image_size % 2 ** (len(c.channel_mult) - 1):
            raise ValueError(
                f"image_size {c.image_size} is not divisible by 2^{len(c.channel_mult) - 1} "
                f"(channel_mult has {len(c.channel_mult)} levels)"
            )
        self.gradient_checkpointing = False
        emb_dim = 4 * c.base_channels
        self.noise_embed = nn.Sequential(nn.Linear(c.base_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))

        def block(in_ch: int, out_ch: int, resample: str | None = None) -> ResBlock:
            return ResBlock(in_ch, out_ch, emb_dim, c.dropout, c.groups, resample)

        def attention(ch: int) -> AttentionBlock:
            return AttentionBlock(ch, c.head_channels, c.groups)

        ch = c.base_channels * c.channel_mult[0]
        resolution = c.image_size
        self.input_conv = nn.Conv2d(c.in_channels, ch, 3, padding=1)
        skip_channels = [ch]
        self.down = nn.ModuleList()
        for level, mult in enumerate(c.channel_mult):
            for _ in range(c.num_res_blocks):
                stage = Stage([block(ch, c.base_channels * mult)])
                ch = c.base_channels * mult
                if resolution in c.attention_resolutions:
                    stage.append(attention(ch))
                self.down.append(stage)
                skip_channels.append(ch)
            if level != len(c.channel_mult) - 1:
                self.down.append(Stage([block(ch, ch, "down")]))
                resolution //= 2
                skip_channels.append(ch)
        self.middle = Stage([block(ch, ch), attention(ch), block(ch, ch)])
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(c.channel_mult))):
            for i in range(c.num_res_blocks + 1):
                stage = Stage([block(ch + skip_channels.pop(), c.base_channels * mult)])
                ch = c.base_channels * mult
                if resolution in c.attention_resolutions:
                    stage.append(attention(ch))
                if level and i == c.num_res_blocks:
                    stage.append(block(ch, ch, "up"))
                    resolution *= 2
                self.up.append(stage)
        self.out = nn.Sequential(_norm(ch, c.groups), nn.SiLU(), _zero(nn.Conv2d(ch, c.out_channels, 3, padding=1)))

    @property
    def low_precision_norm(self) -> bool:
        """Whether the GroupNorms run in autocast's dtype under autocast (see :class:`GroupNorm`)."""
        return all(m.low_precision for m in self.modules() if isinstance(m, GroupNorm))

    @low_precision_norm.setter
    def low_precision_norm(self, value: bool) -> None:
        for m in self.modules():
            if isinstance(m, GroupNorm):
                m.low_precision = bool(value)

    def _run(self, stage: Stage, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            return activation_checkpoint(stage, h, emb, use_reentrant=False)
        return stage(h, emb)

    def forward(self, x: torch.Tensor, y_t: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
        """x: source image, y_t: noisy target (both (B, C, H, W) in [-1, 1]); gamma: (B,) noise levels in (0, 1]."""
        emb = self.noise_embed(noise_level_embedding(gamma, self.config.base_channels, self.config.noise_level_scale))
        h = self.input_conv(torch.cat([x, y_t], dim=1))
        skips = [h]
        for stage in self.down:
            h = self._run(stage, h, emb)
            skips.append(h)
        h = self._run(self.middle, h, emb)
        for stage in self.up:
            h = self._run(stage, torch.cat([h, skips.pop()], dim=1), emb)
        return self.out(h)


def count_parameters(config: UNetConfig) -> int:
    """Parameter count of the network, built on the meta device (no memory is allocated)."""
    with torch.device("meta"):
        return sum(p.numel() for p in UNet(config).parameters())

