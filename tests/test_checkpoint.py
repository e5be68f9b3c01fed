"""Checkpoints: safetensors round trip, atomic writes, no unpickling, weights and pointers checked on load, one
writer per run folder."""

import errno
import os
import pickle
import socket
import subprocess
import sys

import pytest
import torch

from palette import checkpoint as ckpt, run_folder
from palette.errors import PaletteError
from palette.model import PaletteModel
from palette.sampling import load_model

from conftest import hold_run_lock, micro_config, release


def _write(run, step, config, fail=None):
    model = PaletteModel(config)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.net(torch.zeros(1, 3, 16, 16), torch.zeros(1, 3, 16, 16), torch.ones(1)).sum().backward()
    opt.step()
    return model, opt, run_folder.write_checkpoint(run, step, model.net.state_dict(), model.net.state_dict(),
                                             opt.state_dict(), config, {"step": step})


def test_round_trip_keeps_weights_config_and_optimizer(tmp_path):
    config = micro_config("train.seed=5")
    model, opt, folder = _write(tmp_path, 7, config)
    tensors, meta = ckpt.read_weights(folder / "model.safetensors")
    assert ckpt.config_of(meta, folder) == config and meta["step"] == "7"
    for k, v in model.net.state_dict().items():
        assert torch.equal(tensors[k], v)
    optimizer, training = run_folder.read_training_state(folder)
    assert training == {"step": 7}
    fresh = torch.optim.Adam(PaletteModel(config).parameters(), lr=1e-3)
    fresh.load_state_dict(optimizer)
    restored, original = fresh.state_dict()["state"], opt.state_dict()["state"]
    assert restored.keys() == original.keys()
    for index in original:
        for name in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(restored[index][name], original[index][name])


def test_resolve_weights_from_run_folder_checkpoint_folder_or_file(tmp_path):
    config = micro_config()
    _write(tmp_path, 1, config)
    _, _, second = _write(tmp_path, 2, config)
    assert ckpt.resolve_weights(tmp_path) == second / "ema.safetensors"
    assert ckpt.resolve_weights(tmp_path, use_ema=False) == second / "model.safetensors"
    assert ckpt.resolve_weights(second) == second / "ema.safetensors"
    assert ckpt.resolve_weights(second / "model.safetensors") == second / "model.safetensors"


def test_only_the_newest_checkpoints_are_kept(tmp_path):
    config = micro_config()
    for step in (1, 2, 3):
        _write(tmp_path, step, config)
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("step-*")) == ["step-000000002", "step-000000003"]


def test_a_write_that_dies_midway_leaves_the_last_checkpoint_loadable(tmp_path, monkeypatch):
    config = micro_config()
    _, _, good = _write(tmp_path, 1, config)
    calls = {"n": 0}
    real = ckpt.save_file

    def dying_save(tensors, path, metadata=None):  # the state file of the second checkpoint never completes
        calls["n"] += 1
        with open(path, "wb") as f:
            f.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(ckpt, "save_file", dying_save)
    with pytest.raises(KeyboardInterrupt):
        _write(tmp_path, 2, config)
    monkeypatch.setattr(ckpt, "save_file", real)
    assert calls["n"] == 1
    assert run_folder.latest_checkpoint(tmp_path) == good
    assert [p.name for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith(".")] == []
    load_model(tmp_path, "cpu")


def test_every_file_of_a_checkpoint_is_on_disk_before_its_folder_is_renamed(tmp_path, monkeypatch):
    # a crash right after the rename must not leave a complete-looking folder with a file still in the page cache;
    # files are identified by inode, which a rename keeps
    synced, synced_at_rename = set(), {}
    real_fsync, real_replace = os.fsync, os.replace

    def recording_fsync(fd):
        synced.add(os.fstat(fd).st_ino)
        return real_fsync(fd)

    def recording_replace(source, target, *args, **kwargs):
        synced_at_rename[os.path.basename(target)] = set(synced)
        return real_replace(source, target, *args, **kwargs)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    monkeypatch.setattr(os, "replace", recording_replace)
    _, _, folder = _write(tmp_path, 3, micro_config())
    files = {path.name: path.stat().st_ino for path in folder.iterdir()}
    assert set(files) == {"model.safetensors", "ema.safetensors", run_folder.STATE_FILE}
    unsynced = [name for name, inode in files.items() if inode not in synced_at_rename[folder.name]]
    assert unsynced == []


def test_loading_never_unpickles(tmp_path, monkeypatch):
    config = micro_config()
    _write(tmp_path, 1, config)

    def forbidden(*args, **kwargs):
        raise AssertionError("unpickling during a checkpoint load")

    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(torch, "load", forbidden)
    load_model(tmp_path, "cpu")
    run_folder.read_training_state(run_folder.latest_checkpoint(tmp_path))


def test_a_pickle_file_is_refused_with_a_clear_error(tmp_path):
    bad = tmp_path / "weights.safetensors"
    torch.save({"w": torch.zeros(1)}, bad)  # a pickle archive under a safetensors name
    with pytest.raises(PaletteError, match="not a readable safetensors file"):
        load_model(bad, "cpu")


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(PaletteError, match="no complete checkpoint"):
        load_model(tmp_path, "cpu")
    with pytest.raises(PaletteError, match="no such file"):
        load_model(tmp_path / "nope", "cpu")


def test_a_latest_pointer_out_of_the_run_is_refused_not_followed(tmp_path):
    config = micro_config()
    _write(tmp_path / "other-run", 5, config)
    _write(tmp_path / "run", 1, config)
    latest = tmp_path / "run" / "checkpoints" / "latest"
    latest.write_text("../../other-run/checkpoints/step-000000005")
    with pytest.raises(PaletteError, match="latest points to '../../other-run/checkpoints/step-000000005'"):
        load_model(tmp_path / "run", "cpu")
    with pytest.raises(PaletteError, match="must stay inside the run"):
        run_folder.latest_checkpoint(tmp_path / "run")


def test_a_step_folder_that_links_out_of_the_run_is_not_a_checkpoint_of_it(tmp_path):
    config = micro_config()
    _, _, elsewhere = _write(tmp_path / "other-run", 5, config)
    _, _, own = _write(tmp_path / "run", 1, config)
    (tmp_path / "run" / "checkpoints" / "latest").unlink()
    (tmp_path / "run" / "checkpoints" / "step-000000009").symlink_to(elsewhere)  # newer by name, but not this run's
    assert run_folder.latest_checkpoint(tmp_path / "run") == own


def test_weights_holding_nan_are_refused_naming_the_tensor(tmp_path):
    config = micro_config()
    model = PaletteModel(config)
    weights = model.net.state_dict()
    name = sorted(weights)[len(weights) // 2]
    weights[name].view(-1)[0] = float("nan")
    run_folder.write_checkpoint(tmp_path, 1, weights, weights, {"state": {}, "param_groups": []}, config, {"step": 1})
    with pytest.raises(PaletteError, match=f"tensor {name} holds NaN or infinite values"):
        load_model(tmp_path, "cpu")


def test_a_full_disk_keeps_the_previous_checkpoint_and_says_so(tmp_path, monkeypatch):
    config = micro_config()
    _, _, good = _write(tmp_path, 1, config)

    def full_disk(tensors, path, metadata=None):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)

    monkeypatch.setattr(ckpt, "save_file", full_disk)
    with pytest.raises(PaletteError, match=r"cannot write checkpoint .*step-000000002 \(No space left on device\); "
                                           r"the previous checkpoint step-000000001 is intact"):
        _write(tmp_path, 2, config)
    assert run_folder.latest_checkpoint(tmp_path) == good
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["latest", "step-000000001"]


@pytest.mark.integration
def test_a_run_folder_held_by_another_process_is_refused_with_its_holder(tmp_path):
    holder = hold_run_lock(tmp_path)
    try:
        with pytest.raises(PaletteError, match=f"in use by another palette train \\(pid {holder.pid} on "
                                               f"{socket.gethostname()} since "):
            run_folder.RunLock(tmp_path)
    finally:
        release(holder)  # SIGKILL
    with run_folder.RunLock(tmp_path):  # a holder that died, even by SIGKILL, leaves nothing that blocks
        assert (tmp_path / "lock").read_text().startswith(f"pid {os.getpid()} on ")


@pytest.mark.integration
def test_the_holder_may_take_its_lock_again_and_lets_go_with_the_last_release(tmp_path):
    first = run_folder.RunLock(tmp_path)
    second = run_folder.RunLock(tmp_path)  # the command line, then the trainer
    first.release()
    probe = [sys.executable, "-c", "import sys; from palette.run_folder import RunLock; RunLock(sys.argv[1])",
             str(tmp_path)]
    assert subprocess.run(probe, capture_output=True).returncode != 0  # still held
    second.release()
    assert subprocess.run(probe, capture_output=True).returncode == 0


def test_shards_that_do_not_cover_a_tensor_are_refused_not_filled_with_garbage(tmp_path):
    import json

    from safetensors.torch import save_file

    from palette.sharding import whole_from_shards

    # the second half (rows 2-3) of a 4x3 tensor, as process 2 of 2 writes it; the first half's file is gone
    shards = tmp_path / "step-000000002" / run_folder.SHARDS
    shards.mkdir(parents=True)
    save_file({"model.w": torch.ones(2, 3)}, str(shards / "shard-00002-model-00001-of-00001.safetensors"),
              metadata={"DCP_SHARDING_INFO": json.dumps({"model.w": {"saved_offsets": [2, 0]}}), "DCP_VERSION": "1.0",
                        "format": "pt"})
    with pytest.raises(PaletteError, match=r"its shards hold 6 of the 12 values of model\.w"):
        whole_from_shards(shards, "model")
