"""Metrics against the reference libraries and closed forms, with randomly initialised backbones (no download)."""

import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from palette import metrics as image_metrics
from palette import weights as metric_weights
from palette.errors import PaletteError


def _images(n: int, seed: int, size: int = 32) -> torch.Tensor:
    """``n`` smooth random RGB images (N, 3, size, size) in [0, 1], exactly representable in 8 bits."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, 6, 6, generator=g)
    return (F.interpolate(coarse, size=size, mode="bicubic", align_corners=False).clamp(0, 1) * 255).round() / 255


def _write(images: torch.Tensor, folder):
    folder.mkdir()
    for i, img in enumerate(images):
        Image.fromarray((img * 255).round().byte().permute(1, 2, 0).numpy()).save(folder / f"{i:03d}.png")
    return folder


@pytest.fixture(scope="module")
def backbones(random_weights_dir):
    return image_metrics.Backbones(random_weights_dir)


@pytest.mark.slow  # Inception-v3 through two libraries: 100 s on a 2-core CPU
def test_fid_kid_is_equal_torch_fidelity_and_torchmetrics(tmp_path, random_weights_dir, backbones):
    import torch_fidelity
    from torchmetrics.image.fid import FrechetInceptionDistance

    a, b = _images(24, 0), _images(24, 1)
    a_dir, b_dir = _write(a, tmp_path / "a"), _write(b, tmp_path / "b")
    weights_file = str(random_weights_dir / metric_weights.WEIGHTS["inception-v3-compat"].filename)
    pool_a, logits_a = backbones.inception(a)
    pool_b, _ = backbones.inception(b)
    ours = image_metrics.frechet_distance(image_metrics.FeatureStats.of(pool_a), image_metrics.FeatureStats.of(pool_b))

    reference = torch_fidelity.calculate_metrics(
        input1=str(a_dir), input2=str(b_dir), fid=True, kid=True, isc=True, kid_subset_size=24, cuda=False,
        verbose=False, cache=False, feature_extractor_weights_path=weights_file)
    # torchmetrics resizes with antialiasing by default, unlike the TensorFlow FID; antialias=False is the standard
    fid_tm = FrechetInceptionDistance(feature=2048, feature_extractor_weights_path=weights_file, antialias=False)
    fid_tm.update((a * 255).round().byte(), real=False)
    fid_tm.update((b * 255).round().byte(), real=True)
    assert ours > 0
    assert ours == pytest.approx(reference["frechet_inception_distance"], rel=1e-3)
    assert ours == pytest.approx(float(fid_tm.compute()), rel=1e-3)

    kid, _ = image_metrics.kernel_inception_distance(pool_a.numpy(), pool_b.numpy())
    assert kid == pytest.approx(reference["kernel_inception_distance_mean"], rel=1e-3, abs=1e-9)
    inception_score, _ = image_metrics.inception_score(logits_a)
    assert inception_score == pytest.approx(reference["inception_score_mean"], rel=1e-3)


@pytest.mark.slow  # Inception-v3 features: 40 s
def test_fid_is_zero_for_a_set_against_itself_and_grows_with_a_shift(backbones):
    images = _images(16, 2)
    base = image_metrics.FeatureStats.of(backbones.inception(images)[0])
    fids = []
    for shift in (0.0, 0.1, 0.2, 0.4):
        shifted = image_metrics.FeatureStats.of(backbones.inception((images + shift).clamp(0, 1))[0])
        fids.append(image_metrics.frechet_distance(base, shifted))
    assert abs(fids[0]) < 1e-6 * max(fids)
    assert all(later > earlier for earlier, later in zip(fids, fids[1:])), fids


@pytest.mark.parametrize("n", [5, 40])  # fewer and more samples than the 16 feature dimensions
def test_both_exact_fid_forms_equal_scipy_sqrtm(n):
    from scipy.linalg import sqrtm

    rng = np.random.default_rng(n)
    a = image_metrics.FeatureStats.of(rng.standard_normal((n, 16)) @ rng.standard_normal((16, 16)))
    b = image_metrics.FeatureStats.of(rng.standard_normal((n + 3, 16)) + 0.5)
    covmean = sqrtm(a.sigma @ b.sigma).real
    diff = a.mu - b.mu
    expected = diff @ diff + np.trace(a.sigma) + np.trace(b.sigma) - 2 * np.trace(covmean)
    eigen_form = image_metrics.frechet_distance(image_metrics.FeatureStats(a.mu, a.sigma, a.n), image_metrics.FeatureStats(b.mu, b.sigma, b.n))
    assert image_metrics.frechet_distance(a, b) == pytest.approx(expected, rel=1e-6)
    assert eigen_form == pytest.approx(expected, rel=1e-6)


@pytest.mark.slow  # ResNet-50 at full size: 18 s
def test_classification_accuracy_of_a_classifier_right_by_construction_is_100(tmp_path, random_weights_dir):
    """A ResNet-50 whose last layer solves (features -> one-hot label) exactly classifies its images right."""
    import shutil

    import torchvision

    for name in metric_weights.WEIGHTS:
        shutil.copy(random_weights_dir / metric_weights.WEIGHTS[name].filename, tmp_path)
    images = _images(12, 3)
    labels = torch.tensor([7, 400, 999, 0, 7, 123, 55, 812, 3, 640, 271, 18])
    net = torchvision.models.resnet50(weights=None)
    net.load_state_dict(torch.load(tmp_path / metric_weights.WEIGHTS["resnet50"].filename, weights_only=True))
    net.fc = torch.nn.Identity()
    with torch.no_grad():
        features = net.eval()(image_metrics.imagenet_preprocess(images)).double()
    targets = F.one_hot(labels, 1000).double() * 10
    solution = torch.linalg.lstsq(torch.cat([features, torch.ones(12, 1, dtype=torch.float64)], 1), targets).solution
    state = torch.load(tmp_path / metric_weights.WEIGHTS["resnet50"].filename, weights_only=True)
    state["fc.weight"], state["fc.bias"] = solution[:-1].T.float().contiguous(), solution[-1].float().contiguous()
    torch.save(state, tmp_path / metric_weights.WEIGHTS["resnet50"].filename)

    predicted = image_metrics.Backbones(tmp_path).classify(images).argmax(1)
    assert (predicted == labels).float().mean() == 1.0
    assert (predicted == labels.roll(1)).float().mean() < 0.2


def test_lpips_diversity_is_zero_for_identical_samples_and_grows_with_noise(backbones):
    sample = _images(1, 4, size=64)[0]
    g = torch.Generator().manual_seed(0)
    diversities = []
    for sigma in (0.0, 0.05, 0.2):
        samples = torch.stack([(sample + sigma * torch.randn(sample.shape, generator=g)).clamp(0, 1)
                               for _ in range(3)])
        diversities.append(image_metrics.pairwise_mean(samples, backbones.lpips))
    assert diversities[0] == pytest.approx(0.0, abs=1e-6)
    assert diversities[0] < diversities[1] < diversities[2]


def test_ms_ssim_diversity_is_one_for_identical_samples_and_drops_with_noise():
    sample = _images(1, 5, size=64)[0]
    same = image_metrics.pairwise_mean(torch.stack([sample] * 3), image_metrics.ms_ssim)
    noisy = image_metrics.pairwise_mean(torch.stack([(sample + 0.2 * torch.randn_like(sample)).clamp(0, 1) for _ in range(3)]),
                             image_metrics.ms_ssim)
    assert same == pytest.approx(1.0, abs=1e-5)
    assert noisy < 0.9
    assert image_metrics.ms_ssim_scales(256) == 5 and image_metrics.ms_ssim_scales(64) == 3 and image_metrics.ms_ssim_scales(16) == 1


def test_psnr_and_ssim_closed_forms():
    image = _images(2, 6)
    offset = 0.05
    shifted = image.clone()
    shifted[image < 0.5] += offset
    shifted[image >= 0.5] -= offset
    expected = 10 * np.log10(1 / offset**2)
    assert image_metrics.psnr(shifted, image).tolist() == pytest.approx([expected] * 2, rel=1e-4)
    assert image_metrics.ssim(image, image).tolist() == pytest.approx([1.0, 1.0], abs=1e-6)


def test_missing_weights_name_the_file_checksum_and_command(tmp_path):
    with pytest.raises(PaletteError) as err:
        image_metrics.Backbones(tmp_path).inception(_images(1, 0))
    message = str(err.value)
    spec = metric_weights.WEIGHTS["inception-v3-compat"]
    assert spec.filename in message and spec.sha256_prefix in message and "palette weights download" in message


class _Payload:
    def __reduce__(self):
        return (print, ("code ran",))


def test_weights_with_pickled_code_are_refused(tmp_path):
    with open(tmp_path / metric_weights.WEIGHTS["resnet50"].filename, "wb") as f:
        pickle.dump({"fc.weight": _Payload()}, f)
    with pytest.raises(PaletteError, match="cannot be read as resnet50 weights"):
        metric_weights.load_state_dict("resnet50", tmp_path)


def test_weights_download_checks_the_digest_and_leaves_nothing_behind_on_a_mismatch(tmp_path, monkeypatch):
    import dataclasses

    source = tmp_path / "served.pth"
    torch.save({"w": torch.ones(3)}, source)
    digest = metric_weights.sha256(source)
    good = dataclasses.replace(metric_weights.WEIGHTS["alexnet"], url=source.as_uri(), sha256_prefix=digest[:8])
    monkeypatch.setitem(metric_weights.WEIGHTS, "alexnet", good)
    target = metric_weights.download("alexnet", tmp_path / "weights", progress=False)
    assert target.read_bytes() == source.read_bytes() and metric_weights.find("alexnet", tmp_path / "weights") == target

    monkeypatch.setitem(metric_weights.WEIGHTS, "resnet50", dataclasses.replace(good, filename="resnet50-0676ba61.pth",
                                                                    sha256_prefix="00000000"))
    with pytest.raises(PaletteError, match="not 00000000"):
        metric_weights.download("resnet50", tmp_path / "weights", progress=False)
    assert sorted(p.name for p in (tmp_path / "weights").iterdir()) == [metric_weights.WEIGHTS["alexnet"].filename]


def test_diversity_pairs_are_the_papers_or_all_pairs():
    assert image_metrics.consecutive(4) == [(0, 1), (1, 2), (2, 3)]  # LPIPS, as BicycleGAN
    assert image_metrics.first_to_others(4) == [(0, 1), (0, 2), (0, 3)]  # MS-SSIM
    assert sorted(image_metrics.all_pairs(4)) == [(i, j) for i in range(4) for j in range(i + 1, 4)]
    assert image_metrics.DIVERSITY_PAIRS["paper"] == {"lpips": image_metrics.consecutive, "ms-ssim": image_metrics.first_to_others}
    assert image_metrics.consecutive(1) == image_metrics.first_to_others(1) == image_metrics.all_pairs(1) == []


def test_mean_over_pairs_averages_the_distance_over_the_given_pairs():
    values = [0.0, 1.0, 3.0, 6.0]
    samples = torch.tensor(values).view(4, 1, 1, 1).expand(4, 3, 2, 2)

    def distance(a, b):
        return (a - b).abs().flatten(1).mean(1)

    for pairs in (image_metrics.consecutive(4), image_metrics.first_to_others(4), image_metrics.all_pairs(4)):
        expected = np.mean([abs(values[i] - values[j]) for i, j in pairs])
        assert image_metrics.mean_over_pairs(samples, distance, pairs) == pytest.approx(expected)
    assert image_metrics.mean_over_pairs(samples, distance, image_metrics.consecutive(4)) != image_metrics.pairwise_mean(samples, distance)
