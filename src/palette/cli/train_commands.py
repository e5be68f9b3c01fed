"""The commands that make models: ``presets``, ``train``, ``distill``, ``bench`` and ``export``, each parser beside
the function that reads it."""

from __future__ import annotations

import logging
from pathlib import Path

from ..errors import PaletteError
from .flags import DISTILL_CONFIG_FLAGS, TRAIN_CONFIG_FLAGS, config_overrides, positive


def add_presets_parser(sub) -> None:
    p = sub.add_parser("presets", help="list the network presets with their parameter counts")
    p.set_defaults(func=cmd_presets)


def cmd_presets(args) -> int:
    from ..config import PRESETS, preset
    from ..unet import count_parameters

    rows = [("preset", "image", "channels", "res blocks", "attention at", "head ch", "batch", "params")]
    for name in PRESETS:
        m = preset(name).model
        layout = f"{m.base_channels} x ({','.join(map(str, m.channel_mult))})"
        attention = ",".join(map(str, m.attention_resolutions))
        rows.append((name, f"{m.image_size}x{m.image_size}", layout, str(m.num_res_blocks), attention,
                     str(m.head_channels), str(preset(name).train.batch_size), f"{count_parameters(m) / 1e6:.1f}M"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for i, row in enumerate(rows):
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
        if i == 0:
            print("  ".join("-" * w for w in widths))
    return 0


def _rank() -> int:
    """This process's rank when launched by torchrun or accelerate launch, else 0."""
    import os

    return int(os.environ.get("RANK", 0))


def _add_run_file_log(run_dir: Path, name: str = "train.log") -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(run_dir / name)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logging.getLogger().addHandler(handler)


def add_train_parser(sub) -> None:
    from ..config import allowed
    from ..imagefile import DEFAULT_MAX_PIXELS
    from ..tasks import PAIRED, TASK_NAMES

    p = sub.add_parser("train", help="train a model on a folder or list of images")
    p.add_argument("--task", choices=(*TASK_NAMES, PAIRED, "multi"),
                   help="what to learn: colorization, inpainting, uncropping, jpeg (the paper's), sr-x2 and sr-x4 "
                        "(super-resolution), deblurring, denoising, paired (x and y given as files), or multi (a mix, "
                        "see --tasks)")
    p.add_argument("--tasks", metavar="NAME[:WEIGHT],...",
                   help="--task multi: the tasks to mix and their sampling weights, normalised, e.g. "
                        "colorization:1,inpainting:2,jpeg:1 (a name alone weighs 1; default: the paper's "
                        "colorization,inpainting,jpeg, equally)")
    p.add_argument("--data", help="folder of images (recursive) or text file listing image paths; for --task paired "
                                  "a folder holding source/ and target/ (matching file names) or a CSV of "
                                  "source,target paths")
    p.add_argument("--out", required=True, help="run folder: config, checkpoints, logs, sample sheets")
    p.add_argument("--preset", help="tiny, small (default), base or paper; see `palette presets`")
    p.add_argument("--image-size", type=int)
    p.add_argument("--batch-size", type=int, help="global batch of one step, over all processes")
    p.add_argument("--micro-batch-size", type=int,
                   help="most examples a process runs at once; more are accumulated (default: no accumulation)")
    p.add_argument("--mixed-precision", choices=allowed("train.mixed_precision"),
                   help="autocast precision (default no)")
    p.add_argument("--gradient-checkpointing", action="store_true", help="recompute activations: less memory")
    p.add_argument("--low-precision-norm", action="store_true",
                   help="under --mixed-precision, run GroupNorm in bf16/fp16 instead of autocast's float32")
    p.add_argument("--compile", action="store_true", help="torch.compile the network (slow to start)")
    p.add_argument("--sharding", choices=allowed("train.sharding"),
                   help="ddp (default): every process holds the model; fsdp: parameters, gradients, optimizer and EMA "
                        "sharded over the processes")
    p.add_argument("--steps", type=int, help="total optimisation steps of the run")
    p.add_argument("--time-limit", type=float, metavar="MINUTES",
                   help="write a checkpoint and stop after this many minutes (resume later with --resume)")
    p.add_argument("--loss", choices=allowed("diffusion.loss"))
    p.add_argument("--objective", choices=allowed("diffusion.objective"))
    p.add_argument("--device", help="auto (default), cpu, cuda, cuda:1, ...; launched processes each use their own GPU")
    p.add_argument("--seed", type=int)
    p.add_argument("--workers", type=int, help="data loading processes")
    p.add_argument("--max-pixels", type=positive, metavar="N",
                   help=f"data.max_pixels: files whose header claims more pixels are skipped as unreadable (default "
                        f"{DEFAULT_MAX_PIXELS:,})")
    resume = p.add_mutually_exclusive_group()
    resume.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    resume.add_argument("--auto-resume", action="store_true",
                        help="continue the run in --out if it holds a checkpoint, else start it (for job scripts "
                             "that are resubmitted or requeued)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="any config value, e.g. train.lr=2e-4")
    p.set_defaults(func=cmd_train)


def _train_config(args):
    from ..config import Config, apply_overrides, preset
    from ..tasks import PAIRED, TASK_NAMES, parse_task_weights

    run_dir = Path(args.out)
    if args.resume and (run_dir / "config.yaml").is_file():
        base = Config.load(run_dir / "config.yaml")
        if args.preset is not None and args.preset != base.preset:
            raise PaletteError(f"--preset {args.preset}: {run_dir} was trained with preset {base.preset}")
    elif args.resume:
        raise PaletteError(f"--resume: {run_dir} holds no run to resume (no config.yaml): drop --resume to start one "
                           "there")
    else:
        base = preset(args.preset or "small")
        if args.task is None:
            raise PaletteError(f"--task is required: one of {', '.join((*TASK_NAMES, PAIRED, 'multi'))}")
        if args.data is None:
            raise PaletteError("--data is required: a folder of images or a text file listing image paths (for "
                               "--task paired: a folder holding source/ and target/, or a CSV of source,target pairs)")
    given = config_overrides(args, TRAIN_CONFIG_FLAGS)
    if args.tasks is not None:
        if (args.task or base.task.name) != "multi":
            raise PaletteError(f"--tasks {args.tasks}: task weights need --task multi")
        try:
            names, weights = parse_task_weights(args.tasks)
        except ValueError as err:
            raise PaletteError(f"--tasks: {err}") from None
        given += [f"task.tasks={','.join(names)}", f"task.weights={','.join(map(str, weights))}"]
    return apply_overrides(base, given + list(args.overrides))


def cmd_train(args) -> int:
    import contextlib

    from ..run_folder import RunLock, check_output_path, latest_checkpoint
    from ..distributed import check_launcher
    from ..train import train

    out = check_output_path(args.out)
    check_launcher()
    if args.auto_resume:
        args.resume = latest_checkpoint(out) is not None
    config = _train_config(args)
    config.validate()
    main_process = _rank() == 0
    # the folder is locked before its log is opened: a refused second run writes nothing into it
    with RunLock(out) if main_process else contextlib.nullcontext():
        if main_process:
            _add_run_file_log(out)
        else:  # one process speaks for a distributed run
            logging.getLogger("palette").setLevel(logging.WARNING)
        last = train(config, out, resume=args.resume, progress=not args.no_progress)
    if _rank() == 0:
        print(f"last checkpoint: {last}")
    return 0


def add_distill_parser(sub) -> None:
    from ..distill import METHODS

    p = sub.add_parser("distill", help="distil a trained model into students that sample in a few steps")
    p.add_argument("--teacher", required=True, help="the trained model: run folder, checkpoint folder or .safetensors")
    p.add_argument("--out", required=True, help="distillation folder: one run folder steps-NNNN per round")
    p.add_argument("--method", choices=METHODS, default="progressive",
                   help="progressive distillation (Salimans & Ho 2022): each round halves the DDIM steps")
    p.add_argument("--from-steps", type=int, default=128, metavar="N",
                   help="the teacher's DDIM steps in the first round (default 128)")
    p.add_argument("--to-steps", type=int, default=1, metavar="N", help="the last student's steps (default 1)")
    p.add_argument("--steps-per-round", type=positive, default=2000, metavar="N",
                   help="optimisation steps of each round (default 2000)")
    p.add_argument("--data", help="training images (default: the teacher's data.path)")
    p.add_argument("--batch-size", type=int, help="global batch of one step (default: the teacher's)")
    p.add_argument("--lr", type=float, help="learning rate (default: the teacher's train.lr)")
    p.add_argument("--device", help="auto (default), cpu, cuda, ...")
    p.add_argument("--workers", type=int, help="data loading processes")
    p.add_argument("--time-limit", type=float, metavar="MINUTES", help="checkpoint and stop each round after this")
    p.add_argument("--resume", action="store_true", help="continue the distillation in --out")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="any config value of the students")
    p.set_defaults(func=cmd_distill)


def cmd_distill(args) -> int:
    from ..run_folder import check_output_path
    from ..distill import distill
    from ..distributed import check_launcher

    out = check_output_path(args.out)
    check_launcher()
    overrides = config_overrides(args, DISTILL_CONFIG_FLAGS) + list(args.overrides)
    if _rank() == 0:
        _add_run_file_log(out, "distill.log")
    else:
        logging.getLogger("palette").setLevel(logging.WARNING)
    done = distill(args.teacher, out, args.from_steps, args.to_steps, args.steps_per_round, overrides,
                   resume=args.resume, progress=not args.no_progress, method=args.method)
    if _rank() == 0:
        for folder in done:
            print(f"student: {folder}")
    return 0


def add_bench_parser(sub) -> None:
    from ..config import allowed

    p = sub.add_parser("bench", help="training and sampling throughput against this device's measured peak")
    p.add_argument("--preset", nargs="+", default=["public"],
                   help="presets to measure; public = the most used public reimplementation's network (default)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--device", default="auto")
    p.add_argument("--mixed-precision", choices=allowed("train.mixed_precision"), default="no")
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--low-precision-norm", action="store_true",
                   help="under --mixed-precision, GroupNorm in bf16/fp16 instead of autocast's float32")
    p.add_argument("--compile", action="store_true")
    layout = p.add_mutually_exclusive_group()
    layout.add_argument("--contiguous", action="store_true", help="NCHW activations (default on GPUs)")
    layout.add_argument("--channels-last", action="store_true", help="channels_last activations (default on CPUs)")
    p.add_argument("--seconds", type=float, default=10.0, help="time spent measuring training (sampling: half)")
    p.add_argument("--json", help="also write the figures to this file")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.set_defaults(func=cmd_bench)


def cmd_bench(args) -> int:
    import json

    from ..bench import as_dict, bench_config, report, run_bench

    results = []
    for name in args.preset:
        config = bench_config(name, list(args.overrides) + ([f"train.batch_size={args.batch_size}"]
                                                            if args.batch_size else []))
        result = run_bench(config, args.device, args.mixed_precision, args.seconds, args.gradient_checkpointing,
                           args.compile, True if args.channels_last else False if args.contiguous else None,
                           args.low_precision_norm)
        print(report(result), flush=True)
        results.append(as_dict(result))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


def add_export_parser(sub) -> None:
    p = sub.add_parser("export", help="write a checkpoint's weights as one safetensors file (also a sharded one's)")
    p.add_argument("checkpoint", help="a run folder (its latest checkpoint) or a checkpoint folder")
    p.add_argument("--out", required=True, help="the .safetensors file to write")
    p.add_argument("--no-ema", action="store_true", help="the trained weights, not their EMA")
    p.set_defaults(func=cmd_export)


def cmd_export(args) -> int:
    from ..run_folder import export_weights

    print(export_weights(args.checkpoint, args.out, use_ema=not args.no_ema))
    return 0
