"""``palette eval`` end to end on a micro model with random-weight backbones: outputs, resume, shards, caching."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from palette import eval_files, evaluate
from palette import protocols
from palette.cli import main
from palette.data import load_image
from palette.errors import ArgumentError, PaletteError
from palette.sampling import load_model


@pytest.fixture(scope="module")
def listing(photo_dir, tmp_path_factory):
    """A list file with labels, as ctest10k has."""
    path = tmp_path_factory.mktemp("list") / "val.txt"
    names = sorted(p.name for p in photo_dir.iterdir())
    path.write_text("".join(f"{photo_dir / n} {i * 10}\n" for i, n in enumerate(names)))
    return path


def _eval(out, trained_run, listing, weights, *extra):
    return main(["eval", "--checkpoint", str(trained_run), "--task", "inpainting", "--data", str(listing), "--out",
                 str(out), "--num-samples", "2", "--steps", "2", "--sampler", "ddim", "--device", "cpu",
                 "--weights-dir", str(weights), "--no-progress", *extra])


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, trained_run, listing, random_weights_dir):
    out = tmp_path_factory.mktemp("eval")
    assert _eval(out, trained_run, listing, random_weights_dir, "--label-space", "imagenet-1k") == 0
    return out


def test_eval_writes_every_metric_a_table_and_a_sheet(evaluated):
    result = json.loads((evaluated / "metrics.json").read_text())
    assert set(result["metrics"]) >= {"fid", "kid", "is", "ca", "pd", "lpips_diversity", "ms-ssim_diversity", "psnr",
                                      "ssim"}
    assert all(np.isfinite(v) for v in result["metrics"].values())
    assert result["num_images"] == 4 and result["condition"] == {"mask": "freeform-20-30"}
    assert set(result["weights"]) == {"inception-v3-compat", "resnet50", "googlenet", "alexnet"}
    table = (evaluated / "table.md").read_text().splitlines()
    assert table[0].startswith("| Model | FID ↓ | IS ↑ | CA ↑ | PD ↓")
    assert len(table) == 3 and "ddim, 2 steps" in table[2]
    assert (evaluated / "sheet.png").is_file()
    assert len(list((evaluated / "samples").glob("*.png"))) == 8


def test_eval_samples_keep_the_known_pixels_of_the_evaluation_image(evaluated, trained_run, listing):
    model = load_model(trained_run, "cpu")
    size = model.config.model.image_size
    items = protocols.folder_or_list(listing).items
    for index, item in enumerate(items):
        original = evaluate.prepare(item.path, size, 3)
        mask = torch.from_numpy(protocols.eval_mask("freeform-20-30", index, size))
        sample = load_image(evaluate.sample_paths(evaluated, item, 1), 3)
        assert torch.allclose(sample[:, ~mask], original[:, ~mask], atol=1 / 255 + 1e-6)


def test_eval_resumes_and_regenerates_only_what_is_missing_identically(evaluated, trained_run, listing,
                                                                       random_weights_dir, tmp_path):
    out = tmp_path / "resumed"
    assert _eval(out, trained_run, listing, random_weights_dir, "--metrics", "psnr", "--batch-invariant") == 0
    victim = evaluate.sample_paths(out, protocols.folder_or_list(listing).items[2], 0)
    before = victim.read_bytes()
    victim.unlink()
    assert _eval(out, trained_run, listing, random_weights_dir, "--metrics", "psnr", "--batch-invariant") == 0
    result = json.loads((out / "metrics.json").read_text())
    assert result["images_sampled_this_run"] == 1
    assert victim.read_bytes() == before


def test_shards_produce_the_same_samples_as_one_process(trained_run, listing, random_weights_dir, tmp_path):
    for shard in ("0/2", "1/2"):
        assert _eval(tmp_path / "shards", trained_run, listing, random_weights_dir, "--shard", shard,
                     "--batch-invariant") == 0
    assert not (tmp_path / "shards" / "metrics.json").exists()  # shards only generate
    assert _eval(tmp_path / "one", trained_run, listing, random_weights_dir, "--metrics", "psnr",
                 "--batch-invariant") == 0
    ours = sorted(p.name for p in (tmp_path / "shards" / "samples").glob("*.png"))
    assert ours == sorted(p.name for p in (tmp_path / "one" / "samples").glob("*.png")) and len(ours) == 8
    for name in ours:
        assert (tmp_path / "shards" / "samples" / name).read_bytes() == \
            (tmp_path / "one" / "samples" / name).read_bytes()


def test_metrics_refuse_to_run_before_every_shard_is_done(trained_run, listing, random_weights_dir, tmp_path):
    assert _eval(tmp_path, trained_run, listing, random_weights_dir, "--shard", "0/2") == 0
    model = load_model(trained_run, "cpu")
    options = evaluate.EvalOptions(task="inpainting", num_samples=2, weights_dir=random_weights_dir)
    with pytest.raises(PaletteError, match="2 of 4 images have fewer than 2 samples"):
        evaluate.compute_metrics(protocols.folder_or_list(listing), options, tmp_path, model.config.model.image_size, 3)


def test_reference_statistics_are_cached_and_checked(evaluated, trained_run, listing, random_weights_dir, tmp_path):
    stats = evaluated / "reference_stats.safetensors"
    assert stats.is_file()
    cached, meta = eval_files.load_stats(stats)
    assert cached.n == 4 and meta["image_size"] == "16"
    first = json.loads((evaluated / "metrics.json").read_text())
    out = tmp_path / "again"
    assert _eval(out, trained_run, listing, random_weights_dir, "--reference-stats", str(stats),
                 "--metrics", "fid") == 0
    assert json.loads((out / "metrics.json").read_text())["metrics"]["fid"] == pytest.approx(first["metrics"]["fid"])

    eval_files.save_stats(tmp_path / "other.safetensors", cached, {**meta, "image_size": 32})
    model = load_model(trained_run, "cpu")
    options = evaluate.EvalOptions(task="inpainting", num_samples=2, weights_dir=random_weights_dir, metrics=("fid",),
                            reference_stats=tmp_path / "other.safetensors")
    with pytest.raises(PaletteError, match="not comparable"):
        evaluate.compute_metrics(protocols.folder_or_list(listing), options, out, model.config.model.image_size, 3)


def test_eval_table_merges_results_in_rows(evaluated, tmp_path, capsys):
    other = json.loads((evaluated / "metrics.json").read_text())
    other["name"] = "regression baseline"
    (tmp_path / "metrics.json").write_text(json.dumps(other))
    assert main(["eval-table", str(evaluated), str(tmp_path / "metrics.json")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4 and lines[3].startswith("| regression baseline |")


@pytest.mark.parametrize("task,condition", [("jpeg", {"quality": 10}), ("colorization", {}), ("sr-x2", {}),
                                            ("uncropping", {"mask": "uncrop-right"})])
def test_eval_runs_for_every_task(task, condition, trained_run, listing, random_weights_dir, tmp_path):
    assert main(["eval", "--checkpoint", str(trained_run), "--task", task, "--data", str(listing), "--out",
                 str(tmp_path), "--steps", "1", "--device", "cpu", "--weights-dir", str(random_weights_dir),
                 "--metrics", "psnr,ssim", "--no-progress"]) == 0
    result = json.loads((tmp_path / "metrics.json").read_text())
    assert result["condition"] == condition and set(result["metrics"]) == {"psnr", "ssim"}


def test_eval_errors_are_clear(trained_run, listing, random_weights_dir, tmp_path, capsys):
    assert _eval(tmp_path, trained_run, listing, random_weights_dir, "--metrics", "fid,bogus") == 2
    assert "--metrics: unknown bogus" in capsys.readouterr().err
    assert _eval(tmp_path, trained_run, listing, tmp_path / "no-weights", "--metrics", "fid") == 2
    err = capsys.readouterr().err
    assert f"--weights-dir {tmp_path / 'no-weights'}: the inception-v3-compat weights are missing" in err
    assert "palette weights download inception-v3-compat" in err
    assert _eval(tmp_path, trained_run, listing, random_weights_dir, "--shard", "2/2") == 2
    assert "--shard 2/2" in capsys.readouterr().err


def test_a_mask_file_needs_its_category():
    options = evaluate.EvalOptions(task="inpainting", mask_file=Path("masks.npz"))
    with pytest.raises(ArgumentError) as err:
        evaluate.MaskSource(options, 16, 1)
    assert err.value.argument == "mask_category" and "--" not in str(err.value)


def test_a_reference_with_missing_images_is_refused_naming_the_reference(evaluated, trained_run, listing, photo_dir,
                                                                         random_weights_dir, tmp_path):
    reference = tmp_path / "reference.txt"
    reference.write_text(f"{photo_dir / 'coffee.png'}\n{tmp_path / 'gone.png'}\n")
    options = evaluate.EvalOptions(task="inpainting", num_samples=2, weights_dir=random_weights_dir, metrics=("fid",),
                                   reference=reference)
    size = load_model(trained_run, "cpu").config.model.image_size
    with pytest.raises(ArgumentError, match="1 of 2 images of the FID reference are missing") as err:
        evaluate.compute_metrics(protocols.folder_or_list(listing), options, evaluated, size, 3, progress=False)
    assert err.value.argument == "reference" and str(reference) in str(err.value)


@pytest.mark.parametrize("task", ["colorization", "sr-x4", "deblurring", "denoising", "jpeg"])
def test_eval_inputs_are_degraded_the_same_way_in_every_run(task):
    original = torch.rand(3, 32, 32)
    options = evaluate.EvalOptions(task=task)
    first = evaluate.eval_condition(task, original, 5, options, None)
    again = evaluate.eval_condition(task, original, 5, options, None)
    other = evaluate.eval_condition(task, original, 6, options, None)
    assert torch.equal(first.x, again.x)
    assert (first.x - (original * 2 - 1)).abs().mean() > 1e-3  # x is not the clean image
    if task in ("deblurring", "denoising"):  # parameters drawn per image index
        assert not torch.equal(first.x, other.x)


def test_classification_accuracy_is_absent_with_the_reason_when_the_labels_are_not_imagenets(
        trained_run, listing, random_weights_dir, tmp_path):
    assert _eval(tmp_path, trained_run, listing, random_weights_dir, "--metrics", "ca,psnr") == 0
    result = json.loads((tmp_path / "metrics.json").read_text())
    assert set(result["metrics"]) == {"psnr"}
    assert "not known to be ImageNet-1k" in result["absent_metrics"]["ca"]


def test_diversity_defaults_to_the_papers_pairs_and_says_so(trained_run, listing, random_weights_dir, tmp_path):
    """With K = 3 samples the paper's MS-SSIM pairs (0, 1), (0, 2) and all pairs, with (1, 2) too, differ."""
    from palette import metrics as image_metrics

    for diversity, pairs in (("paper", [(0, 1), (0, 2)]), ("all-pairs", [(0, 1), (0, 2), (1, 2)])):
        out = tmp_path / diversity
        assert _eval(out, trained_run, listing, random_weights_dir, "--num-samples", "3", "--metrics", "ms-ssim",
                     "--diversity", diversity, "--batch-invariant") == 0
        result = json.loads((out / "metrics.json").read_text())
        expected = []
        for item in protocols.folder_or_list(listing).items:
            samples = [load_image(evaluate.sample_paths(out, item, k), 3)[None] for k in range(3)]
            expected.append(np.mean([float(image_metrics.ms_ssim(samples[i], samples[j])) for i, j in pairs]))
        assert result["metrics"]["ms-ssim_diversity"] == pytest.approx(np.mean(expected), rel=1e-5)
        assert result["diversity"]["pairs"] == diversity
        assert result["diversity"]["ms-ssim"] == image_metrics.DIVERSITY_DESCRIPTIONS[image_metrics.DIVERSITY_PAIRS[diversity]["ms-ssim"]]


def test_a_protocols_own_reference_set_is_the_fid_reference_and_its_statistics_are_cached(
        evaluated, trained_run, listing, photo_dir, random_weights_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("PALETTE_CACHE_DIR", str(tmp_path / "cache"))
    model = load_model(trained_run, "cpu")
    reference = [protocols.EvalItem(p.stem, p) for p in sorted(photo_dir.iterdir())[:3]]
    eval_set = protocols.EvalSet("toy", protocols.folder_or_list(listing).items, reference, reference_name="three photos")
    options = evaluate.EvalOptions(task="inpainting", num_samples=2, weights_dir=random_weights_dir, metrics=("fid",))
    first = evaluate.compute_metrics(eval_set, options, evaluated, model.config.model.image_size, 3, progress=False)
    again = evaluate.compute_metrics(eval_set, options, evaluated, model.config.model.image_size, 3, progress=False)
    assert first["reference"]["source"] == "three photos" and first["reference"]["n"] == 3
    cache = Path(first["reference"]["statistics"])
    assert cache.parent == tmp_path / "cache" / "reference-stats" and cache.is_file()
    assert not first["reference"]["statistics_read_from_file"] and again["reference"]["statistics_read_from_file"]
    assert again["metrics"]["fid"] == pytest.approx(first["metrics"]["fid"])
    own = json.loads((evaluated / "metrics.json").read_text())  # the evaluated originals as the reference
    assert own["reference"]["n"] == 4 and first["metrics"]["fid"] != pytest.approx(own["metrics"]["fid"])


def test_an_older_manifest_with_the_configs_eta_for_another_sampler_still_resumes(tmp_path):
    """Manifests once recorded diffusion.eta whatever the sampler; only DDIM draws with it, and now records it alone."""
    from palette.eval_files import check_manifest

    (tmp_path / "samples").mkdir()
    older = {"sampler": "ancestral", "steps": 4, "eta": 0.5, "guidance": 0.0}
    (tmp_path / "samples" / "manifest.json").write_text(json.dumps(older))
    assert check_manifest(tmp_path, {**older, "eta": 0.0}) is None
    ddim = tmp_path / "ddim"
    (ddim / "samples").mkdir(parents=True)
    (ddim / "samples" / "manifest.json").write_text(json.dumps({**older, "sampler": "ddim"}))
    assert "eta 0.5 there, 0.0 now" in check_manifest(ddim, {**older, "sampler": "ddim", "eta": 0.0})
