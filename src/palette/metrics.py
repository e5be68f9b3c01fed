"""The paper's metrics: FID, KID, IS, classification accuracy (CA), perceptual distance (PD), sample diversity
(LPIPS and MS-SSIM between samples of one input: the paper's pairs, or all pairs), and PSNR / SSIM for restoration.

Backbones (their weights come from :mod:`palette.weights`; nothing downloads here):

- Inception-v3 "inception-v3-compat" (torch-fidelity's port of the TensorFlow network of the FID paper, the one
  torchmetrics uses too): the 2048-d pool features for FID and KID and the 1008 unbiased logits for IS, from one
  forward pass on uint8 images (it resizes to 299 itself, bilinearly as TensorFlow 1 did).
- ResNet-50 (torchvision, ImageNet) for CA and GoogLeNet / Inception-v1 (torchvision) 1024-d pool features for PD,
  both on ImageNet preprocessing: shorter side to 256, centre crop 224, mean/std normalisation. Neither is exactly
  the paper's: its PD used TensorFlow's Inception-v1, whose weights differ from torchvision's GoogLeNet, and its
  appendix names EfficientNet-B0 for CA where its text says ResNet-50 (docs/evaluation.md).
- LPIPS (AlexNet backbone + the linear heads shipped in torchmetrics) for diversity.

FID is computed exactly in float64: with raw features of both sets and fewer samples than feature dimensions, through
the cross-Gram matrix (tr sqrt(S1 S2) is the nuclear norm of A B^T / sqrt((n1 - 1)(n2 - 1)) for centred features A,
B), otherwise through symmetric eigendecompositions (tr sqrt(S1 S2) = tr sqrt(S1^1/2 S2 S1^1/2)).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from itertools import combinations

import numpy as np
import torch
import torch.nn.functional as F

from . import weights as metric_weights

INCEPTION_DIM = 2048
KID_SUBSETS, KID_SUBSET_SIZE = 100, 1000  # torch-fidelity's defaults
IS_SPLITS = 10
LPIPS_MIN_SIZE = 64
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) in [0, 1] -> uint8 RGB (a gray image is repeated on three channels)."""
    images = images.clamp(0, 1)
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    return (images * 255).round().to(torch.uint8)


def imagenet_preprocess(images: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) in [0, 1] -> shorter side 256 (bilinear, antialiased), centre crop 224, normalised."""
    images = images.float().clamp(0, 1)
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    h, w = images.shape[2:]
    scale = 256 / min(h, w)
    size = (max(224, round(h * scale)), max(224, round(w * scale)))
    images = F.interpolate(images, size=size, mode="bilinear", antialias=True, align_corners=False)
    top, left = (size[0] - 224) // 2, (size[1] - 224) // 2
    images = images[:, :, top : top + 224, left : left + 224]
    mean = torch.tensor(IMAGENET_MEAN, device=images.device)[:, None, None]
    std = torch.tensor(IMAGENET_STD, device=images.device)[:, None, None]
    return (images - mean) / std


class Backbones:
    """The metric networks, each built on first use; ``digests`` records the SHA-256 of every weights file used."""

    def __init__(self, weights_dir=None, device: str | torch.device = "cpu"):
        self.weights_dir = weights_dir
        self.device = torch.device(device)
        self.digests: dict[str, str] = {}
        self._nets: dict[str, torch.nn.Module] = {}

    def _state(self, name: str) -> dict[str, torch.Tensor]:
        state, _, digest = metric_weights.load_state_dict(name, self.weights_dir)
        self.digests[name] = digest
        return state

    def _get(self, name: str) -> torch.nn.Module:
        if name not in self._nets:
            self._nets[name] = getattr(self, f"_build_{name.replace('-', '_')}")().to(self.device).eval()
        return self._nets[name]

    def require(self, names) -> None:
        """Check that every weights file in ``names`` is present before any long work starts."""
        for name in names:
            metric_weights.path(name, self.weights_dir)

    def _build_inception(self) -> torch.nn.Module:
        from torch_fidelity.feature_extractor_inceptionv3 import (
            FeatureExtractorInceptionV3,
        )

        # torch-fidelity unpickles the file it is given; give it a buffer of the tensors we read safely instead
        buffer = io.BytesIO()
        torch.save(self._state("inception-v3-compat"), buffer)
        buffer.seek(0)
        return FeatureExtractorInceptionV3("inception-v3-compat", ["2048", "logits_unbiased"],
                                           feature_extractor_weights_path=buffer)

    def _build_resnet50(self) -> torch.nn.Module:
        import torchvision

        net = torchvision.models.resnet50(weights=None)
        net.load_state_dict(self._state("resnet50"))
        return net

    def _build_googlenet(self) -> torch.nn.Module:
        import torchvision

        # torchvision's ImageNet GoogLeNet expects ImageNet-normalised input and converts it itself (transform_input)
        net = torchvision.models.googlenet(weights=None, aux_logits=True, transform_input=True, init_weights=False)
        net.load_state_dict(self._state("googlenet"))
        net.aux_logits, net.aux1, net.aux2 = False, None, None
        net.fc = torch.nn.Identity()  # the 1024-d pool features
        return net

    def _build_lpips(self) -> torch.nn.Module:
        from torchmetrics.functional.image.lpips import _LPIPS

        # random AlexNet (no download), torchmetrics' bundled linear heads, then our AlexNet weights file
        net = _LPIPS(pretrained=True, net="alex", pnet_rand=True)
        alex = self._state("alexnet")
        mapped = {}
        for key in net.net.state_dict():
            _, index, param = key.split(".")  # sliceK.<index in alexnet.features>.<weight|bias>
            mapped[key] = alex[f"features.{index}.{param}"]
        net.net.load_state_dict(mapped)
        return net

    @torch.no_grad()
    def inception(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(pool features (N, 2048), unbiased logits (N, 1008)) of images in [0, 1]."""
        pool, logits = self._get("inception")(to_uint8(images).to(self.device))
        return pool.cpu(), logits.cpu()

    @torch.no_grad()
    def classify(self, images: torch.Tensor) -> torch.Tensor:
        """ResNet-50 ImageNet logits (N, 1000)."""
        return self._get("resnet50")(imagenet_preprocess(images.to(self.device))).cpu()

    @torch.no_grad()
    def googlenet_features(self, images: torch.Tensor) -> torch.Tensor:
        """GoogLeNet (Inception-v1) pool features (N, 1024)."""
        return self._get("googlenet")(imagenet_preprocess(images.to(self.device))).cpu()

    @torch.no_grad()
    def lpips(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """LPIPS (N,) between images in [0, 1] (gray repeated to RGB; under 64 px upsampled to 64, AlexNet's least)."""
        if a.shape[1] == 1:
            a, b = a.expand(-1, 3, -1, -1), b.expand(-1, 3, -1, -1)
        if min(a.shape[-2:]) < LPIPS_MIN_SIZE:
            a, b = (F.interpolate(t.float(), size=LPIPS_MIN_SIZE, mode="bilinear", align_corners=False) for t in (a, b))
        net = self._get("lpips")
        return net(a.to(self.device) * 2 - 1, b.to(self.device) * 2 - 1).flatten().cpu()


@dataclass
class FeatureStats:
    """A set's Inception statistics: mean, covariance (float64), count and, when kept, the raw features."""

    mu: np.ndarray
    sigma: np.ndarray
    n: int
    features: np.ndarray | None = None

    @classmethod
    def of(cls, features: np.ndarray | torch.Tensor, keep: int | None = None) -> FeatureStats:
        """Statistics of ``features`` (N, D); keeps all raw features, or a fixed random ``keep`` of them."""
        f = np.asarray(features, dtype=np.float64)
        if len(f) < 2:
            raise ValueError(f"FID needs at least 2 images per set, got {len(f)}")
        kept = f
        if keep is not None and len(f) > keep:
            kept = f[np.sort(np.random.default_rng(0).choice(len(f), keep, replace=False))]
        return cls(f.mean(0), np.cov(f, rowvar=False), len(f), kept.astype(np.float32))


def _sqrt_psd(matrix: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh(matrix)
    return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T


def trace_sqrt_product(a: FeatureStats, b: FeatureStats) -> float:
    """tr sqrt(S_a S_b), exactly, by the cheaper of the two exact forms."""
    full = a.features is not None and b.features is not None and len(a.features) == a.n and len(b.features) == b.n
    d = a.mu.shape[0]
    if full and max(a.n, b.n) < d:
        fa = a.features.astype(np.float64) - a.mu
        fb = b.features.astype(np.float64) - b.mu
        cross = fa @ fb.T / np.sqrt((a.n - 1) * (b.n - 1))
        return float(np.linalg.svd(cross, compute_uv=False).sum())
    root = _sqrt_psd(a.sigma)
    values = np.linalg.eigvalsh(root @ b.sigma @ root)
    return float(np.sqrt(np.clip(values, 0, None)).sum())


def frechet_distance(a: FeatureStats, b: FeatureStats) -> float:
    """FID = |mu_a - mu_b|^2 + tr S_a + tr S_b - 2 tr sqrt(S_a S_b)."""
    if a.mu.shape != b.mu.shape:
        raise ValueError(f"feature sizes differ: {a.mu.shape} vs {b.mu.shape}")
    diff = a.mu - b.mu
    return float(diff @ diff + np.trace(a.sigma) + np.trace(b.sigma) - 2 * trace_sqrt_product(a, b))


def kernel_inception_distance(a: np.ndarray, b: np.ndarray, seed: int = 2020) -> tuple[float, float]:
    """KID (mean, std over subsets) with torch-fidelity's cubic polynomial kernel and defaults."""
    from torch_fidelity.metric_kid import (
        KEY_METRIC_KID_MEAN,
        KEY_METRIC_KID_STD,
        kid_features_to_metric,
    )

    size = min(KID_SUBSET_SIZE, len(a), len(b))
    out = kid_features_to_metric(torch.as_tensor(a), torch.as_tensor(b), kid_subsets=KID_SUBSETS,
                                 kid_subset_size=size, kid_kernel="poly", kid_kernel_poly_degree=3,
                                 kid_kernel_poly_gamma=None, kid_kernel_poly_coef0=1, rng_seed=seed, verbose=False)
    return out[KEY_METRIC_KID_MEAN], out[KEY_METRIC_KID_STD]


def inception_score(logits: np.ndarray | torch.Tensor, splits: int = IS_SPLITS) -> tuple[float, float]:
    """IS (mean, std over ``splits``) from unbiased Inception logits, as torch-fidelity computes it."""
    from torch_fidelity.metric_isc import (
        KEY_METRIC_ISC_MEAN,
        KEY_METRIC_ISC_STD,
        isc_features_to_metric,
    )

    logits = torch.as_tensor(np.asarray(logits))
    out = isc_features_to_metric(logits, splits=max(1, min(splits, len(logits))), shuffle=True, rng_seed=2020)
    return out[KEY_METRIC_ISC_MEAN], out[KEY_METRIC_ISC_STD]


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR (N,) in dB of images in [0, 1]."""
    from torchmetrics.functional.image import peak_signal_noise_ratio

    return peak_signal_noise_ratio(a.float(), b.float(), data_range=1.0, reduction="none", dim=(1, 2, 3))


def ssim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image SSIM (N,) of images in [0, 1] (Gaussian window 11, sigma 1.5)."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    return structural_similarity_index_measure(a.float(), b.float(), data_range=1.0, reduction="none")


def chroma_histogram(images: torch.Tensor, bins: int = 32) -> np.ndarray:
    """The normalised 2-D histogram of the images' chroma (YCbCr Cb, Cr; ``bins`` x ``bins`` over [-0.5, 0.5]) over
    all their pixels, for images in [-1, 1]."""
    rgb = (images.clamp(-1, 1) + 1) / 2
    cb = -0.168736 * rgb[:, 0] - 0.331264 * rgb[:, 1] + 0.5 * rgb[:, 2]
    cr = 0.5 * rgb[:, 0] - 0.418688 * rgb[:, 1] - 0.081312 * rgb[:, 2]
    hist, _, _ = np.histogram2d(cb.flatten().numpy(), cr.flatten().numpy(), bins=bins, range=[[-0.5, 0.5]] * 2)
    return hist / hist.sum()


def chroma_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """L1 distance between two sets' chroma histograms: 0 for the same colours, 2 for disjoint ones. A gray input
    scores high against colour photos; a colorization model should score lower."""
    return float(np.abs(chroma_histogram(a) - chroma_histogram(b)).sum())


def high_frequency_energy(images: torch.Tensor) -> float:
    """Mean square of the images minus their 3x3 box blur: the energy of pixel-scale detail (and of speckle). Divided
    by the truth's, 1 is the truth's texture and well above 1 is speckle."""
    blurred = F.avg_pool2d(F.pad(images, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    return float((images - blurred).square().mean())


MS_SSIM_BETAS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)  # Wang et al. 2003


def ms_ssim_scales(size: int, kernel: int = 11) -> int:
    """How many of the 5 MS-SSIM scales an image of ``size`` pixels allows (the coarsest must exceed the window)."""
    scales = 5
    while scales > 1 and size <= (kernel - 1) * 2 ** (scales - 1):
        scales -= 1
    return scales


def ms_ssim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image MS-SSIM (N,) of images in [0, 1], with as many scales as the size allows (5 from 161 px)."""
    from torchmetrics.functional.image import (
        multiscale_structural_similarity_index_measure,
    )

    scales = ms_ssim_scales(min(a.shape[-2:]))
    betas = tuple(np.array(MS_SSIM_BETAS[:scales]) / sum(MS_SSIM_BETAS[:scales]))
    return multiscale_structural_similarity_index_measure(a.float(), b.float(), data_range=1.0, betas=betas,
                                                          reduction="none", normalize="relu")


def first_to_others(k: int) -> list[tuple[int, int]]:
    """Sample 0 against each other sample: the paper's MS-SSIM diversity pairs."""
    return [(0, j) for j in range(1, k)]


def consecutive(k: int) -> list[tuple[int, int]]:
    """Samples (j, j + 1): the paper's LPIPS diversity pairs (BicycleGAN's protocol)."""
    return [(j, j + 1) for j in range(k - 1)]


def all_pairs(k: int) -> list[tuple[int, int]]:
    """Every unordered pair of samples."""
    return list(combinations(range(k), 2))


# which pairs of an input's K samples each diversity figure averages over
DIVERSITY_PAIRS = {
    "paper": {"lpips": consecutive, "ms-ssim": first_to_others},
    "all-pairs": {"lpips": all_pairs, "ms-ssim": all_pairs},
}
DIVERSITY_DESCRIPTIONS = {
    consecutive: "consecutive samples (k, k+1), as BicycleGAN and the paper",
    first_to_others: "the first sample against each other sample, as the paper",
    all_pairs: "every unordered pair of samples",
}


def mean_over_pairs(samples: torch.Tensor, distance, pairs: list[tuple[int, int]]) -> float:
    """Mean of ``distance`` over ``pairs`` (indices into the K samples (K, C, H, W) of one input)."""
    if not pairs:
        return float("nan")
    i, j = zip(*pairs)
    return float(distance(samples[list(i)], samples[list(j)]).mean())


def pairwise_mean(samples: torch.Tensor, distance) -> float:
    """Mean of ``distance`` over all unordered pairs of the K samples (K, C, H, W) of one input."""
    return mean_over_pairs(samples, distance, all_pairs(len(samples)))
