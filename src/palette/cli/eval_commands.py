"""The commands that measure a model: ``eval``, ``eval-table`` and ``weights`` (the metric backbones), each parser
beside the function that reads it."""

from __future__ import annotations

from pathlib import Path

from ..errors import PaletteError
from .flags import CHECKPOINT_HELP, add_sampling_flags


def add_eval_parser(sub) -> None:
    from ..evaluate import METRICS as EVAL_METRICS
    from ..masks import MASK_NAMES
    from ..metrics import DIVERSITY_PAIRS as EVAL_DIVERSITY
    from ..protocols import LABEL_SPACES, PROTOCOLS
    from ..tasks import TASK_NAMES

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
    add_sampling_flags(p)
    p.set_defaults(func=cmd_eval)


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
    from ..evaluate import METRICS, EvalOptions, evaluate
    from ..protocols import resolve
    from ..sampling import load_model
    from ..sampling_options import check_seed

    check_seed(args.seed)
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
    from ..checkpoint import resolve_weights
    from ..distributed import Processes

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


def add_eval_table_parser(sub) -> None:
    p = sub.add_parser("eval-table", help="one Markdown table (the paper's layout) of several eval results")
    p.add_argument("results", nargs="+", help="eval folders or their metrics.json files")
    p.add_argument("--out", help="also write the table to this file")
    p.set_defaults(func=cmd_eval_table)


def cmd_eval_table(args) -> int:
    from ..evaluate import markdown_table, read_results

    table = markdown_table(read_results(args.results))
    if args.out:
        Path(args.out).write_text(table)
    print(table, end="")
    return 0


def add_weights_parser(sub) -> None:
    p = sub.add_parser("weights", help="list or download the metric backbones' weights")
    p.add_argument("action", choices=("list", "download"))
    p.add_argument("names", nargs="*", help="default: all")
    p.add_argument("--weights-dir")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_weights)


def cmd_weights(args) -> int:
    from .. import weights as metric_weights

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
