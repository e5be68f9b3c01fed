"""The commands that sample a trained model: ``sample``, ``panorama``, ``demo`` and ``serve``, each parser beside the
function that reads it."""

from __future__ import annotations

from pathlib import Path

from ..errors import ArgumentError
from .flags import CHECKPOINT_HELP, add_sampling_flags, positive, sampling_options


def add_sample_parser(sub) -> None:
    from ..masks import MASK_NAMES
    from ..tasks import PAIRED, TASK_NAMES

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
    add_sampling_flags(p)
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


def cmd_sample(args) -> int:
    from ..distributed import Processes
    from ..run_folder import make_output_folder
    from ..sampling import input_files, load_model, output_stems, sample_files

    processes = Processes(args.device)
    model = load_model(args.checkpoint, processes.device(args.device), use_ema=not args.no_ema)
    options = sampling_options(args).resolved(model.config)  # refused before anything is written
    inputs = input_files(args.input)
    make_output_folder(args.out)
    stems = output_stems(inputs)  # over every input: the processes' outputs share a folder
    inputs, stems = (every[processes.rank :: processes.world] for every in (inputs, stems))  # every N-th input
    written = sample_files(model, args.task, inputs, Path(args.out), options, mask=args.mask, side=args.side,
                           progress=not args.no_progress, max_pixels=args.max_pixels, stems=stems)
    print(f"wrote {len(written)} sample(s) to {args.out}" + (f" (process {processes.rank} of {processes.world})"
                                                             if processes.world > 1 else ""))
    return 0


def add_panorama_parser(sub) -> None:
    p = sub.add_parser("panorama", help="extend an image again and again with an uncropping model")
    p.add_argument("--checkpoint", required=True, help=CHECKPOINT_HELP)
    p.add_argument("--input", required=True, help="the image to extend (its pixels are kept exactly)")
    p.add_argument("--extend", type=int, required=True, metavar="N",
                   help="applications on each side, each adding half the image's height (width if vertical): "
                        "a 256x256 image with N = 8 becomes 256x2304, the paper's panorama")
    p.add_argument("--direction", default="horizontal", choices=("horizontal", "vertical"),
                   help="horizontal (default): left and right; vertical: up and down")
    p.add_argument("--out", required=True, help="the panorama's file (PNG)")
    add_sampling_flags(p)
    p.set_defaults(func=cmd_panorama)


def cmd_panorama(args) -> int:
    from tqdm.auto import tqdm

    from ..data import load_image
    from ..imagefile import probe, save_image
    from ..panorama import extend_image
    from ..sampling import load_model

    model = load_model(args.checkpoint, args.device, use_ema=not args.no_ema)
    options = sampling_options(args).resolved(model.config)
    path = Path(args.input)
    if not path.is_file():
        raise ArgumentError("image", f"{path}: no such file")
    if args.extend < 1:
        raise ArgumentError("extend", f"must be at least 1, got {args.extend}")
    try:
        image = load_image(path, model.config.model.channels, args.max_pixels)
        bits = probe(path, args.max_pixels).bits
    except (OSError, ValueError) as err:
        raise ArgumentError("image", f"{path}: cannot be read as an image ({err})") from None
    with tqdm(total=args.extend * options.steps, desc="panorama", unit="step", disable=args.no_progress) as bar:
        pano = extend_image(model, image, args.extend, args.direction, options, on_step=lambda: bar.update(1))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_image(pano, out, bits)
    print(f"wrote {out} ({pano.shape[2]}x{pano.shape[1]})")
    return 0


def add_demo_parser(sub) -> None:
    from ..samplers import SAMPLERS
    from ..tasks import PAPER_TASKS

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


def cmd_demo(args) -> int:
    from ..demo import run_demo

    train = args.train or args.steps is not None  # --steps alone trains, as it did before the packaged model
    sheets = run_demo(Path(args.out), train=train, steps=1000 if args.steps is None else args.steps,
                      sample_steps=args.sample_steps, sampler=args.sampler, num_samples=args.num_samples,
                      device=args.device, overrides=args.overrides, progress=not args.no_progress,
                      tasks=[t.strip() for t in args.tasks.split(",") if t.strip()])
    for sheet in sheets:
        print(sheet)
    return 0


def add_serve_parser(sub) -> None:
    from ..imagefile import DEFAULT_MAX_PIXELS
    from ..webapp import DEFAULT_MAX_OUTPUT_PIXELS, DEFAULT_MAX_TILED_PIXELS, DEFAULT_REQUEST_BUDGET

    p = sub.add_parser("serve", help="a web page to sample a trained model")
    p.add_argument("--checkpoint", help="run folder or .safetensors file: the model of every visitor (default, "
                   "without --allow-load: palette:demo, the packaged demo model)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--device", default="auto")
    p.add_argument("--max-upload-mb", type=float, default=20)
    p.add_argument("--max-pixels", type=positive, default=DEFAULT_MAX_PIXELS, metavar="N",
                   help=f"refuse uploads whose header claims more pixels (default {DEFAULT_MAX_PIXELS:,})")
    p.add_argument("--allow-load", metavar="DIR",
                   help="without --checkpoint: visitors may load, for themselves, checkpoints found under DIR only")
    p.add_argument("--request-budget", type=float, default=DEFAULT_REQUEST_BUDGET / 1e6, metavar="MILLIONS",
                   help="the most work of one request: network evaluations x pixels of each, in millions (default "
                        f"{DEFAULT_REQUEST_BUDGET / 1e6:g}: e.g. 3 samples of 1000 steps at 256x256)")
    p.add_argument("--max-tiled-pixels", type=positive, default=DEFAULT_MAX_TILED_PIXELS, metavar="N",
                   help="the largest image sampled at its own size: tiled sampling's canvas, a panorama (default "
                        f"{DEFAULT_MAX_TILED_PIXELS:,})")
    p.add_argument("--max-output-pixels", type=positive, default=DEFAULT_MAX_OUTPUT_PIXELS, metavar="N",
                   help="the most pixels the samples of one request hold together at full size (default "
                        f"{DEFAULT_MAX_OUTPUT_PIXELS:,})")
    p.set_defaults(func=cmd_serve)


def cmd_serve(args) -> int:
    from ..checkpoint import DEMO_CHECKPOINT
    from ..webapp import serve

    # with neither a model nor a folder to load from, everyone gets the packaged demo model
    checkpoint = args.checkpoint or (None if args.allow_load else DEMO_CHECKPOINT)
    serve(checkpoint, host=args.host, port=args.port, device=args.device, max_upload_mb=args.max_upload_mb,
          max_pixels=args.max_pixels, allow_load=args.allow_load, request_budget=int(args.request_budget * 1e6),
          max_tiled_pixels=args.max_tiled_pixels, max_output_pixels=args.max_output_pixels)
    return 0
