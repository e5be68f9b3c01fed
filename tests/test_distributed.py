"""Several processes (torchrun, gloo on CPU) against one: training, gradient accumulation, resume, sampling."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys

import pytest
import torch
from conftest import ANNOUNCING_PALETTE, MICRO, announced

from palette import checkpoint as ckpt, run_folder
from palette.cli import main
from palette.errors import PaletteError
from palette.sampling import load_model
from palette.sharding import whole_from_shards
from palette.training_schedule import batch_layout

TRAIN = ["--task", "inpainting", "--preset", "tiny", "--device", "cpu", "--batch-size", "4", "--no-progress"]
# The paper's learning rate. Parameters are compared after Adam, which divides each gradient by its running RMS: in
# the first steps, layers behind ADM's zero-initialised output layer get gradients near 1e-9 that are sums of
# cancelling terms, whose rounding (it depends on how the batch is split) Adam turns into update differences in
# proportion to the learning rate (measured: 4e-7 after 3 steps at 1e-4, 6e-5 at 1e-3).
EXACT = [*MICRO, "model.dropout=0", "train.checkpoint_every=1", "train.lr=1e-4"]


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def _torchrun(processes: int, *args: str, wait: bool = True, launcher: str = "torchrun", script=None, env=None):
    """``palette *args`` (or ``script *args``) on ``processes`` launched processes."""
    env = {**_env(), **(env or {})}
    if launcher == "torchrun":
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    else:  # on a CPU, accelerate launch --cpu starts one process; --multi_gpu with ACCELERATE_USE_CPU starts them all
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
               "--num_machines", "1", "--main_process_port", "0", "--mixed_precision", "no", "--dynamo_backend", "no"]
        env["ACCELERATE_USE_CPU"] = "true"
    cmd += [str(script), *args] if script else ["-m", "palette", *args]
    if not wait:
        return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    if result.returncode and "address already in use" in result.stderr.lower():  # --standalone's port was taken
        result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _kill_tree(proc) -> None:
    """SIGKILL torchrun and its workers (which it starts in sessions of their own)."""
    import psutil

    parent = psutil.Process(proc.pid)
    family = [parent, *parent.children(recursive=True)]
    for p in family:
        p.send_signal(signal.SIGKILL)
    psutil.wait_procs(family, timeout=30)
    proc.wait()


def _weights(run):
    """The trained weights of a run's latest checkpoint, whole (assembled from the shards of a sharded one)."""
    latest = run_folder.latest_checkpoint(run)
    if run_folder.is_sharded(latest):
        return whole_from_shards(latest / run_folder.SHARDS, "model")
    return ckpt.read_weights(latest / "model.safetensors")[0]


def _assert_same_weights(a, b, tol=1e-5):
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    worst = max((wa[k] - wb[k]).abs().max().item() for k in wa)
    assert worst < tol, worst


def test_an_argument_error_reaches_the_other_processes_whole():
    # the main process's listing error is broadcast, pickled, to every process (Trainer._scan)
    import pickle

    from palette.errors import ArgumentError

    sent = ArgumentError("data.path", "/photos: the folder holds no images")
    received = pickle.loads(pickle.dumps(sent))
    assert type(received) is ArgumentError and (received.argument, received.problem) == ("data.path", sent.problem)
    assert str(received) == "data.path /photos: the folder holds no images"


def test_batch_layout_splits_the_global_batch_into_equal_micro_batches():
    assert batch_layout(1024, 8) == (128, 1)
    assert batch_layout(1024, 8, 48) == (32, 4)
    assert batch_layout(6, 2, 2) == (1, 3)
    with pytest.raises(Exception, match="divisible by the 3 processes"):
        batch_layout(4, 3)


@pytest.mark.integration
@pytest.mark.parametrize("launcher", ["torchrun", "accelerate launch"])
def test_two_processes_train_the_same_parameters_as_one(photo_dir, tmp_path, launcher):
    args = [*TRAIN, "--data", str(photo_dir), "--steps", "3"]
    result = _torchrun(2, "train", *args, "--out", str(tmp_path / "two"), *EXACT, launcher=launcher)
    assert main(["train", *args, "--out", str(tmp_path / "one"), *EXACT]) == 0
    assert "on 2 process(es)" in (tmp_path / "two" / "train.log").read_text()
    assert "last checkpoint" in result.stdout  # printed once, by the main process
    assert result.stdout.count("last checkpoint") == 1
    _assert_same_weights(tmp_path / "two", tmp_path / "one")


@pytest.mark.integration
def test_each_process_checks_a_slice_of_the_files_and_all_stop_on_a_data_error(photo_dir, tmp_path):
    """The header scan is shared out; its outcomes are pooled, so every process raises the same error (none is left
    waiting in a collective) and it names the unreadable files both processes found."""
    data = tmp_path / "data"
    shutil.copytree(photo_dir, data)
    for name in ("broken1.png", "broken2.png"):  # sorted between the photos: one in each process's slice
        (data / name).write_bytes(b"not an image")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "palette",
           "train", *TRAIN, "--data", str(data), "--steps", "1", "--out", str(tmp_path / "run"), *MICRO]
    result = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    # counted in the whole text: the two processes' messages can share a line of the pipe they both write to
    assert result.stderr.count("palette train: error: 2 of 6 files") == 2, result.stderr[-3000:]  # one per process
    assert "broken1.png" in result.stderr and "broken2.png" in result.stderr
    # the main process lists the files for all; an error in listing them stops every process too
    empty = tmp_path / "empty"
    empty.mkdir()
    cmd[cmd.index(str(data))] = str(empty)
    result = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert result.stderr.count(f"palette train: error: --data {empty}: the folder holds no images") == 2, \
        result.stderr[-3000:]


@pytest.mark.integration
def test_two_processes_share_out_the_sample_sheets_and_draw_what_one_process_draws(photo_dir, tmp_path):
    """Each process samples every other row of the sheets, rows of a masked and an unmasked task in one batch; the
    main process gathers them into the sheets one process draws."""
    import numpy as np
    from PIL import Image

    recorder = tmp_path / "record_rows.py"  # palette train, noting which sheet rows each process samples
    recorder.write_text(
        "import os, sys\n"
        "import palette.train as training\n"
        "from palette.cli import main\n"
        "sample_rows, drawn = training.sample_rows, []\n"
        "def recording(model, rows, *args, **kwargs):\n"
        "    drawn.extend(f'{r.sheet}:{r.index}' for r in rows)\n"
        "    return sample_rows(model, rows, *args, **kwargs)\n"
        "training.sample_rows = recording\n"
        "code = main(sys.argv[1:])\n"
        "sys.stdout.write(f\"rank {os.environ.get('RANK', 0)} drew {','.join(drawn)}\\n\")\n"
        "sys.exit(code)\n"
    )
    args = ["--task", "multi", *TRAIN[2:], "--data", str(photo_dir), "--steps", "2", *EXACT, "train.sample_every=2",
            "train.sheet_images=3", "train.sheet_samples=2", "task.tasks=inpainting,colorization"]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          str(recorder), "train", *args, "--out", str(tmp_path / "two")],
                         env=_env(), capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    one = subprocess.run([sys.executable, str(recorder), "train", *args, "--out", str(tmp_path / "one")],
                         env=_env(), capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    rows = re.search(r"rank 0 drew (\S+)", one.stdout).group(1).split(",")
    assert len(rows) == 6
    shares = [re.search(rf"rank {r} drew (\S+)", two.stdout).group(1).split(",") for r in (0, 1)]
    assert shares == [rows[0::2], rows[1::2]]
    for task in ("inpainting", "colorization"):
        name = f"samples/step0000002_{task}.png"
        a, b = (np.asarray(Image.open(tmp_path / run / name), dtype=np.int16) for run in ("two", "one"))
        assert a.shape == b.shape
        assert np.abs(a - b).max() <= 2  # the same rows in the same places, up to float rounding


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.integration
@pytest.mark.parametrize("launcher", ["torchrun", "accelerate launch"])
def test_two_nodes_joined_by_the_launcher_train_the_same_parameters_as_one_process(photo_dir, tmp_path, launcher):
    """The README's multi-node commands, with two launchers on this machine standing in for two nodes of one process
    each: torchrun's c10d rendezvous (the SLURM example) or accelerate's machine ranks."""
    args = [*TRAIN, "--data", str(photo_dir), "--steps", "3", "--out", str(tmp_path / "nodes"), *EXACT]
    port, env = _free_port(), {**_env(), "ACCELERATE_USE_CPU": "true"}
    nodes = []
    for rank in range(2):
        if launcher == "torchrun":
            cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
                   "--rdzv_id", "test", "--rdzv_backend", "c10d", "--rdzv_endpoint", f"127.0.0.1:{port}"]
        else:
            cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_machines", "2",
                   "--num_processes", "2", "--machine_rank", str(rank), "--main_process_ip", "127.0.0.1",
                   "--main_process_port", str(port), "--mixed_precision", "no", "--dynamo_backend", "no"]
        nodes.append(subprocess.Popen([*cmd, "-m", "palette", "train", *args], env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    outputs = [node.communicate(timeout=300) for node in nodes]
    for node, (_, err) in zip(nodes, outputs, strict=True):
        assert node.returncode == 0, err[-3000:]
    assert sum(out.count("last checkpoint") for out, _ in outputs) == 1  # the global main process, on one node
    assert "on 2 process(es)" in (tmp_path / "nodes" / "train.log").read_text()
    assert main(["train", *TRAIN, "--data", str(photo_dir), "--steps", "3", "--out", str(tmp_path / "one"),
                 *EXACT]) == 0
    _assert_same_weights(tmp_path / "nodes", tmp_path / "one")


def _assert_same_ema(a, b, tol):
    ea = ckpt.read_weights(run_folder.latest_checkpoint(a) / "ema.safetensors")[0]
    eb = ckpt.read_weights(run_folder.latest_checkpoint(b) / "ema.safetensors")[0]
    assert ea.keys() == eb.keys()
    worst = max((ea[k] - eb[k]).abs().max().item() for k in ea)
    assert worst < tol, worst


@pytest.mark.integration
def test_fsdp_on_two_processes_trains_the_same_parameters_as_one(photo_dir, tmp_path):
    args = [*TRAIN, "--data", str(photo_dir), "--steps", "3"]
    # micro-batches of 1: FSDP's gradient accumulation (reduce-scatter on the last micro-batch only) as well
    _torchrun(2, "train", *args, "--sharding", "fsdp", "--micro-batch-size", "1", "--out", str(tmp_path / "fsdp"),
              *EXACT)
    assert main(["train", *args, "--out", str(tmp_path / "one"), *EXACT]) == 0
    log = (tmp_path / "fsdp" / "train.log").read_text()
    assert "on 2 process(es)" in log and "FSDP" in log and "2 micro-batch(es) of 1" in log
    assert run_folder.read_training_state(run_folder.latest_checkpoint(tmp_path / "fsdp"))[1]["sharding"] == "fsdp"
    _assert_same_weights(tmp_path / "fsdp", tmp_path / "one")
    _assert_same_ema(tmp_path / "fsdp", tmp_path / "one", 1e-5)


@pytest.fixture(scope="module")
def fsdp_run(photo_dir, tmp_path_factory):
    """A run trained for 2 steps by 2 FSDP processes, with sharded checkpoints at steps 1 and 2 (tests that change
    it work on a copy)."""
    run = tmp_path_factory.mktemp("fsdp") / "run"
    _torchrun(2, "train", *TRAIN, "--data", str(photo_dir), "--sharding", "fsdp", "--steps", "2", "--out", str(run),
              *EXACT)
    return run


@pytest.mark.integration
def test_an_fsdp_checkpoint_is_written_in_shards_and_resumes_on_two_or_one_process(fsdp_run, photo_dir, tmp_path,
                                                                                    monkeypatch):
    import pickle

    args = [*TRAIN, "--data", str(photo_dir), "--sharding", "fsdp"]
    two, one = tmp_path / "two", tmp_path / "one"
    shutil.copytree(fsdp_run, two)
    latest = run_folder.latest_checkpoint(two)
    # each process wrote its own file, holding its half of every sharded tensor (rows split over the processes)
    files = sorted((latest / run_folder.SHARDS).iterdir())
    assert [f.name for f in files] == [f"shard-0000{r}-model-00001-of-00001.safetensors" for r in (1, 2)]
    assert not (latest / "model.safetensors").exists()
    whole = ckpt.read_weights(latest / "ema.safetensors")[0]  # what a sampler loads stays one whole file
    name = max(whole, key=lambda k: whole[k].shape[0] if whole[k].dim() else 0)
    rows, total = [ckpt.read_weights(f)[0][f"ema.{name}"].shape[0] for f in files], whole[name].shape[0]
    assert total > 1 and rows == [-(-total // 2), total - -(-total // 2)]  # FSDP2's split of dimension 0

    shutil.copytree(two, one)
    _torchrun(2, "train", *args, "--steps", "3", "--out", str(two), "--resume", *EXACT)

    def forbidden(*a, **k):
        raise AssertionError("unpickling while reading a sharded checkpoint")

    with monkeypatch.context() as m:  # one process reads all the shards (DCP reshards), from JSON headers only
        for module, loader in ((pickle, "load"), (pickle, "loads"), (torch, "load")):
            m.setattr(module, loader, forbidden)
        assert main(["train", *args, "--steps", "3", "--out", str(one), "--resume", *EXACT]) == 0
    assert "written by 2 process(es), now 1" in (one / "train.log").read_text()
    assert main(["train", *TRAIN, "--data", str(photo_dir), "--steps", "3", "--out", str(tmp_path / "whole"),
                 *EXACT]) == 0
    for resumed in (two, one):
        _assert_same_weights(resumed, tmp_path / "whole")
        _assert_same_ema(resumed, tmp_path / "whole", 1e-5)

    # palette export: one safetensors file of the trained weights, assembled from the shards, that samplers load
    exported = tmp_path / "trained.safetensors"
    assert main(["export", str(two), "--no-ema", "--out", str(exported)]) == 0
    loaded, trained = load_model(exported, "cpu").net.state_dict(), _weights(tmp_path / "whole")
    assert loaded.keys() == trained.keys()
    assert max((loaded[k] - trained[k]).abs().max().item() for k in trained) < 1e-5


def _resume(run, photo_dir) -> int:
    """Resume ``run`` for one more step on this one process."""
    return main(["train", *TRAIN, "--data", str(photo_dir), "--sharding", "fsdp", "--steps", "3", "--out", str(run),
                 "--resume", *EXACT])


@pytest.mark.integration
def test_a_sharded_checkpoint_that_lost_a_process_file_is_refused_not_half_restored(fsdp_run, photo_dir, tmp_path,
                                                                                     capsys):
    run = tmp_path / "run"
    shutil.copytree(fsdp_run, run)
    latest = run_folder.latest_checkpoint(run)
    next((latest / run_folder.SHARDS).glob("shard-00001-*")).unlink()  # the first process's half of every tensor
    refused = f"checkpoint {latest} is incomplete: shards/shard-00001-* missing (it was written by 2 processes"

    assert _resume(run, photo_dir) == 2
    assert refused in capsys.readouterr().err
    for source in (run, latest):
        assert main(["export", str(source), "--no-ema", "--out", str(tmp_path / "trained.safetensors")]) == 2
        assert refused in capsys.readouterr().err
    assert not (tmp_path / "trained.safetensors").exists()
    # a folder that ``latest`` does not name is passed over for the newest complete one, as a half-written one is
    (run / "checkpoints" / "latest").unlink()
    assert run_folder.latest_checkpoint(run) == run / "checkpoints" / "step-000000001"


@pytest.mark.integration
def test_a_sharded_checkpoint_holding_nan_is_refused_on_resume_naming_the_tensor(fsdp_run, photo_dir, tmp_path,
                                                                                  capsys):
    from safetensors import safe_open
    from safetensors.torch import save_file

    run = tmp_path / "run"
    shutil.copytree(fsdp_run, run)
    shard = next((run_folder.latest_checkpoint(run) / run_folder.SHARDS).glob("shard-00002-*"))
    with safe_open(str(shard), framework="pt") as f:
        tensors, metadata = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()
    name = next(k for k in tensors if k.startswith("model.") and tensors[k].numel())
    tensors[name].view(-1)[0] = float("nan")
    save_file(tensors, str(shard), metadata=metadata)

    assert _resume(run, photo_dir) == 2
    assert f"tensor {name} holds NaN or infinite values" in capsys.readouterr().err


@pytest.mark.integration
def test_the_trained_weights_of_a_sharded_run_are_sampled_through_palette_export(fsdp_run):
    latest = run_folder.latest_checkpoint(fsdp_run)
    assert ckpt.resolve_weights(fsdp_run) == latest / "ema.safetensors"  # the whole EMA, as for any run
    for source in (fsdp_run, latest):
        with pytest.raises(PaletteError) as refused:
            ckpt.resolve_weights(source, use_ema=False)
        assert f"`palette export {source} --no-ema --out FILE.safetensors`" in str(refused.value)


@pytest.mark.integration
def test_an_fsdp_run_resumes_on_one_process_and_back_and_matches(fsdp_run, photo_dir, tmp_path):
    args = [*TRAIN, "--data", str(photo_dir)]
    chain = str(tmp_path / "chain")
    shutil.copytree(fsdp_run, chain)
    assert main(["train", *args, "--steps", "3", "--out", chain, "--resume", *EXACT]) == 0
    # back to FSDP: the sharded Adam moments and EMA are cut from the full tensors of the checkpoint
    _torchrun(2, "train", *args, "--steps", "4", "--sharding", "fsdp", "--out", chain, "--resume", *EXACT,
              "train.sample_every=4")
    assert main(["train", *args, "--steps", "4", "--out", str(tmp_path / "whole"), *EXACT]) == 0
    _assert_same_weights(chain, tmp_path / "whole", tol=1e-4)
    _assert_same_ema(chain, tmp_path / "whole", 1e-4)
    assert (tmp_path / "chain" / "samples" / "step0000004_inpainting.png").is_file()  # the gathered EMA's sheet


def test_gradient_accumulation_equals_one_large_batch(photo_dir, tmp_path):
    args = [*TRAIN, "--data", str(photo_dir), "--steps", "3"]
    assert main(["train", *args, "--out", str(tmp_path / "whole"), *EXACT]) == 0
    assert main(["train", *args, "--micro-batch-size", "1", "--out", str(tmp_path / "accumulated"), *EXACT]) == 0
    assert "1 process(es) x 4 micro-batch(es) of 1" in (tmp_path / "accumulated" / "train.log").read_text()
    _assert_same_weights(tmp_path / "whole", tmp_path / "accumulated")


@pytest.mark.integration
def test_a_run_killed_on_two_processes_resumes_on_one_and_matches(photo_dir, tmp_path, events):
    args = [*TRAIN, "--data", str(photo_dir)]
    run, script = tmp_path / "killed", tmp_path / "announcing_palette.py"
    script.write_text(ANNOUNCING_PALETTE)
    proc = _torchrun(2, "train", *args, "--steps", "100000", "--out", str(run), *EXACT, wait=False, script=script,
                     env={"PALETTE_TEST_EVENTS": str(events.path)})
    try:
        events.wait_for(lambda lines: announced(lines, "checkpoint") >= 2, "second checkpoint", proc)
    finally:
        _kill_tree(proc)
    killed_at = int(run_folder.latest_checkpoint(run).name.split("-")[1])
    assert run_folder.read_training_state(run_folder.latest_checkpoint(run))[1]["processes"] == 2
    end = str(killed_at + 3)
    assert main(["train", *args, "--steps", end, "--out", str(run), "--resume", *EXACT]) == 0
    assert run_folder.latest_checkpoint(run).name == f"step-{int(end):09d}"
    assert main(["train", *args, "--steps", end, "--out", str(tmp_path / "whole"), *EXACT]) == 0
    _assert_same_weights(run, tmp_path / "whole", tol=1e-4)
    ema = ckpt.read_weights(run_folder.latest_checkpoint(run) / "ema.safetensors")[0]
    loaded = load_model(run, "cpu").net.state_dict()  # what a user samples: the resumed run's EMA weights
    assert loaded.keys() == ema.keys() and all(torch.equal(loaded[k], ema[k]) for k in ema)


@pytest.mark.integration
def test_the_main_process_chooses_the_checkpoint_every_process_resumes(photo_dir, tmp_path):
    """A process on another node can list a shared run folder late (NFS caches listings): here the second process
    sees no checkpoint at all. The run must resume from the main process's choice, not stop on what one process saw."""
    args = [*TRAIN, "--data", str(photo_dir), "--out", str(tmp_path / "run"), *EXACT]
    assert main(["train", *args, "--steps", "1"]) == 0
    late = tmp_path / "late_listing.py"
    late.write_text(
        "import os, sys\n"
        "from palette import run_folder\n"
        "from palette.cli import main\n"
        "if os.environ.get('RANK') == '1':\n"
        "    run_folder.latest_checkpoint = lambda run_dir: None\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    _torchrun(2, "train", *args, "--steps", "2", "--resume", script=late)
    assert run_folder.latest_checkpoint(tmp_path / "run").name == "step-000000002"
    assert run_folder.read_training_state(run_folder.latest_checkpoint(tmp_path / "run"))[1]["processes"] == 2


@pytest.mark.integration
def test_a_stop_signal_to_one_process_stops_all_at_the_same_step_with_a_checkpoint(photo_dir, tmp_path, events):
    import psutil

    run, script = tmp_path / "run", tmp_path / "announcing_palette.py"
    script.write_text(ANNOUNCING_PALETTE)
    proc = _torchrun(2, "train", *TRAIN, "--data", str(photo_dir), "--steps", "100000", "--out", str(run), *EXACT,
                     "train.checkpoint_every=1000", wait=False, script=script,
                     env={"PALETTE_TEST_EVENTS": str(events.path)})
    log = run / "train.log"
    try:
        # once rank 1 has finished a step it is in the training loop, where a stop signal is caught
        events.wait_for(lambda lines: announced(lines, rank=1) >= 1, "step of rank 1", proc)
        workers = [p for p in psutil.Process(proc.pid).children(recursive=True) if p.environ().get("RANK") == "1"]
        assert len(workers) == 1
        workers[0].send_signal(signal.SIGTERM)  # rank 1 only: the main process must learn of it and stop too
        assert proc.wait(timeout=300) == 0
    except BaseException:
        _kill_tree(proc)
        raise
    stopped = re.search(r"stopped because another process received a stop signal at step (\d+)", log.read_text())
    assert stopped, log.read_text()[-2000:]
    latest = run_folder.latest_checkpoint(run)
    assert latest is not None and run_folder.read_training_state(latest)[1]["step"] == int(stopped.group(1)) >= 1
    lines = events.read()
    assert announced(lines, rank=0) == announced(lines, rank=1) == int(stopped.group(1))  # the same step


@pytest.mark.integration
def test_sharded_sampling_gives_the_same_images_as_one_process(trained_run, photo_dir, tmp_path):
    args = ["sample", "--checkpoint", str(trained_run), "--task", "inpainting", "--mask", "center", "--input",
            str(photo_dir), "--num-samples", "2", "--steps", "3", "--device", "cpu", "--batch-invariant",
            "--no-progress"]
    _torchrun(2, *args, "--out", str(tmp_path / "two"))
    assert main([*args, "--out", str(tmp_path / "one")]) == 0
    names = sorted(p.name for p in (tmp_path / "one").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "two").iterdir()) and len(names) == 12
    for name in names:
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name


@pytest.mark.integration
def test_distributed_eval_shares_images_and_metric_passes_and_reports_once(trained_run, photo_dir,
                                                                            random_weights_dir, tmp_path):
    # batches of one image: the 4 images' metric batches are split 2 + 2 between the processes and gathered by the
    # main one (in a single pass's order), so every figure is one process's
    args = ["eval", "--checkpoint", str(trained_run), "--task", "jpeg", "--data", str(photo_dir), "--steps", "2",
            "--num-samples", "2", "--device", "cpu", "--batch-size", "1", "--batch-invariant",
            "--weights-dir", str(random_weights_dir), "--metrics", "fid,kid,is,pd,lpips,psnr,ssim", "--no-progress"]
    result = _torchrun(2, *args, "--out", str(tmp_path / "two"))
    assert result.stdout.count("| Model |") == 1  # the table is printed by the main process only
    assert main([*args, "--out", str(tmp_path / "one")]) == 0
    one = json.loads((tmp_path / "one" / "metrics.json").read_text())["metrics"]
    two = json.loads((tmp_path / "two" / "metrics.json").read_text())["metrics"]
    assert set(one) >= {"fid", "kid", "is", "pd", "lpips_diversity", "psnr", "ssim"} and set(two) == set(one)
    for name in one:
        assert two[name] == pytest.approx(one[name], rel=1e-5, abs=1e-6), name
    assert sorted(p.name for p in (tmp_path / "two" / "samples").iterdir()) == \
        sorted(p.name for p in (tmp_path / "one" / "samples").iterdir())


def test_gradient_checkpointing_trains_the_same_parameters(photo_dir, tmp_path):
    args = [*TRAIN, "--data", str(photo_dir), "--steps", "2"]
    assert main(["train", *args, "--out", str(tmp_path / "plain"), *EXACT]) == 0
    assert main(["train", *args, "--gradient-checkpointing", "--out", str(tmp_path / "ckpt"), *EXACT]) == 0
    _assert_same_weights(tmp_path / "plain", tmp_path / "ckpt")


def test_bf16_mixed_precision_trains_on_cpu_and_fp16_asks_for_a_gpu(photo_dir, tmp_path, capsys):
    args = [*TRAIN, "--data", str(photo_dir), "--steps", "2"]
    assert main(["train", *args, "--mixed-precision", "bf16", "--out", str(tmp_path / "bf16"), *EXACT]) == 0
    assert "bf16 precision" in (tmp_path / "bf16" / "train.log").read_text()
    weights = _weights(tmp_path / "bf16")
    assert all(w.dtype == torch.float32 and torch.isfinite(w).all() for w in weights.values())
    if not torch.cuda.is_available():
        assert main(["train", *args, "--mixed-precision", "fp16", "--out", str(tmp_path / "fp16"), *EXACT]) == 2
        assert "fp16 needs a CUDA GPU" in capsys.readouterr().err
    assert main(["train", *args, "--low-precision-norm", "--out", str(tmp_path / "norm"), *EXACT]) == 2
    assert "--low-precision-norm needs train.mixed_precision bf16 or fp16" in capsys.readouterr().err


def test_bench_reports_throughput_and_fraction_of_peak(capsys, tmp_path):
    out = tmp_path / "bench.json"
    assert main(["bench", "--preset", "tiny", "--device", "cpu", "--seconds", "0.2", "--json", str(out),
                 *MICRO]) == 0
    text = capsys.readouterr().out
    assert "% of peak" in text and "images/s" in text
    (result,) = json.loads(out.read_text())
    assert result["gflop_forward_per_image"] > 0 and result["peak_gflops"] > 0
    assert result["train_fraction_of_peak"] == pytest.approx(
        3 * result["gflop_forward_per_image"] * result["train_images_per_s"] / result["peak_gflops"], rel=1e-3)
    assert result["layout"] == "channels_last" and result["compiled"] is False  # auto on a CPU; no --compile
    assert result["low_precision_norm"] is False
    assert result["cudnn_benchmark"] is None  # a CUDA switch


def test_configure_cuda_sets_cudnn_search_and_tf32_and_the_config_can_turn_them_off():
    from palette.config import apply_overrides, preset
    from palette.devices import configure_cuda

    def flags():
        return torch.backends.cudnn.benchmark, torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32

    before = flags()
    try:
        config = apply_overrides(preset("tiny"), ["train.cudnn_benchmark=false", "train.tf32=false"])
        configure_cuda(config.train.cudnn_benchmark, config.train.tf32)
        assert flags() == (False, False, False)
        default = preset("tiny").train
        configure_cuda(default.cudnn_benchmark, default.tf32)
        assert flags() == (True, True, True)
    finally:
        configure_cuda(*before[:2])
        torch.backends.cuda.matmul.allow_tf32 = before[2]


def test_bench_low_precision_norm_under_bf16(capsys):
    assert main(["bench", "--preset", "tiny", "--device", "cpu", "--seconds", "0.05", "--mixed-precision", "bf16",
                 "--low-precision-norm", *MICRO]) == 0
    assert "bf16 GroupNorm" in capsys.readouterr().out
    assert main(["bench", "--preset", "tiny", "--device", "cpu", "--seconds", "0.05", "--low-precision-norm",
                 *MICRO]) == 2
    assert "--low-precision-norm needs train.mixed_precision bf16 or fp16" in capsys.readouterr().err


def test_channels_last_auto_means_cpu_only_and_true_false_force_it():
    from palette.config import use_channels_last

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert use_channels_last("auto", cpu) and not use_channels_last("auto", cuda)
    assert use_channels_last(True, cuda) and use_channels_last("true", cuda)
    assert not use_channels_last(False, cpu) and not use_channels_last("false", cpu)
    with pytest.raises(SystemExit):  # one or the other
        main(["bench", "--preset", "tiny", "--device", "cpu", "--seconds", "0.05", "--contiguous", "--channels-last"])


def test_a_command_leaves_its_process_group_so_a_launched_process_exits_cleanly(tmp_path, capsys):
    """Without destroy_process_group, a torchrun process can abort at exit in gloo's teardown (SIGABRT, "terminate
    called without an active exception"; pytorch/pytorch#190489) after its work is done, failing the job."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        assert main(["presets"]) == 0
        assert not dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def test_the_processes_of_a_command_wait_for_each_other_before_tearing_their_group_down(tmp_path, monkeypatch):
    """A process done with its share must not tear gloo down while a peer still works (an eval's second process
    aborted so once, at exit, while the main one computed the metrics)."""
    import torch.distributed as dist

    calls = []
    barrier, destroy = dist.barrier, dist.destroy_process_group
    monkeypatch.setattr(dist, "barrier", lambda *a, **k: (calls.append("barrier"), barrier(*a, **k))[1])
    monkeypatch.setattr(dist, "destroy_process_group", lambda *a, **k: (calls.append("destroy"), destroy(*a, **k))[1])
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        assert main(["presets"]) == 0
        assert calls == ["barrier", "destroy"]
    finally:
        if dist.is_initialized():
            destroy()


def test_a_failed_command_leaves_its_process_group_to_the_launcher(tmp_path, capsys):
    """A failing process exits at once, without a teardown that could wait for peers stuck in a collective; torchrun
    then stops the others."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        assert main(["train", "--task", "inpainting", "--data", str(tmp_path / "missing"), "--out",
                     str(tmp_path / "run")]) == 2
        assert "missing" in capsys.readouterr().err
        assert dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


@pytest.mark.integration
def test_launched_processes_wait_in_collectives_for_the_configured_time(tmp_path):
    """Training's process group takes train.collective_timeout_minutes (NCCL's own default is 10 minutes, and the other
    processes wait while the main one writes a checkpoint); sample and eval take its default."""
    script = tmp_path / "timeout.py"
    script.write_text(
        "import sys, torch, torch.distributed as dist\n"
        "from palette.config import apply_overrides, preset\n"
        "from palette.distributed import Processes\n"
        "from palette.strategy import make_accelerator\n"
        "if sys.argv[1] == 'train':\n"
        "    make_accelerator(apply_overrides(preset('tiny'), ['train.device=cpu', 'train.collective_timeout_minutes=7']))\n"
        "else:\n"
        "    Processes('cpu')\n"
        "timeout = dist.group.WORLD._get_backend(torch.device('cpu')).options._timeout.total_seconds()\n"
        "sys.stdout.write(f'timeout {timeout}\\n')  # one write: the two processes share the pipe\n"
        "dist.destroy_process_group()\n"
    )
    from palette.distributed import COLLECTIVE_TIMEOUT_MINUTES

    for command, seconds in (("train", 7 * 60), ("sample", COLLECTIVE_TIMEOUT_MINUTES * 60)):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script), command]
        result = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
        assert result.stdout.count(f"timeout {seconds:.1f}") == 2, result.stdout


def test_a_launched_process_refuses_a_device_that_names_one_gpu_and_training_ignores_a_saved_one(monkeypatch,
                                                                                                   caplog):
    import logging

    from palette.distributed import check_launched_device
    from palette.errors import PaletteError

    check_launched_device("cuda:1")  # one process: any GPU it likes
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    for fine in ("auto", "cuda", "cpu"):
        check_launched_device(fine)
    with pytest.raises(PaletteError, match=r"^device cuda:1 names one GPU, but this is process 0 of 2"):
        check_launched_device("cuda:1")
    with caplog.at_level(logging.WARNING):  # a run started on cuda:1 resumes on several processes
        check_launched_device("cuda:1", strict=False)
    assert "names one GPU" in caplog.text


@pytest.mark.integration
def test_launched_processes_join_one_run_on_a_machine_without_a_gpu_whatever_the_device_flag(tmp_path):
    """On a CPU machine --device auto (the default) is the CPU: the launched processes join one gloo group, as they do
    with --device cpu, instead of each training alone into the same run folder."""
    script = tmp_path / "join.py"
    script.write_text(
        "import sys, torch.distributed as dist\n"
        "from palette.config import apply_overrides, preset\n"
        "from palette.distributed import Processes\n"
        "from palette.strategy import make_accelerator\n"
        "if sys.argv[1] == 'train':\n"
        "    group = make_accelerator(apply_overrides(preset('tiny'), ['train.device=auto'])).num_processes\n"
        "else:\n"
        "    group = Processes('auto').state.num_processes\n"
        "sys.stdout.write(f'group of {group}, joined {dist.is_initialized()}\\n')  # one write: a shared pipe\n"
        "dist.destroy_process_group()\n"
    )
    for command in ("train", "sample"):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script),
               command]
        result = subprocess.run(cmd, env={**_env(), "CUDA_VISIBLE_DEVICES": ""}, capture_output=True, text=True,
                                timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
        assert result.stdout.count("group of 2, joined True") == 2, result.stdout


def test_processes_another_launcher_started_are_refused_with_what_to_run(monkeypatch, capsys, photo_dir, tmp_path):
    from palette.distributed import check_launcher

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setenv("SLURM_STEP_NUM_TASKS", "2")  # srun -n 2 palette train ...
    assert main(["train", *TRAIN, "--data", str(photo_dir), "--steps", "1", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "this process is one of 2 started by srun (SLURM_STEP_NUM_TASKS=2)" in err and "torchrun" in err, err
    assert not (tmp_path / "run").exists()
    monkeypatch.setenv("SLURM_STEP_NUM_TASKS", "1")  # a one-task step is a plain run
    check_launcher()
    monkeypatch.setenv("SLURM_STEP_NUM_TASKS", "2")
    monkeypatch.setenv("WORLD_SIZE", "8")  # srun starting torchrun on 2 nodes: torchrun's variables join them
    check_launcher()


def test_a_launched_process_left_out_of_the_process_group_is_refused(monkeypatch):
    from palette.distributed import check_joined
    from palette.errors import PaletteError

    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    check_joined(2)
    with pytest.raises(PaletteError, match="this is process 1 of 2 started by a launcher .* joined a group of 1"):
        check_joined(1)
