"""Tiled sampling: images larger than the network, denoised as overlapping tiles that agree at every step.

At every step of any sampler the network runs on each tile of y_t (with the same tile of x), and the tiles' noise
estimates are blended into one estimate for the whole image with a smooth window, normalised to sum to 1 at every
pixel; the sampler then takes its step on the whole image. As y0_hat = (y_t - sqrt(1 - gamma) eps) / sqrt(gamma) is
affine in eps, this blends the tiles' y0 estimates too. Tiles that overlap are pulled together at every noise level
instead of being stitched once at the end, so no seam forms (MultiDiffusion, Bar-Tal et al. 2023, does the same for
text-to-image models). Where a pixel lies in one tile only, its weight is exactly 1, so an image of the network's
size is sampled exactly as without tiling.
"""

from __future__ import annotations

import math

import torch

from .diffusion import Denoiser


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Starts of the fewest tiles of ``tile`` pixels that cover ``length`` with at least ``overlap`` in common,
    spread evenly from 0 to ``length - tile``."""
    if not 0 <= overlap < tile:
        raise ValueError(f"the overlap must be at least 0 and below the tile size {tile}, got {overlap}")
    if length < tile:
        raise ValueError(f"an image side of {length} px is smaller than the tile ({tile} px)")
    count = 1 if length == tile else math.ceil((length - overlap) / (tile - overlap))
    return [round(i * (length - tile) / (count - 1)) for i in range(count)] if count > 1 else [0]


def window(tile: int, overlap: int) -> torch.Tensor:
    """A (tile, tile) weight: 1 inside, rising as sin^2 over ``overlap`` pixels at each edge, never 0."""
    ramp = torch.ones(tile, dtype=torch.float64)
    if overlap:
        u = (torch.arange(overlap, dtype=torch.float64) + 0.5) / overlap
        ramp[:overlap] = torch.sin(u * math.pi / 2) ** 2
        ramp[tile - overlap :] = ramp[:overlap].flip(0)
    return ramp[:, None] * ramp[None, :]


def tile_weights(height: int, width: int, tile: int, overlap: int,
                 active: torch.Tensor | None = None) -> list[tuple[int, int, torch.Tensor]]:
    """(top, left, weight) of each tile of a height x width image; the weights of the tiles covering a pixel sum to 1.

    ``active`` (H, W), if given, keeps only the tiles that hold one of its nonzero pixels.
    """
    base = window(tile, overlap)
    places = [(top, left) for top in tile_starts(height, tile, overlap) for left in tile_starts(width, tile, overlap)]
    if active is not None:
        places = [(t, le) for t, le in places if active[t : t + tile, le : le + tile].any()]
    total = torch.zeros(height, width, dtype=torch.float64)
    for top, left in places:
        total[top : top + tile, left : left + tile] += base
    return [(top, left, (base / total[top : top + tile, left : left + tile]).float()) for top, left in places]


class TiledDenoiser:
    """A denoiser f(x, y_t, gamma) over images of any size of at least ``tile`` pixels, from one of ``tile`` pixels.

    ``batch_size`` tiles go through ``denoiser`` at a time. With ``mask`` (B, 1, H, W), the tiles without a pixel to
    generate are skipped (their estimate would be discarded by the sampler anyway).
    """

    def __init__(self, denoiser: Denoiser, tile: int, overlap: int, batch_size: int = 16,
                 mask: torch.Tensor | None = None):
        self.denoiser, self.tile, self.overlap, self.batch_size = denoiser, tile, overlap, max(1, batch_size)
        self.mask = mask
        self._weights: list[tuple[int, int, torch.Tensor]] | None = None

    def weights(self, height: int, width: int) -> list[tuple[int, int, torch.Tensor]]:
        if self._weights is None:
            active = None if self.mask is None else self.mask.flatten(0, 1).amax(0) > 0
            self._weights = tile_weights(height, width, self.tile, self.overlap, active)
        return self._weights

    def __call__(self, x: torch.Tensor, y_t: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
        b, _, h, w = y_t.shape
        weights = self.weights(h, w)
        jobs = [(i, top, left, weight) for top, left, weight in weights for i in range(b)]
        s = self.tile
        out = torch.zeros(y_t.shape, dtype=torch.float32, device=y_t.device)
        for start in range(0, len(jobs), self.batch_size):
            chunk = jobs[start : start + self.batch_size]
            eps = self.denoiser(
                torch.stack([x[i, :, t : t + s, le : le + s] for i, t, le, _ in chunk]),
                torch.stack([y_t[i, :, t : t + s, le : le + s] for i, t, le, _ in chunk]),
                torch.stack([gamma[i] for i, _, _, _ in chunk]),
            ).float()
            for e, (i, t, le, weight) in zip(eps, chunk):
                out[i, :, t : t + s, le : le + s] += e * weight.to(out.device)
        return out
