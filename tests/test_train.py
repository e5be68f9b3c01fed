"""Training: exact resume, NaN stop, warm-up, EMA, logs, an overfit check of the whole pipeline, and failures that end
the process (loader workers included) with the last checkpoint intact."""

import math
import os

import numpy as np
import pytest
import torch
from PIL import Image

from palette import checkpoint as ckpt, run_folder
from palette.errors import ArgumentError, PaletteError
from palette.model import PaletteModel
from palette.train import Trainer, train
from palette.training_schedule import ema_decay, learning_rate

from conftest import micro_config, sheet_size


def _params(run):
    tensors, _ = ckpt.read_weights(ckpt.resolve_weights(run, use_ema=False))
    ema, _ = ckpt.read_weights(ckpt.resolve_weights(run, use_ema=True))
    return tensors, ema


@pytest.mark.parametrize("task", ["inpainting", "multi"])
def test_resume_repeats_an_uninterrupted_run(tmp_path, photo_dir, task):
    config = micro_config(f"data.path={photo_dir}", f"task.name={task}", "train.steps=6", "model.dropout=0.1")
    train(config, tmp_path / "straight", progress=False)
    half = micro_config(f"data.path={photo_dir}", f"task.name={task}", "train.steps=3", "model.dropout=0.1")
    train(half, tmp_path / "resumed", progress=False)
    train(config, tmp_path / "resumed", resume=True, progress=False)
    (a, ea), (b, eb) = _params(tmp_path / "straight"), _params(tmp_path / "resumed")
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=0)
        torch.testing.assert_close(ea[k], eb[k], atol=1e-6, rtol=0)
    assert run_folder.read_training_state(run_folder.latest_checkpoint(tmp_path / "resumed"))[1]["step"] == 6


def test_a_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, photo_dir, monkeypatch):
    config = micro_config(f"data.path={photo_dir}", "task.name=jpeg", "train.steps=6", "train.checkpoint_every=2")
    trainer = Trainer(config, tmp_path, progress=False)
    real = PaletteModel.training_losses

    def exploding(self, *args, **kwargs):
        loss = real(self, *args, **kwargs)
        return loss * float("nan") if trainer.step == 3 else loss

    monkeypatch.setattr(PaletteModel, "training_losses", exploding)
    with pytest.raises(PaletteError, match=r"loss became nan at step 3(.|\n)*step-000000002"):
        trainer.fit()
    good = run_folder.latest_checkpoint(tmp_path)
    assert good.name == "step-000000002"
    tensors, _ = ckpt.read_weights(good / "model.safetensors")
    assert all(torch.isfinite(t).all() for t in tensors.values())


def test_warm_up_is_linear_then_constant():
    config = micro_config("train.lr=1e-3", "train.warmup_steps=10")
    assert [learning_rate(config, s) for s in (0, 4, 9, 10, 500)] == pytest.approx([1e-4, 5e-4, 1e-3, 1e-3, 1e-3])


def test_ema_decay_is_the_configured_value_without_warm_up():
    config = micro_config("train.ema_decay=0.9999", "train.ema_warmup=false")
    assert ema_decay(config, 0) == 0.9999
    warm = micro_config("train.ema_decay=0.9999", "train.ema_warmup=true")
    assert ema_decay(warm, 0) == pytest.approx(0.1) and ema_decay(warm, 10**6) == 0.9999


def test_ema_follows_its_update_rule(tmp_path, photo_dir):
    config = micro_config(f"data.path={photo_dir}", "task.name=jpeg", "train.steps=1", "train.ema_decay=0.75",
                          "train.ema_warmup=false")
    trainer = Trainer(config, tmp_path, progress=False)
    before = {k: v.clone() for k, v in trainer.ema.state_dict().items()}
    trainer.fit()
    after_model = trainer.model.net.state_dict()
    for k, v in trainer.ema.state_dict().items():
        torch.testing.assert_close(v, 0.75 * before[k] + 0.25 * after_model[k])


def test_a_run_folder_holds_config_weights_state_logs_and_sheets(tmp_path, photo_dir):
    config = micro_config(f"data.path={photo_dir}", "task.name=multi", "train.steps=2", "train.sample_every=2",
                          "train.sheet_images=2", "train.sheet_samples=2")
    train(config, tmp_path, progress=False)
    assert (tmp_path / "config.yaml").is_file()
    folder = run_folder.latest_checkpoint(tmp_path)
    assert {p.name for p in folder.iterdir()} == {"model.safetensors", "ema.safetensors", "state.safetensors"}
    assert list((tmp_path / "logs").glob("events.out.tfevents.*"))
    sheets = sorted(p.name for p in (tmp_path / "samples").glob("*.png"))
    assert sheets == ["step0000002_colorization.png", "step0000002_inpainting.png", "step0000002_jpeg.png"]
    for sheet in sheets:  # input | 2 samples | truth, for each of 2 images
        assert Image.open(tmp_path / "samples" / sheet).size == sheet_size(columns=4, rows=2)


def test_tensorboard_logs_the_training_scalars(tmp_path, photo_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train(micro_config(f"data.path={photo_dir}", "task.name=jpeg", "train.steps=2"), tmp_path, progress=False)
    events = EventAccumulator(str(tmp_path / "logs"))
    events.Reload()
    assert {"train/loss", "train/lr", "train/grad_norm", "train/images_per_sec"} <= set(events.Tags()["scalars"])


def test_an_existing_run_is_not_overwritten_without_resume(tmp_path, photo_dir):
    config = micro_config(f"data.path={photo_dir}", "task.name=jpeg", "train.steps=1")
    train(config, tmp_path, progress=False)
    with pytest.raises(ArgumentError, match=f"^resume is off, but {tmp_path} already holds a run"):
        train(config, tmp_path, progress=False)


def test_resuming_with_another_image_size_or_task_is_refused(tmp_path, photo_dir):
    train(micro_config(f"data.path={photo_dir}", "task.name=jpeg", "train.steps=1"), tmp_path, progress=False)
    with pytest.raises(PaletteError, match="image size 16"):
        Trainer(micro_config(f"data.path={photo_dir}", "task.name=jpeg", "model.image_size=32"), tmp_path,
                resume=True, progress=False)
    with pytest.raises(PaletteError, match="different task"):
        Trainer(micro_config(f"data.path={photo_dir}", "task.name=inpainting"), tmp_path, resume=True,
                progress=False)


def test_regression_baseline_trains_and_maps_x_to_y(tmp_path, photo_dir):
    config = micro_config(f"data.path={photo_dir}", "task.name=colorization", "train.steps=2",
                          "diffusion.objective=regression")
    trainer = Trainer(config, tmp_path, progress=False)
    trainer.fit()
    model = PaletteModel(config)
    model.net.load_state_dict(trainer.ema.state_dict())
    x = torch.zeros(2, 3, 16, 16)
    out = model.sample(x)
    torch.testing.assert_close(out, model.net(x, torch.zeros_like(x), torch.ones(2)).clamp(-1, 1))


def test_l1_loss_is_the_mean_absolute_error(photo_dir):
    config = micro_config("diffusion.loss=l1")
    model = PaletteModel(config)
    for p in model.parameters():
        torch.nn.init.zeros_(p)  # f = 0, so the loss is E|eps|
    y = torch.zeros(64, 3, 16, 16)
    loss = model.training_loss(y, y, torch.ones(64, 1, 16, 16), torch.Generator().manual_seed(0))
    assert loss.item() == pytest.approx(math.sqrt(2 / math.pi), rel=0.02)


@pytest.mark.slow
def test_a_tiny_model_overfits_two_images_and_the_sampler_reproduces_them(tmp_path):
    import skimage.data

    folder = tmp_path / "two"
    folder.mkdir()
    for name in ("astronaut", "coffee"):
        Image.fromarray(getattr(skimage.data, name)()).resize((16, 16), Image.BICUBIC).save(folder / f"{name}.png")
    config = micro_config(
        f"data.path={folder}", "task.name=inpainting", "train.steps=500", "data.flip=false", "train.lr=1e-3",
        "train.warmup_steps=10", "train.ema_decay=0.9", "model.base_channels=32", "train.batch_size=16",
        "diffusion.sample_steps=50",
    )
    trainer = Trainer(config, tmp_path / "run", progress=False)
    trainer.fit()
    model = PaletteModel(config)
    model.net.load_state_dict(trainer.ema.state_dict())
    model.eval()
    from palette.data import load_image
    from palette.masks import center_mask

    y = torch.stack([load_image(p) * 2 - 1 for p in sorted(folder.glob("*.png"))])
    mask = torch.from_numpy(center_mask(16, 16).astype(np.float32))[None, None].expand(2, 1, 16, 16)
    x = y * (1 - mask) + torch.randn(y.shape, generator=torch.Generator().manual_seed(0)) * mask
    out = model.sample(x, mask, y, seeds=[0, 1])
    hole = mask.expand_as(y).bool()
    error = (out - y)[hole].square().mean().item()
    baseline = (y[hole] - y[~hole].mean()).square().mean().item()  # fill the hole with the mean known colour
    assert error < 0.2 * baseline  # measured about 0.05 of the baseline when this test was written


# Python source run in a training process before `palette train`: pause_on_call(where, n, applies, after) makes the
# n-th call of ``where`` ("module.name" in palette, as that module calls it; counting the calls that ``applies`` to;
# ``after``: once it returned) write "paused" to the events pipe named by PALETTE_TEST_EVENTS and wait there to be
# killed, so a test kills the process at that exact point of a checkpoint.
PAUSE_ON_CALL = """
import importlib, os, signal
def pause_on_call(where, number, applies=lambda *args: True, after=False):
    module, name = where.rsplit(".", 1)
    module = importlib.import_module(f"palette.{module}")
    real, calls = getattr(module, name), []
    def pausing(*args, **kwargs):
        result = real(*args, **kwargs) if after else None
        if applies(*args):
            calls.append(args)
            if len(calls) == number:
                with open(os.environ["PALETTE_TEST_EVENTS"], "a") as f:
                    f.write("paused\\n")
                signal.pause()
        return result if after else real(*args, **kwargs)
    setattr(module, name, pausing)
"""
# Moments of the checkpoint cycle at which a run is killed: a checkpoint writes model, ema and state files into a
# temporary folder (three calls of save_file), renames the folder, then points `latest` at it.
NAMES_LATEST = "lambda path, data: path.name == 'latest'"
KILL_MOMENTS = {
    "as soon as a checkpoint is complete":
        f"pause_on_call('run_folder.atomic_write_bytes', 1, {NAMES_LATEST}, after=True)",
    "while the second checkpoint's files are written": "pause_on_call('checkpoint.save_file', 5)",  # before its ema file
    "after the second checkpoint's folder is renamed, before `latest` names it":
        f"pause_on_call('run_folder.atomic_write_bytes', 2, {NAMES_LATEST})",
}


@pytest.mark.integration
def test_killing_training_at_any_moment_leaves_a_loadable_checkpoint(tmp_path, photo_dir, events):
    import subprocess
    import sys

    from palette.sampling import load_model

    from conftest import MICRO

    run_dir = tmp_path / "run"
    runner = "import sys; exec(sys.argv[1]); from palette.cli import main; sys.exit(main(sys.argv[2:]))"
    argv = ["train", "--task", "inpainting", "--data", str(photo_dir), "--out", str(run_dir), "--preset", "tiny",
            "--image-size", "16", "--steps", "100000", "--no-progress",
            *[o for o in MICRO if not o.startswith("model.image_size")], "train.checkpoint_every=1"]
    for moment, pause in KILL_MOMENTS.items():
        before = run_folder.latest_checkpoint(run_dir)
        done = int(before.name.split("-")[1]) if before else 0
        # this process's checkpoints
        first, second = run_folder.step_dir_name(done + 1), run_folder.step_dir_name(done + 2)
        events.lines.clear()
        proc = subprocess.Popen([sys.executable, "-c", runner, PAUSE_ON_CALL + pause, *argv,
                                 *(["--resume"] if before else [])],
                                env={**os.environ, "PALETTE_TEST_EVENTS": str(events.path)},
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            events.wait_for(lambda lines: "paused" in lines, f"pause {moment}", proc)
        finally:
            proc.kill()
            proc.wait()
        latest = run_folder.latest_checkpoint(run_dir)
        assert latest is not None and latest != before, moment
        assert latest.name == first, moment  # killed in or right after its first checkpoint: that is the one to load
        left = {p.name for p in (run_dir / "checkpoints").iterdir()}
        if "renamed" in moment:
            assert second in left, left  # complete, but not named by `latest`
        elif "written" in moment:
            assert any(name.startswith(f".{second}.") for name in left), left  # its temporary folder
        load_model(run_dir, "cpu")
        run_folder.read_training_state(latest)


def test_a_time_limit_checkpoints_and_stops_and_the_run_resumes_to_the_same_weights(tmp_path, photo_dir, monkeypatch):
    config = micro_config(f"data.path={photo_dir}", "task.name=inpainting", "train.steps=5", "train.checkpoint_every=4")
    train(config, tmp_path / "straight", progress=False)
    clock = iter(range(0, 10_000, 50))  # each reading of the clock is 50 s later: the first step ends past a minute
    monkeypatch.setattr("palette.train._clock", lambda: float(next(clock)))
    limited = micro_config(f"data.path={photo_dir}", "task.name=inpainting", "train.steps=5",
                           "train.checkpoint_every=4", "train.time_limit_minutes=1")
    train(limited, tmp_path / "limited", progress=False)
    stopped = run_folder.latest_checkpoint(tmp_path / "limited")
    assert run_folder.read_training_state(stopped)[1]["step"] == 2  # deadline 60 s; clock 50 after step 1, 100 after 2
    monkeypatch.undo()
    train(config, tmp_path / "limited", resume=True, progress=False)
    (a, ea), (b, eb) = _params(tmp_path / "straight"), _params(tmp_path / "limited")
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=0)
        torch.testing.assert_close(ea[k], eb[k], atol=1e-6, rtol=0)


@pytest.mark.integration
def test_sigterm_to_the_whole_job_checkpoints_and_auto_resume_continues(tmp_path, photo_dir, events):
    import re
    import signal
    import subprocess
    import sys

    from palette.cli import main

    from conftest import ANNOUNCING_PALETTE, MICRO, announced

    run_dir, script = tmp_path / "run", tmp_path / "announcing_palette.py"
    script.write_text(ANNOUNCING_PALETTE)
    flags = ["--task", "inpainting", "--data", str(photo_dir), "--out", str(run_dir), "--preset", "tiny",
             "--image-size", "16", "--no-progress", "--auto-resume",  # a fresh folder: --auto-resume starts the run
             *[o for o in MICRO if not o.startswith("model.image_size")], "data.num_workers=1",
             "train.micro_batch_size=1"]  # 4 micro-batches a step: more than one worker prefetches
    # a session of its own, signalled as a whole like a scheduler's job: the loader worker gets SIGTERM too
    proc = subprocess.Popen([sys.executable, str(script), "train", *flags, "--steps", "100000"],
                            env={**os.environ, "PALETTE_TEST_EVENTS": str(events.path)}, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        events.wait_for(lambda lines: announced(lines) >= 2, "second training step", proc)
    except BaseException:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    assert run_folder.latest_checkpoint(run_dir) is None  # checkpoint_every is 1000: nothing written yet
    os.killpg(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]
    log = (run_dir / "train.log").read_text()
    stopped = re.search(r"stopped by SIGTERM at step (\d+) of 100000: checkpoint written", log)
    assert stopped, log[-2000:]
    step = int(stopped.group(1))
    assert step >= 2 and run_folder.read_training_state(run_folder.latest_checkpoint(run_dir))[1]["step"] == step
    assert main(["train", *flags, "--steps", str(step + 2)]) == 0  # --auto-resume finds the checkpoint
    assert run_folder.read_training_state(run_folder.latest_checkpoint(run_dir))[1]["step"] == step + 2
    assert f"resumed {run_dir} at step {step}" in (run_dir / "train.log").read_text()


# A training process whose step fails while loader workers are alive (they ignore SIGTERM); a full disk makes
# safetensors fail on the fourth file written, the model weights of the second checkpoint.
FAULTS = {
    "an error in a training step": """
from palette.train import Trainer
real_step = Trainer.train_step
def failing_step(self, micro_batches):
    if self.step == 1:
        raise RuntimeError("injected failure of step 1")
    return real_step(self, micro_batches)
Trainer.train_step = failing_step
""",
    "a full disk at the second checkpoint": """
import errno, os
from palette import checkpoint
real_save = checkpoint.save_file
written = []
def filling_save(tensors, path, metadata=None):
    written.append(path)
    if len(written) > 3:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
    return real_save(tensors, path, metadata=metadata)
checkpoint.save_file = filling_save
""",
}


def _train_with_fault(fault: str, run_dir, photo_dir) -> tuple[int, str, int]:
    """``palette train`` with two loader workers, in a session of its own, after ``fault`` (Python source) ran in its
    process: (exit code, stderr, the session's process group). A process that hangs fails the test at the timeout."""
    import os
    import signal
    import subprocess
    import sys

    from conftest import MICRO

    runner = "import sys; exec(sys.argv[1]); from palette.cli import main; sys.exit(main(sys.argv[2:]))"
    argv = ["train", "--task", "inpainting", "--data", str(photo_dir), "--out", str(run_dir), "--preset", "tiny",
            "--image-size", "16", "--steps", "4", "--no-progress",
            *[o for o in MICRO if not o.startswith("model.image")], "data.num_workers=2",
            "train.micro_batch_size=1", "train.checkpoint_every=1"]  # 4 micro-batches a step: both workers busy
    proc = subprocess.Popen([sys.executable, "-c", runner, fault, *argv], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise AssertionError("the failed training process did not exit") from None
    return proc.returncode, err, proc.pid


def _group_is_gone(group: int) -> bool:
    import os

    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.mark.integration
def test_an_error_while_loader_workers_run_ends_the_process_and_its_workers(tmp_path, photo_dir):
    code, err, group = _train_with_fault(FAULTS["an error in a training step"], tmp_path / "run", photo_dir)
    assert code != 0 and "injected failure of step 1" in err, err[-3000:]
    assert _group_is_gone(group)  # no worker outlives the training process


@pytest.mark.integration
def test_a_full_disk_at_a_checkpoint_ends_the_run_with_one_line_and_keeps_the_previous_checkpoint(tmp_path,
                                                                                                photo_dir):
    run = tmp_path / "run"
    code, err, group = _train_with_fault(FAULTS["a full disk at the second checkpoint"], run, photo_dir)
    assert code == 2 and "Traceback" not in err, err[-3000:]
    assert (f"palette train: error: cannot write checkpoint {run / 'checkpoints' / 'step-000000002'} (No space left "
            "on device); the previous checkpoint step-000000001 is intact") in err
    assert _group_is_gone(group)
    assert (run / "checkpoints" / "latest").read_text() == "step-000000001"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["latest", "step-000000001"]
    run_folder.read_training_state(run_folder.latest_checkpoint(run))


class _RefusingData(torch.utils.data.Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, index):
        raise PaletteError("photos/b.png and its target differ in size")


def test_an_error_raised_in_a_loader_worker_reaches_the_user_as_its_one_line():
    from palette.loader_workers import loader_batches

    loader = torch.utils.data.DataLoader(_RefusingData(), num_workers=1)
    with pytest.raises(PaletteError) as caught:
        with loader_batches(loader) as batches:
            next(batches)
    assert str(caught.value) == "photos/b.png and its target differ in size"


def test_export_writes_a_checkpoints_ema_or_trained_weights_as_one_file_a_sampler_loads(trained_run, tmp_path, capsys):
    from palette.cli import main
    from palette.sampling import load_model

    latest = run_folder.latest_checkpoint(trained_run)
    for flags, source in (([], "ema.safetensors"), (["--no-ema"], "model.safetensors")):
        out = tmp_path / f"{source}"
        assert main(["export", str(trained_run), *flags, "--out", str(out)]) == 0
        expected = ckpt.read_weights(latest / source)[0]
        loaded = load_model(out, "cpu").net.state_dict()
        assert loaded.keys() == expected.keys() and all(torch.equal(loaded[k], expected[k]) for k in expected)
    assert main(["export", str(latest), "--out", str(tmp_path / "weights.pt")]) == 2
    assert "error: --out " in capsys.readouterr().err
    assert main(["export", str(tmp_path), "--out", str(tmp_path / "none.safetensors")]) == 2
    assert "not a checkpoint folder nor a run folder with a complete checkpoint" in capsys.readouterr().err


def test_a_trainer_without_a_run_folder_is_built_by_the_constructor():
    # palette bench's trainer goes through the same named steps as palette train's, minus data and folder
    config = micro_config()
    bare = Trainer(config, None, progress=False)
    assert bare.run_dir is None and bare.lock is None and bare.paths == [] and bare.step == 0
    via_bench = Trainer.without_data(config)
    for key, value in via_bench.model.net.state_dict().items():
        assert torch.equal(bare.model.net.state_dict()[key], value), key
    with pytest.raises(ArgumentError) as refused:
        Trainer(config, None, resume=True)
    assert refused.value.argument == "resume"
