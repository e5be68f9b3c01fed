"""``palette bench`` times the step ``palette train`` runs, on batches shaped like the training data's."""

from __future__ import annotations

import pytest
import torch
from conftest import micro_config

from palette.bench import bench_trainer, run_bench, synthetic_batch
from palette.training_data import StepSampler, TrainingData, training_loader
from palette.errors import PaletteError
from palette.train import Trainer


def _loader_batch(trainer: Trainer) -> dict:
    """The first micro-batch ``palette train``'s loader yields for ``trainer``."""
    sampler = StepSampler(0, 1, trainer.config.train.batch_size, trainer.rank, trainer.world)
    return next(iter(training_loader(trainer.dataset, sampler, trainer.micro_batch, num_workers=0)))


def test_the_synthetic_batch_has_the_keys_shapes_and_dtypes_of_a_training_batch(photo_dir, tmp_path):
    for task in ("inpainting", "colorization"):
        trainer = Trainer(micro_config(f"data.path={photo_dir}", f"task.name={task}"), tmp_path / task,
                          progress=False)
        assert isinstance(trainer.dataset, TrainingData)
        real = _loader_batch(trainer)
        synthetic = synthetic_batch(trainer.config, trainer.task, trainer.micro_batch)
        assert synthetic.keys() == real.keys()
        for key, value in real.items():
            if isinstance(value, torch.Tensor):
                assert (synthetic[key].shape, synthetic[key].dtype) == (value.shape, value.dtype), key
            else:
                assert synthetic[key] == value, key  # the task's name, per example
        trainer.release()


def test_the_bench_trainer_steps_its_weights_and_ema_exactly_as_palette_train(photo_dir, tmp_path):
    config = micro_config(f"data.path={photo_dir}", "task.name=inpainting", "model.dropout=0.1")
    trained = Trainer(config, tmp_path, progress=False)  # from a data folder, as palette train builds it
    bench = bench_trainer(config, device="cpu")
    initial = {k: v.clone() for k, v in bench.model.net.state_dict().items()}
    batch = synthetic_batch(bench.config, bench.task, bench.micro_batch)
    for trainer in (trained, bench):
        for _ in range(2):
            trainer.train_step([batch])
    net, ema = bench.model.net.state_dict(), bench.ema.state_dict()
    assert any(not torch.equal(net[k], initial[k]) for k in initial)  # the step trained
    assert any(not torch.equal(ema[k], net[k]) for k in net)  # the EMA lags the weights
    for key, value in trained.model.net.state_dict().items():
        assert torch.equal(net[key], value), key
    for key, value in trained.ema.state_dict().items():
        assert torch.equal(ema[key], value), key
    trained.release()


def test_bench_times_trainer_train_step_over_the_configured_micro_batches(monkeypatch):
    steps = []
    original = Trainer.train_step

    def recorded(self, micro_batches):
        steps.append([len(micro["x"]) for micro in micro_batches])
        return original(self, micro_batches)

    monkeypatch.setattr(Trainer, "train_step", recorded)
    result = run_bench(micro_config("train.batch_size=4", "train.micro_batch_size=2"), device="cpu", seconds=0.01)
    assert len(steps) >= 2 + 3  # two warm-up steps, then at least three timed
    assert all(sizes == [2, 2] for sizes in steps)  # batch 4 in micro-batches of 2, as palette train runs it
    assert result.batch == 4 and result.train_images_per_s > 0


def test_a_non_finite_loss_in_a_trainer_without_a_run_folder_is_reported_as_palette_train_reports_it():
    trainer = bench_trainer(micro_config(), device="cpu")
    batch = synthetic_batch(trainer.config, trainer.task, trainer.micro_batch)
    batch["y"][0, 0, 0, 0] = float("nan")
    with pytest.raises(PaletteError, match=r"the loss became nan at step 0.*\(none written yet\)"):
        trainer.train_step([batch])


@pytest.mark.parametrize("overrides", [("task.name=paired",), ("task.name=paired", "model.source_channels=1")])
def test_bench_runs_a_paired_model_whose_source_channels_no_data_has_decided(overrides):
    result = run_bench(micro_config(*overrides), device="cpu", seconds=0.01)
    assert result.train_images_per_s > 0 and result.sample_images_per_s > 0
