"""Multi-task training with explicit weights: the spec, the task frequencies, per-task losses and sheets."""

import numpy as np
import pytest
from conftest import MICRO, micro_config, sheet_size
from PIL import Image

from palette.cli import main
from palette.config import Config
from palette.data_files import list_images
from palette.training_data import TrainingData
from palette.tasks import make_task, parse_task_weights
from palette.train import Trainer

MICRO_FLAGS = [o for o in MICRO if not o.startswith("model.image_size")]


def test_a_spec_names_tasks_with_weights_and_a_bare_name_weighs_one():
    assert parse_task_weights("colorization:1,inpainting:2, jpeg") == (
        ("colorization", "inpainting", "jpeg"), (1.0, 2.0, 1.0))
    assert parse_task_weights("sr-x4:0.5,denoising:1.5") == (("sr-x4", "denoising"), (0.5, 1.5))


@pytest.mark.parametrize("spec,match", [
    ("colorization:x", "weight of colorization .* not a number"),
    ("colorization:-1", "must be a positive number"),
    ("colorization:0", "must be a positive number"),
    ("jpeg:inf", "must be a positive number"),
    ("deblur:1", "unknown task 'deblur'"),
    ("paired:1", "unknown task 'paired'"),
    ("jpeg,jpeg:2", "jpeg appears twice"),
    ("jpeg,,colorization", "empty entry"),
])
def test_bad_specs_say_what_is_wrong(spec, match):
    with pytest.raises(ValueError, match=match):
        parse_task_weights(spec)


def test_examples_follow_the_task_weights(photo_dir):
    names, weights = parse_task_weights("colorization:1,jpeg:2,denoising:1")
    data = TrainingData(list_images(photo_dir), make_task("multi", names, weights), 16, 3, seed=5)
    n = 800
    drawn = [data[i]["task"] for i in range(n)]
    expected = n * np.array(weights) / sum(weights)
    counts = np.array([drawn.count(name) for name in names])
    assert counts.sum() == n
    assert ((counts - expected) ** 2 / expected).sum() < 13.8  # chi-square, 2 degrees of freedom: P > 13.8 is 0.1%


def _cli_train(capsys, *argv):
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


def test_the_tasks_flag_trains_a_weighted_multi_task_model_with_per_task_curves_and_sheets(capsys, tmp_path, photo_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = tmp_path / "run"
    code, err = _cli_train(capsys, "train", "--task", "multi", "--tasks", "colorization:1,inpainting:2,jpeg:1",
                           "--data", photo_dir, "--out", run_dir, "--preset", "tiny", "--image-size", 16, "--steps", 2,
                           "--no-progress", *MICRO_FLAGS, "train.batch_size=8", "train.sample_every=2",
                           "train.sheet_images=2", "train.sheet_samples=1")
    assert code == 0, err
    config = Config.load(run_dir / "config.yaml")
    assert config.task.tasks == ("colorization", "inpainting", "jpeg") and config.task.weights == (1.0, 2.0, 1.0)
    for name in config.task.tasks:  # input | 1 sample | truth, for each of 2 images
        assert Image.open(run_dir / "samples" / f"step0000002_{name}.png").size == sheet_size(columns=3, rows=2)
    # the tasks of the 16 examples the run saw, drawn again from the same seeded data
    data = TrainingData(list_images(photo_dir), make_task("multi", config.task.tasks, config.task.weights), 16, 3,
                        seed=config.train.seed)
    seen = {data[n]["task"] for n in range(16)}
    events = EventAccumulator(str(run_dir / "logs"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {t for t in tags if t.startswith("train/loss/")} == {f"train/loss/{name}" for name in seen}
    assert {f"samples/{name}" for name in config.task.tasks} <= set(events.Tags()["images"])


def test_a_training_step_records_each_example_s_loss_under_its_task(tmp_path, photo_dir):
    import torch

    trainer = Trainer(micro_config(f"data.path={photo_dir}", "task.name=multi", "model.dropout=0"), tmp_path,
                      progress=False)
    batch = torch.utils.data.default_collate([trainer.dataset[i] for i in range(4)])
    with torch.no_grad():  # each example's loss, before the step changes the weights
        losses = trainer.model.training_losses(batch["x"], batch["y"], batch["mask"], gamma=batch["gamma"],
                                               noise=batch["noise"]).tolist()
    expected = {}
    for name, loss in zip(batch["task"], losses):
        expected.setdefault(name, []).append(loss)
    trainer.train_step([batch])
    assert trainer.task_losses.keys() == expected.keys()
    for name, values in expected.items():
        assert trainer.task_losses[name] == pytest.approx(values, rel=1e-4), name


def test_a_task_curve_is_the_mean_loss_of_its_examples_since_the_last_log(tmp_path, photo_dir):
    trainer = Trainer(micro_config(f"data.path={photo_dir}", "task.name=multi"), tmp_path, progress=False)
    logged = []

    class Writer:
        def add_scalar(self, tag, value, step):
            logged.append((tag, value))

    trainer.task_losses = {"jpeg": [1.0, 2.0, 6.0], "colorization": [0.5]}
    trainer.log_task_losses(Writer())
    assert logged == [("train/loss/colorization", 0.5), ("train/loss/jpeg", 3.0)]
    assert trainer.task_losses == {}


@pytest.mark.parametrize("argv,phrase", [
    (["--task", "jpeg", "--tasks", "jpeg:1"], "task weights need --task multi"),
    (["--task", "multi", "--tasks", "colorization:two"], "--tasks: the weight of colorization"),
    (["--task", "multi", "--tasks", "blur:1"], "--tasks: unknown task 'blur'"),
    (["--task", "multi", "task.tasks=jpeg,colorization", "task.weights=1"], "task.weights must be one positive"),
])
def test_bad_task_flags_are_clear_errors(capsys, tmp_path, photo_dir, argv, phrase):
    code, err = _cli_train(capsys, "train", *argv, "--data", photo_dir, "--out", tmp_path / "r", "--no-progress")
    assert code == 2 and phrase in err and "Traceback" not in err
