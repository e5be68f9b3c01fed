"""The ``palette`` command: a thin layer of flags over the Python functions."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from .errors import PaletteError

CHECKPOINT_HELP = "run folder, checkpoint folder or .safetensors file (palette:demo: the packaged demo model)"


class _TqdmHandler(logging.StreamHandler):
    """Log lines that do not tear progress bars. tqdm's public tool for this, ``tqdm.contrib.logging.
    logging_redirect_tqdm``, swaps handlers for the length of a ``with`` block; the command installs this one for its
    whole life instead (tqdm's handler class itself is private)."""

    def emit(self, record):
        from tqdm.auto import tqdm

        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # pragma: no cover - logging must never raise
            self.handleError(record)


def _setup_logging(verbose: bool) -> None:
    handler = _TqdmHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s" if verbose else "%(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [h for h in root.handlers if not isinstance(h, (_TqdmHandler, logging.FileHandler))]
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    logging.getLogger("palette").setLevel(logging.DEBUG if verbose else logging.INFO)


def _add_run_file_log(run_dir: Path, name: str = "train.log") -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(run_dir / name)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logging.getLogger().addHandler(handler)


def cmd_presets(args) -> int:
    from .config import PRESETS, preset
    from .unet import count_parameters

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


def _train_config(args):
    from .config import Config, apply_overrides, preset
    from .tasks import PAIRED, TASK_NAMES, parse_task_weights

    run_dir = Path(args.out)
    flags = {
        "task.name": args.task, "data.path": args.data, "model.image_size": args.image_size,
        "train.batch_size": args.batch_size, "train.steps": args.steps, "diffusion.loss": args.loss,
        "diffusion.objective": args.objective, "train.device": args.device, "train.seed": args.seed,
        "data.num_workers": args.workers, "train.micro_batch_size": args.micro_batch_size,
        "train.mixed_precision": args.mixed_precision,
        "train.gradient_checkpointing": True if args.gradient_checkpointing else None,
        "train.low_precision_norm": True if args.low_precision_norm else None,
        "train.compile": True if args.compile else None, "train.time_limit_minutes": args.time_limit,
        "train.sharding": args.sharding, "data.max_pixels": args.max_pixels,
    }
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
    given = [f"{k}={v}" for k, v in flags.items() if v is not None]
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

    from .checkpoint import RunLock, check_output_path, latest_checkpoint
    from .distributed import check_launcher
    from .train import train

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


def cmd_distill(args) -> int:
    from .checkpoint import check_output_path
    from .distill import distill
    from .distributed import check_launcher

    out = check_output_path(args.out)
    check_launcher()
    flags = {"data.path": args.data, "train.batch_size": args.batch_size, "train.device": args.device,
             "train.time_limit_minutes": args.time_limit, "data.num_workers": args.workers, "train.lr": args.lr}
    overrides = [f"{k}={v}" for k, v in flags.items() if v is not None] + list(args.overrides)
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


def cmd_sample(args) -> int:
    from .sampling import check_seed, input_files, load_model, output_stems, sample_files, tile_overlap_of

    if args.num_samples < 1:
        raise PaletteError(f"--num-samples must be at least 1, got {args.num_samples}")
    check_seed(args.seed, "--seed")
    from .checkpoint import make_output_folder
    from .distributed import Processes

    make_output_folder(args.out)

    processes = Processes(args.device)
    model = load_model(args.checkpoint, processes.device(args.device), use_ema=not args.no_ema)
    tile_overlap = tile_overlap_of(model, args.tile, args.overlap)
    inputs = input_files(args.input)
    stems = output_stems(inputs)  # over every input: the processes' outputs share a folder
    inputs, stems = (every[processes.rank :: processes.world] for every in (inputs, stems))  # every N-th input
    written = sample_files(
        model, args.task, inputs, Path(args.out), num_samples=args.num_samples, steps=args.steps,
        seed=args.seed, mask=args.mask, side=args.side, batch_size=args.batch_size, progress=not args.no_progress,
        sampler=args.sampler, eta=args.eta, schedule=args.schedule, save_process=args.save_process,
        batch_invariant=args.batch_invariant, tile_overlap=tile_overlap, max_pixels=args.max_pixels, stems=stems,
        guidance=args.guidance,
    )
    print(f"wrote {len(written)} sample(s) to {args.out}" + (f" (process {processes.rank} of {processes.world})"
                                                             if processes.world > 1 else ""))
    return 0


def cmd_panorama(args) -> int:
    from tqdm.auto import tqdm

    from .data import load_image
    from .imagefile import probe, save_image
    from .panorama import extend_image
    from .sampling import check_sampling_args, check_seed, load_model

    check_seed(args.seed, "--seed")
    model = load_model(args.checkpoint, args.device, use_ema=not args.no_ema)
    steps, _ = check_sampling_args(model, args.steps, args.sampler, args.schedule, 1, eta=args.eta,
                                   guidance=args.guidance)
    path = Path(args.input)
    if not path.is_file():
        raise PaletteError(f"--input {path}: no such file")
    if args.extend < 1:
        raise PaletteError(f"--extend must be at least 1, got {args.extend}")
    try:
        image = load_image(path, model.config.model.channels, args.max_pixels)
        bits = probe(path, args.max_pixels).bits
    except (OSError, ValueError) as err:
        raise PaletteError(f"--input {path}: cannot be read as an image ({err})") from None
    with tqdm(total=args.extend * steps, desc="panorama", unit="step", disable=args.no_progress) as bar:
        pano = extend_image(model, image, args.extend, args.direction, steps=steps, sampler=args.sampler,
                            seed=args.seed, eta=args.eta, schedule=args.schedule, on_step=lambda: bar.update(1),
                            guidance=args.guidance)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_image(pano, out, bits)
    print(f"wrote {out} ({pano.shape[2]}x{pano.shape[1]})")
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo

    train = args.train or args.steps is not None  # --steps alone trains, as it did before the packaged model
    sheets = run_demo(Path(args.out), train=train, steps=1000 if args.steps is None else args.steps, sample_steps=args.sample_steps,
                      sampler=args.sampler, num_samples=args.num_samples, device=args.device,
                      overrides=args.overrides, progress=not args.no_progress,
                      tasks=[t.strip() for t in args.tasks.split(",") if t.strip()])
    for sheet in sheets:
        print(sheet)
    return 0


def cmd_serve(args) -> int:
    from .checkpoint import DEMO_CHECKPOINT
    from .webapp import serve

    # with neither a model nor a folder to load from, everyone gets the packaged demo model
    checkpoint = args.checkpoint or (None if args.allow_load else DEMO_CHECKPOINT)
    serve(checkpoint, host=args.host, port=args.port, device=args.device, max_upload_mb=args.max_upload_mb,
          max_pixels=args.max_pixels, allow_load=args.allow_load, request_budget=int(args.request_budget * 1e6),
          max_tiled_pixels=args.max_tiled_pixels, max_output_pixels=args.max_output_pixels)
    return 0


def _parse_shard(text: str | None) -> tuple[int, int]:
    if text is None:
        return 0, 1
    try:
        index, count = (int(v) for v in text.split("/"))
    except ValueError:
        raise PaletteError(f"--shard {text!r}: expected I/N, e.g. 0/4") from None
    if not (count >= 1 and 0 <= index < count):
        raise PaletteError(f"--shard {text}: I must be in 0..N-1")
    return index, count


def cmd_eval(args) -> int:
    from .evaluate import METRICS, EvalOptions, evaluate
    from .protocols import resolve
    from .sampling import check_seed, load_model

    check_seed(args.seed, "--seed")
    metrics = tuple(m.strip() for m in args.metrics.split(",")) if args.metrics else METRICS
    options = EvalOptions(
        task=args.task, num_samples=args.num_samples, steps=args.steps, sampler=args.sampler, eta=args.eta,
        schedule=args.schedule, guidance=args.guidance, seed=args.seed, batch_size=args.batch_size,
        batch_invariant=args.batch_invariant, mask=args.mask,
        mask_file=Path(args.mask_file) if args.mask_file else None, mask_category=args.mask_category,
        quality=args.quality, metrics=metrics, weights_dir=args.weights_dir,
        reference=Path(args.reference) if args.reference else None, diversity=args.diversity,
        reference_stats=Path(args.reference_stats) if args.reference_stats else None, limit=args.limit,
        name=args.name, max_pixels=args.max_pixels,
    )
    from .checkpoint import resolve_weights
    from .distributed import Processes

    eval_set = resolve(args.protocol, args.data, args.places_list, args.label_space, args.fid5k_lists)
    processes = Processes(args.device)
    model = load_model(args.checkpoint, processes.device(args.device), use_ema=not args.no_ema)
    device = next(model.parameters()).device
    if processes.world > 1 and args.shard:
        raise PaletteError("--shard is for separate jobs; under torchrun the processes share the work by themselves")
    result = evaluate(model, eval_set, options, Path(args.out), shard=_parse_shard(args.shard), device=device,
                      progress=not args.no_progress and processes.main, checkpoint=args.checkpoint,
                      processes=processes, weights_file=resolve_weights(args.checkpoint, not args.no_ema))
    if result is not None:
        print((Path(args.out) / "table.md").read_text(), end="")
        print(f"all figures: {Path(args.out) / 'metrics.json'}")
    return 0


def cmd_eval_table(args) -> int:
    from .evaluate import markdown_table, read_results

    table = markdown_table(read_results(args.results))
    if args.out:
        Path(args.out).write_text(table)
    print(table, end="")
    return 0


def cmd_weights(args) -> int:
    from . import weights as metric_weights

    names = args.names or list(metric_weights.WEIGHTS)
    for name in names:
        metric_weights._spec(name)
    if args.action == "download":
        for name in names:
            print(f"{name}: {metric_weights.download(name, args.weights_dir, progress=not args.no_progress)}")
        return 0
    print(f"weights folder: {metric_weights.weights_dir(args.weights_dir)}")
    for name in names:
        spec, found = metric_weights.WEIGHTS[name], metric_weights.find(name, args.weights_dir)
        if found is None:
            state = f"missing ({spec.filename}, SHA-256 {spec.sha256_prefix}...; {spec.url})"
        else:
            standard = metric_weights.is_standard(name, metric_weights.sha256(found))
            state = f"{found} ({'standard' if standard else 'NOT the standard file'})"
        print(f"  {name:20s} {state}\n  {'':20s} for {spec.used_for}")
    return 0


def cmd_export(args) -> int:
    from .checkpoint import export_weights

    print(export_weights(args.checkpoint, args.out, use_ema=not args.no_ema))
    return 0


def cmd_bench(args) -> int:
    import json

    from .bench import as_dict, bench_config, report, run_bench

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


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _sampling_flags(p: argparse.ArgumentParser) -> None:
    """The flags every sampling command shares."""
    from .imagefile import DEFAULT_MAX_PIXELS
    from .samplers import SAMPLERS, SCHEDULES
    from .sampling import MAX_SEED

    p.add_argument("--steps", type=int, help="network evaluations per sample (default: diffusion.sample_steps)")
    p.add_argument("--sampler", choices=SAMPLERS,
                   help="ancestral (the paper's), ddim, dpmpp-2m, dpmpp-2m-sde or unipc (default: diffusion.sampler)")
    p.add_argument("--eta", type=float, help="DDIM's noise, 0 (deterministic) to 1")
    p.add_argument("--guidance", type=float, default=0.0, metavar="W",
                   help="classifier-free guidance weight, 0 (default: none) or more; needs a model trained with "
                        "train.cond_drop_prob > 0 (docs/guidance.md)")
    p.add_argument("--schedule", choices=SCHEDULES,
                   help="inference: the paper's 1e-4..0.09 schedule; training: the trained noise levels only")
    p.add_argument("--seed", type=int, default=0, help=f"0 to {MAX_SEED} (default 0)")
    p.add_argument("--max-pixels", type=_positive, default=DEFAULT_MAX_PIXELS, metavar="N",
                   help=f"refuse image files whose header claims more pixels (default {DEFAULT_MAX_PIXELS:,}; "
                        "docs/limits.md)")
    p.add_argument("--device", default="auto",
                   help="auto (default), cpu, cuda, cuda:1, ...; launched processes each use their own GPU")
    p.add_argument("--no-ema", action="store_true", help="use the raw weights instead of their EMA")
    p.add_argument("--no-progress", action="store_true")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="palette", description="Palette: image-to-image diffusion models.")
    parser.add_argument("--verbose", action="store_true", help="more detailed logs")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_presets_parser(sub)
    _add_train_parser(sub)
    _add_distill_parser(sub)
    _add_sample_parser(sub)
    _add_eval_parser(sub)
    _add_eval_table_parser(sub)
    _add_weights_parser(sub)
    _add_export_parser(sub)
    _add_bench_parser(sub)
    _add_panorama_parser(sub)
    _add_serve_parser(sub)
    _add_demo_parser(sub)
    from .study.commands import add_study_parser

    add_study_parser(sub)
    return parser


def _add_presets_parser(sub) -> None:
    p = sub.add_parser("presets", help="list the network presets with their parameter counts")
    p.set_defaults(func=cmd_presets)


def _add_train_parser(sub) -> None:
    from .config import allowed
    from .imagefile import DEFAULT_MAX_PIXELS
    from .tasks import PAIRED, TASK_NAMES

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
    p.add_argument("--max-pixels", type=_positive, metavar="N",
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


def _add_distill_parser(sub) -> None:
    from .distill import METHODS

    p = sub.add_parser("distill", help="distil a trained model into students that sample in a few steps")
    p.add_argument("--teacher", required=True, help="the trained model: run folder, checkpoint folder or .safetensors")
    p.add_argument("--out", required=True, help="distillation folder: one run folder steps-NNNN per round")
    p.add_argument("--method", choices=METHODS, default="progressive",
                   help="progressive distillation (Salimans & Ho 2022): each round halves the DDIM steps")
    p.add_argument("--from-steps", type=int, default=128, metavar="N",
                   help="the teacher's DDIM steps in the first round (default 128)")
    p.add_argument("--to-steps", type=int, default=1, metavar="N", help="the last student's steps (default 1)")
    p.add_argument("--steps-per-round", type=_positive, default=2000, metavar="N",
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


def _add_sample_parser(sub) -> None:
    from .masks import MASK_NAMES
    from .tasks import PAIRED, TASK_NAMES

    p = sub.add_parser("sample", help="sample a trained model on image files")
    p.add_argument("--checkpoint", required=True, help=CHECKPOINT_HELP)
    p.add_argument("--task", required=True, choices=(*TASK_NAMES, PAIRED),
                   help="one the checkpoint was trained for; sr-x2 and sr-x4 take the low-resolution image and write "
                        "one 2 or 4 times larger; paired takes source images (16-bit in, 16-bit out)")
    p.add_argument("--input", required=True, help="an image file or a folder of images")
    p.add_argument("--mask", help=f"inpainting mask file (white = fill) or a name: {', '.join(MASK_NAMES)}")
    p.add_argument("--side", default="right", choices=("left", "right", "top", "bottom", "all"),
                   help="uncropping: the side to extend (default right, the paper's evaluation)")
    p.add_argument("--num-samples", type=int, default=1)
    _sampling_flags(p)
    p.add_argument("--save-process", type=int, nargs="?", const=8, default=0, metavar="P",
                   help="also write <stem>_<k>_process.png, the y0 estimates at P steps (default 8)")
    p.add_argument("--batch-size", type=int, default=16, help="images sampled at once")
    p.add_argument("--batch-invariant", action="store_true",
                   help="run the network one image at a time: each output is bit-identical to sampling it alone")
    p.add_argument("--tile", action="store_true",
                   help="sample each image at its own size in overlapping tiles of the model's size, blended at every "
                        "step (colorization, jpeg, sr-x2/x4, deblurring, denoising, paired, inpainting of small holes)")
    p.add_argument("--overlap", type=int, metavar="PX", help="--tile: pixels shared by neighbouring tiles "
                                                              "(default: a quarter of the model's size)")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_sample)


def _add_eval_parser(sub) -> None:
    from .evaluate import METRICS as EVAL_METRICS
    from .masks import MASK_NAMES
    from .metrics import DIVERSITY_PAIRS as EVAL_DIVERSITY
    from .protocols import LABEL_SPACES, PROTOCOLS
    from .tasks import TASK_NAMES

    p = sub.add_parser("eval", help="generate outputs for an evaluation set and compute FID, IS, CA, PD, diversity",
                       description="Sharded and resumable: re-running skips images whose samples exist.")
    p.add_argument("--checkpoint", required=True, help=CHECKPOINT_HELP)
    p.add_argument("--task", required=True, choices=TASK_NAMES)
    p.add_argument("--data", required=True,
                   help="folder or list file of images (a list may give labels); with --protocol, the dataset folder")
    p.add_argument("--protocol", choices=PROTOCOLS,
                   help="ctest10k (ImageNet), places10k (Places2), fid5k (ColTran's colorization FID-5K); "
                        "see docs/evaluation.md")
    p.add_argument("--label-space", choices=LABEL_SPACES,
                   help="without --protocol: the classes a list's labels index; CA needs imagenet-1k")
    p.add_argument("--places-list", help="places10k: Places365's places365_val.txt (default: in --data)")
    p.add_argument("--fid5k-lists", metavar="DIR",
                   help="fid5k: the folder of ColTran's eval_file_names.txt and reference_file_names.txt (from "
                   "google-research/big_vision; default $PALETTE_CACHE_DIR/fid5k or ~/.cache/palette/fid5k)")
    p.add_argument("--out", required=True, help="folder for samples, metrics.json, table.md, sheet.png")
    p.add_argument("--num-samples", type=int, default=1, help="K samples per input (diversity needs K >= 2)")
    p.add_argument("--mask", help=f"inpainting/uncropping mask name: {', '.join(MASK_NAMES)} "
                   "(default freeform-20-30 / uncrop-right)")
    p.add_argument("--mask-file", help="the paper's bit-packed mask archive (.npz); image i gets mask i")
    p.add_argument("--mask-category", help="the archive's category, e.g. freeform-20-30 or '20-30%% freeform'")
    p.add_argument("--quality", type=int, default=10, help="jpeg: quality factor of the inputs (paper: 5, 10, 20)")
    p.add_argument("--metrics", help=f"comma-separated subset of {','.join(EVAL_METRICS)} (default: all)")
    p.add_argument("--reference", help="folder or list of FID reference images (default: the protocol's, the full "
                   "validation set in --data, fid5k: ColTran's 5,000; without --protocol the evaluated originals)")
    p.add_argument("--diversity", choices=EVAL_DIVERSITY, default="paper",
                   help="sample pairs of the diversity figures: paper (LPIPS between consecutive samples, MS-SSIM of "
                        "the first against each other) or all-pairs")
    p.add_argument("--reference-stats", help="reference statistics file: read if it exists, else written")
    p.add_argument("--weights-dir", help="metric backbone weights (default $PALETTE_WEIGHTS_DIR or "
                   "~/.cache/palette/weights); see `palette weights`")
    p.add_argument("--shard", metavar="I/N", help="only generate the images whose index is I modulo N (no metrics); "
                   "run every shard, then once without")
    p.add_argument("--limit", type=int, help="evaluate the first N images only")
    p.add_argument("--name", help="the row name in the table (default: checkpoint, sampler, steps)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--batch-invariant", action="store_true",
                   help="samples bit-identical whatever the batch, so resumed and sharded runs match a single run "
                        "exactly (slower; without it they match up to floating-point rounding)")
    _sampling_flags(p)
    p.set_defaults(func=cmd_eval)


def _add_eval_table_parser(sub) -> None:
    p = sub.add_parser("eval-table", help="one Markdown table (the paper's layout) of several eval results")
    p.add_argument("results", nargs="+", help="eval folders or their metrics.json files")
    p.add_argument("--out", help="also write the table to this file")
    p.set_defaults(func=cmd_eval_table)


def _add_weights_parser(sub) -> None:
    p = sub.add_parser("weights", help="list or download the metric backbones' weights")
    p.add_argument("action", choices=("list", "download"))
    p.add_argument("names", nargs="*", help="default: all")
    p.add_argument("--weights-dir")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_weights)


def _add_export_parser(sub) -> None:
    p = sub.add_parser("export", help="write a checkpoint's weights as one safetensors file (also a sharded one's)")
    p.add_argument("checkpoint", help="a run folder (its latest checkpoint) or a checkpoint folder")
    p.add_argument("--out", required=True, help="the .safetensors file to write")
    p.add_argument("--no-ema", action="store_true", help="the trained weights, not their EMA")
    p.set_defaults(func=cmd_export)


def _add_bench_parser(sub) -> None:
    from .config import allowed

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


def _add_panorama_parser(sub) -> None:
    p = sub.add_parser("panorama", help="extend an image again and again with an uncropping model")
    p.add_argument("--checkpoint", required=True, help=CHECKPOINT_HELP)
    p.add_argument("--input", required=True, help="the image to extend (its pixels are kept exactly)")
    p.add_argument("--extend", type=int, required=True, metavar="N",
                   help="applications on each side, each adding half the image's height (width if vertical): "
                        "a 256x256 image with N = 8 becomes 256x2304, the paper's panorama")
    p.add_argument("--direction", default="horizontal", choices=("horizontal", "vertical"),
                   help="horizontal (default): left and right; vertical: up and down")
    p.add_argument("--out", required=True, help="the panorama's file (PNG)")
    _sampling_flags(p)
    p.set_defaults(func=cmd_panorama)


def _add_serve_parser(sub) -> None:
    from .imagefile import DEFAULT_MAX_PIXELS
    from .webapp import DEFAULT_MAX_OUTPUT_PIXELS, DEFAULT_MAX_TILED_PIXELS, DEFAULT_REQUEST_BUDGET

    p = sub.add_parser("serve", help="a web page to sample a trained model")
    p.add_argument("--checkpoint", help="run folder or .safetensors file: the model of every visitor (default, "
                   "without --allow-load: palette:demo, the packaged demo model)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--device", default="auto")
    p.add_argument("--max-upload-mb", type=float, default=20)
    p.add_argument("--max-pixels", type=_positive, default=DEFAULT_MAX_PIXELS, metavar="N",
                   help=f"refuse uploads whose header claims more pixels (default {DEFAULT_MAX_PIXELS:,})")
    p.add_argument("--allow-load", metavar="DIR",
                   help="without --checkpoint: visitors may load, for themselves, checkpoints found under DIR only")
    p.add_argument("--request-budget", type=float, default=DEFAULT_REQUEST_BUDGET / 1e6, metavar="MILLIONS",
                   help="the most work of one request: network evaluations x pixels of each, in millions (default "
                        f"{DEFAULT_REQUEST_BUDGET / 1e6:g}: e.g. 3 samples of 1000 steps at 256x256)")
    p.add_argument("--max-tiled-pixels", type=_positive, default=DEFAULT_MAX_TILED_PIXELS, metavar="N",
                   help="the largest image sampled at its own size: tiled sampling's canvas, a panorama (default "
                        f"{DEFAULT_MAX_TILED_PIXELS:,})")
    p.add_argument("--max-output-pixels", type=_positive, default=DEFAULT_MAX_OUTPUT_PIXELS, metavar="N",
                   help="the most pixels the samples of one request hold together at full size (default "
                        f"{DEFAULT_MAX_OUTPUT_PIXELS:,})")
    p.set_defaults(func=cmd_serve)


def _add_demo_parser(sub) -> None:
    from .samplers import SAMPLERS
    from .tasks import PAPER_TASKS

    p = sub.add_parser("demo", help="one sheet per task of the packaged demo model (or, with --train, of one "
                       "trained here) on photos it never trained on")
    p.add_argument("--out", default="demo-out")
    p.add_argument("--train", action="store_true",
                   help="train a tiny model from scratch in OUT/run (about 5 minutes on 2 CPU cores) instead of "
                        "sampling the packaged one; resumes if OUT/run holds one")
    p.add_argument("--steps", type=int, help="with --train: training steps in all (default 1000; implies --train)")
    p.add_argument("--sample-steps", type=int, help="network evaluations per sample (default: the model's, 20)")
    p.add_argument("--sampler", choices=SAMPLERS,
                   help="default: the model's, dpmpp-2m-sde (the paper's: --sampler ancestral --sample-steps 1000)")
    p.add_argument("--num-samples", type=int, default=3)
    p.add_argument("--tasks", default=",".join(PAPER_TASKS),
                   help="comma-separated tasks, one sheet each (default: the paper's four); with --train, the "
                        "tasks of the model it trains")
    p.add_argument("--device", default="auto")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="with --train: config values of the model")
    p.set_defaults(func=cmd_demo)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args.verbose)
    try:
        code = args.func(args)
    except PaletteError as err:
        print(f"palette {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: the last checkpoint written is intact", file=sys.stderr)
        return 130
    if code == 0:  # a failure (or an exception) leaves the process group as it is: see below
        _leave_process_group()
    return code


def _leave_process_group() -> None:
    """End a launched (torchrun) command that succeeded with ``destroy_process_group``: a process that exits with its
    gloo groups alive (FSDP's device mesh adds one) could abort in their teardown ("terminate called without an active
    exception", seen in about one in ten two-process FSDP test runs), failing a job whose work was done. A process
    that failed leaves at once instead: its peers may be waiting in a collective, and a teardown that flushes the
    group (NCCL's) could wait for them; once it has exited the launcher stops the others."""
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
