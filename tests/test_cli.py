"""The command line: every command, its outputs, and the errors a user gets instead of a traceback."""

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from palette.cli import main

from conftest import MICRO, sheet_size

MICRO_FLAGS = [o for o in MICRO if not o.startswith("model.image_size")]


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_presets_table_lists_the_paper_network(capsys):
    code, out, _ = run(capsys, "presets")
    assert code == 0
    paper = next(line for line in out.splitlines() if line.startswith("paper"))
    assert "552.8M" in paper and "256x256" in paper and "32,16,8" in paper and "256 x (1,1,2,2,4,4)" in paper
    assert all(name in out for name in ("tiny", "small", "base"))


@pytest.mark.integration
def test_the_console_script_is_installed(capsys, monkeypatch):
    import sysconfig
    from importlib.metadata import entry_points
    from pathlib import Path

    (entry,) = entry_points(group="console_scripts", name="palette")
    assert entry.value == "palette.cli:main"
    script = Path(sysconfig.get_path("scripts")) / "palette"  # beside this interpreter, in the same environment
    monkeypatch.setenv("COLUMNS", "100")  # argparse wraps the help to the terminal's width: the same in both
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=300)
    with pytest.raises(SystemExit):
        main(["--help"])
    assert result.returncode == 0 and result.stdout == capsys.readouterr().out  # the installed script runs main
    assert result.stdout.startswith("usage: palette ")


def test_train_then_resume_then_sample_every_task(capsys, tmp_path, photo_dir):
    run_dir = tmp_path / "run"
    code, out, _ = run(capsys, "train", "--task", "multi", "--data", photo_dir, "--out", run_dir, "--preset", "tiny",
                       "--image-size", 16, "--steps", 2, "--no-progress", *MICRO_FLAGS,
                       "task.tasks=colorization,inpainting,uncropping,jpeg")
    assert code == 0 and "step-000000002" in out
    code, out, _ = run(capsys, "train", "--out", run_dir, "--resume", "--steps", 3, "--no-progress")
    assert code == 0 and "step-000000003" in out

    photo = photo_dir / "coffee.png"
    w, h = Image.open(photo).size
    Image.open(photo).convert("RGB").save(tmp_path / "coffee.jpg", quality=10)
    cases = {
        "colorization": ["--input", photo],
        "inpainting": ["--input", photo, "--mask", "center"],
        "uncropping": ["--input", photo, "--side", "left"],
        "jpeg": ["--input", tmp_path / "coffee.jpg"],
    }
    for task, extra in cases.items():
        out_dir = tmp_path / task
        code, _, err = run(capsys, "sample", "--checkpoint", run_dir, "--task", task, *extra, "--num-samples", 2,
                           "--steps", 3, "--out", out_dir, "--no-progress")
        assert code == 0, err
        names = sorted(p.name for p in out_dir.iterdir())
        assert names == ["coffee_0.png", "coffee_1.png", "coffee_input.png"]
        assert all(Image.open(out_dir / n).size == (w, h) for n in names)
    original = np.asarray(Image.open(photo).convert("RGB"))
    centre_kept, left_generated = np.ones((h, w), bool), np.ones((h, w), bool)
    centre_kept[h // 4 : h // 4 + h // 2, w // 4 : w // 4 + w // 2] = False
    left_generated[:, : w // 2] = False
    for task, keep in (("inpainting", centre_kept), ("uncropping", left_generated)):
        sample = np.asarray(Image.open(tmp_path / task / "coffee_0.png"))
        assert np.array_equal(sample[keep], original[keep])  # known pixels are the input's, exactly


def test_sample_is_reproducible_with_a_seed_and_varies_without(capsys, tmp_path, trained_run, photo_dir):
    outs = []
    for seed, name in ((1, "a"), (1, "b"), (2, "c")):
        code, _, _ = run(capsys, "sample", "--checkpoint", trained_run, "--task", "inpainting", "--input",
                         photo_dir / "rocket.png", "--mask", "freeform-20-30", "--steps", 3, "--seed", seed,
                         "--out", tmp_path / name, "--no-progress")
        assert code == 0
        outs.append(np.asarray(Image.open(tmp_path / name / "rocket_0.png")))
    assert np.array_equal(outs[0], outs[1]) and not np.array_equal(outs[0], outs[2])


def test_a_mask_file_white_means_fill(capsys, tmp_path, trained_run, photo_dir):
    photo = photo_dir / "chelsea.png"
    w, h = Image.open(photo).size
    mask = np.zeros((h, w), np.uint8)
    mask[5:15, 10:30] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    code, _, err = run(capsys, "sample", "--checkpoint", trained_run, "--task", "inpainting", "--input", photo,
                       "--mask", tmp_path / "mask.png", "--steps", 2, "--out", tmp_path / "o", "--no-progress")
    assert code == 0, err
    out = np.asarray(Image.open(tmp_path / "o" / "chelsea_0.png"))
    original = np.asarray(Image.open(photo).convert("RGB"))
    assert np.array_equal(out[mask == 0], original[mask == 0])


def _expect_error(capsys, argv, *phrases):
    code, _, err = run(capsys, *argv)
    assert code == 2, err
    for phrase in phrases:
        assert phrase in err, err
    assert "Traceback" not in err


def test_errors_name_the_flag_and_what_to_do(capsys, tmp_path, trained_run, photo_dir):
    photo = photo_dir / "coffee.png"
    empty = tmp_path / "empty"
    empty.mkdir()
    _expect_error(capsys, ["train", "--task", "jpeg", "--data", tmp_path / "nowhere", "--out", tmp_path / "r"],
                  "--data", "no such file")
    _expect_error(capsys, ["train", "--task", "jpeg", "--data", empty, "--out", tmp_path / "r"],
                  "--data", "holds no images")
    _expect_error(capsys, ["train", "--task", "jpeg", "--data", photo_dir, "--out", tmp_path / "r", "--preset", "huge"],
                  "unknown preset 'huge'")
    _expect_error(capsys, ["train", "--out", trained_run, "--resume", "--image-size", 32, "--no-progress"],
                  "image size 16", "--image-size")
    _expect_error(capsys, ["sample", "--checkpoint", trained_run, "--task", "inpainting", "--input", photo,
                           "--num-samples", 0, "--out", tmp_path / "o"], "--num-samples")
    _expect_error(capsys, ["sample", "--checkpoint", tmp_path / "nowhere", "--task", "jpeg", "--input", photo,
                           "--out", tmp_path / "o"], "--checkpoint", "no such file")
    _expect_error(capsys, ["sample", "--checkpoint", trained_run, "--task", "inpainting", "--input", photo,
                           "--out", tmp_path / "o"], "--mask")
    _expect_error(capsys, ["sample", "--checkpoint", trained_run, "--task", "inpainting", "--input", photo,
                           "--mask", "blob", "--out", tmp_path / "o"], "--mask blob")
    _expect_error(capsys, ["sample", "--checkpoint", trained_run, "--task", "jpeg", "--input", photo,
                           "--steps", 5000, "--out", tmp_path / "o"], "--steps")
    Image.fromarray(np.zeros((3, 3), np.uint8)).save(tmp_path / "small_mask.png")
    _expect_error(capsys, ["sample", "--checkpoint", trained_run, "--task", "inpainting", "--input", photo,
                           "--mask", tmp_path / "small_mask.png", "--out", tmp_path / "o"],
                  "small_mask.png is 3x3 but the image is 48x40")


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has a GPU")
def test_asking_for_an_absent_gpu_is_an_error(capsys, tmp_path, photo_dir):
    _expect_error(capsys, ["train", "--task", "jpeg", "--data", photo_dir, "--out", tmp_path / "r",
                           "--device", "cuda:0", "--preset", "tiny"], "--device cuda:0", "no CUDA GPU")
    _expect_error(capsys, ["sample", "--checkpoint", tmp_path, "--task", "jpeg", "--input", photo_dir,
                           "--device", "cuda", "--out", tmp_path / "o"], "--device cuda", "no CUDA GPU")


def test_unknown_task_is_refused_by_the_parser(capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--task", "deblur", "--data", str(tmp_path), "--out", str(tmp_path)])
    assert exit_info.value.code == 2 and "invalid choice: 'deblur'" in capsys.readouterr().err


def test_a_checkpoint_for_another_task_is_refused(capsys, tmp_path, photo_dir):
    run_dir = tmp_path / "jpeg_run"
    code, _, _ = run(capsys, "train", "--task", "jpeg", "--data", photo_dir, "--out", run_dir, "--preset", "tiny",
                     "--image-size", 16, "--steps", 1, "--no-progress", *MICRO_FLAGS)
    assert code == 0
    _expect_error(capsys, ["sample", "--checkpoint", run_dir, "--task", "colorization", "--input",
                           photo_dir / "coffee.png", "--out", tmp_path / "o"], "trained for jpeg", "colorization")


def test_a_non_binary_mask_is_thresholded_with_a_warning(capsys, tmp_path, trained_run, photo_dir, caplog):
    photo = photo_dir / "coffee.png"
    w, h = Image.open(photo).size
    ramp = np.tile(np.linspace(0, 255, w).astype(np.uint8), (h, 1))
    Image.fromarray(ramp).save(tmp_path / "ramp.png")
    code, _, _ = run(capsys, "sample", "--checkpoint", trained_run, "--task", "inpainting", "--input", photo,
                     "--mask", tmp_path / "ramp.png", "--steps", 2, "--out", tmp_path / "o", "--no-progress")
    assert code == 0 and "not binary" in caplog.text and "ramp.png" in caplog.text
    out = np.asarray(Image.open(tmp_path / "o" / "coffee_0.png"))
    original = np.asarray(Image.open(photo).convert("RGB"))
    assert np.array_equal(out[ramp < 128], original[ramp < 128])


def test_demo_writes_one_sheet_per_task(capsys, tmp_path):
    code, out, err = run(capsys, "demo", "--out", tmp_path, "--steps", 2, "--sample-steps", 2, "--num-samples", 2,
                         "--no-progress", "model.base_channels=16", "train.batch_size=4", "data.num_workers=0")
    assert code == 0, err
    for task in ("colorization", "inpainting", "uncropping", "jpeg"):  # input | 2 samples | truth, 4 crops
        assert Image.open(tmp_path / f"sheet_{task}.png").size == sheet_size(columns=4, rows=4)
    assert len(list((tmp_path / "photos" / "train").glob("*.png"))) == 8
    assert len(list((tmp_path / "photos" / "held_out").glob("*.png"))) == 2


def test_demo_samples_the_packaged_model_without_training(capsys, tmp_path, caplog):
    code, out, err = run(capsys, "demo", "--out", tmp_path, "--sample-steps", 2, "--num-samples", 1, "--no-progress")
    assert code == 0, err
    assert out.split() == [str(tmp_path / f"sheet_{t}.png") for t in ("colorization", "inpainting", "uncropping",
                                                                       "jpeg")]
    for task in ("colorization", "inpainting", "uncropping", "jpeg"):  # input | 1 sample | truth, 4 crops
        assert Image.open(tmp_path / f"sheet_{task}.png").size == sheet_size(columns=3, rows=4)
    assert not (tmp_path / "run").exists() and "the packaged model palette:demo" in caplog.text


def test_demo_without_train_refuses_what_only_training_can_do(capsys, tmp_path):
    code, _, err = run(capsys, "demo", "--out", tmp_path, "model.base_channels=16", "--no-progress")
    assert code == 2 and "model.base_channels=16" in err and "--train" in err
    code, _, err = run(capsys, "demo", "--out", tmp_path, "--tasks", "sr-x4", "--no-progress")
    assert code == 2 and "--tasks sr-x4" in err and "--train" in err
    assert not list(tmp_path.iterdir())  # refused before anything is written


@pytest.mark.parametrize("argv,expected", [([], "palette:demo"), (["--checkpoint", "my-run"], "my-run"),
                                           (["--allow-load", "runs"], None)])
def test_serve_defaults_to_the_packaged_model_only_without_a_model_or_a_folder(capsys, monkeypatch, argv, expected):
    import palette.webapp

    served = {}
    monkeypatch.setattr(palette.webapp, "serve", lambda checkpoint, **kw: served.update(checkpoint=checkpoint))
    assert run(capsys, "serve", *argv)[0] == 0
    assert served == {"checkpoint": expected}


@pytest.mark.parametrize("modules,package", [(("skimage", "skimage.data"), "scikit-image"),
                                             (("sklearn", "sklearn.datasets"), "scikit-learn")])
def test_demo_without_its_extra_says_what_to_install(capsys, tmp_path, monkeypatch, modules, package):
    for module in modules:  # as if not installed: importing it raises ImportError
        monkeypatch.setitem(sys.modules, module, None)
    code, _, err = run(capsys, "demo", "--out", tmp_path, "--steps", 1, "--sample-steps", 1, "--num-samples", 1,
                       "--no-progress")
    assert code == 2 and "Traceback" not in err
    assert err == (f"palette demo: error: the demo's photos ship inside the wheels of the demo extra, and {package} is "
                   "not installed: pip install 'palette-diffusion[demo]' (in a clone: pip install -e '.[demo]')\n")
    assert not (tmp_path / "run").exists()  # refused before training


def test_demo_trains_the_tasks_it_is_given_and_names_a_bad_one(capsys, tmp_path):
    code, _, err = run(capsys, "demo", "--out", tmp_path, "--tasks", "sr-x4,denoising", "--steps", 1,
                         "--sample-steps", 2, "--num-samples", 1, "--no-progress", "model.base_channels=16",
                         "train.batch_size=4", "data.num_workers=0")
    assert code == 0, err
    assert sorted(p.name for p in tmp_path.glob("sheet_*.png")) == ["sheet_denoising.png", "sheet_sr-x4.png"]
    from palette.config import Config

    assert Config.load(tmp_path / "run" / "config.yaml").task.tasks == ("sr-x4", "denoising")
    code, _, err = run(capsys, "demo", "--out", tmp_path / "bad", "--tasks", "sr-x3", "--no-progress")
    assert code == 2 and "--tasks sr-x3" in err and "sr-x4" in err


@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_colorization_takes_gray_or_colour_files_and_uses_the_luma(capsys, tmp_path, trained_run, photo_dir, mode):
    source = tmp_path / f"in_{mode}.png"
    Image.open(photo_dir / "astronaut.png").convert(mode).save(source)
    code, _, err = run(capsys, "sample", "--checkpoint", trained_run, "--task", "colorization", "--input", source,
                       "--steps", 2, "--out", tmp_path / mode, "--no-progress")
    assert code == 0, err
    shown = np.asarray(Image.open(tmp_path / mode / f"in_{mode}_input.png").convert("RGB")).astype(int)
    assert np.abs(shown[..., 0] - shown[..., 1]).max() <= 1 and np.abs(shown[..., 1] - shown[..., 2]).max() <= 1
    assert np.asarray(Image.open(tmp_path / mode / f"in_{mode}_0.png")).shape[2] == 3


@pytest.mark.parametrize("sampler", ["ddim", "dpmpp-2m", "unipc"])
def test_sample_with_a_fast_sampler_and_the_denoising_strip(capsys, tmp_path, trained_run, photo_dir, sampler):
    code, _, err = run(capsys, "sample", "--checkpoint", trained_run, "--task", "uncropping", "--input",
                       photo_dir / "rocket.png", "--sampler", sampler, "--steps", 4, "--save-process", 3,
                       "--schedule", "training", "--out", tmp_path, "--no-progress")
    assert code == 0, err
    w, h = Image.open(photo_dir / "rocket.png").size
    strip = Image.open(tmp_path / "rocket_0_process.png")
    assert strip.size == (3 * 16, 16)  # three y0 estimates at the model's size
    assert Image.open(tmp_path / "rocket_0.png").size == (w, h)


def test_bad_sampling_flags_are_clear_errors(capsys, tmp_path, trained_run, photo_dir):
    _expect_error(capsys, ["sample", "--checkpoint", trained_run, "--task", "jpeg", "--input", photo_dir / "coffee.png",
                           "--steps", 0, "--out", tmp_path], "--steps must be between 1 and 1000")
    _expect_error(capsys, ["sample", "--checkpoint", trained_run, "--task", "jpeg", "--input", photo_dir / "coffee.png",
                           "--steps", 2001, "--schedule", "training", "--out", tmp_path],
                  "--steps must be between 1 and 2000")
    with pytest.raises(SystemExit):
        main(["sample", "--checkpoint", str(trained_run), "--task", "jpeg", "--input", str(photo_dir),
              "--sampler", "euler", "--out", str(tmp_path)])
    assert "invalid choice: 'euler'" in capsys.readouterr().err


def test_batch_invariant_sampling_of_a_folder_matches_each_file_alone(capsys, tmp_path, trained_run, photo_dir):
    common = ["--task", "jpeg", "--steps", 3, "--sampler", "dpmpp-2m-sde", "--batch-invariant", "--no-progress",
              "--checkpoint", trained_run]
    assert run(capsys, "sample", "--input", photo_dir, "--out", tmp_path / "all", *common)[0] == 0
    assert run(capsys, "sample", "--input", photo_dir / "rocket.png", "--out", tmp_path / "one", *common)[0] == 0
    together = np.asarray(Image.open(tmp_path / "all" / "rocket_0.png"))
    alone = np.asarray(Image.open(tmp_path / "one" / "rocket_0.png"))
    assert np.array_equal(together, alone)


@pytest.mark.parametrize("task,scale", [("sr-x2", 2), ("sr-x4", 4), ("deblurring", 1), ("denoising", 1)])
def test_restoration_tasks_write_outputs_scaled_by_their_factor(capsys, tmp_path, trained_run, photo_dir, task, scale):
    small = tmp_path / "small.png"
    Image.open(photo_dir / "rocket.png").resize((12, 10)).save(small)
    code, _, err = run(capsys, "sample", "--checkpoint", trained_run, "--task", task, "--input", small, "--steps", 2,
                       "--sampler", "ddim", "--out", tmp_path / "o", "--no-progress")
    assert code == 0, err
    assert Image.open(tmp_path / "o" / "small_0.png").size == (12 * scale, 10 * scale)
    assert Image.open(tmp_path / "o" / "small_input.png").size == (12 * scale, 10 * scale)  # what the model saw
