"""Configuration: a handful of plain values in nested dataclasses, presets, and ``key=value`` overrides.

The dataclasses are where each value's type, default and allowed values live: a field with a fixed set of values is
typed ``Literal[...]``, :meth:`Config.validate` checks every such field against it, and the command line takes its
flags' choices from the same types (:func:`allowed`).

A run's resolved configuration is saved as YAML in its folder and as JSON in the metadata of every weights file, so
a checkpoint alone is enough to rebuild its network, schedules and task.
"""

from __future__ import annotations

import dataclasses
import json
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

import yaml

from .diffusion import INFERENCE_SCHEDULE, TRAINING_SCHEDULE, NoiseSchedule, Parameterization, ScheduleConfig
from .errors import PaletteError
from .imagefile import DEFAULT_MAX_PIXELS
from .samplers import SamplerName, ScheduleName
from .tasks import MULTI_TASK_DEFAULT, PAIRED, TASK_NAMES
from .unet import UNetConfig


@dataclass
class DiffusionConfig:
    train_schedule: ScheduleConfig = TRAINING_SCHEDULE
    inference_schedule: ScheduleConfig = INFERENCE_SCHEDULE
    sample_steps: int = 1000  # network evaluations per sample (1000 with ancestral: the paper's sampler)
    sampler: SamplerName = "ancestral"  # ancestral (the paper), ddim, dpmpp-2m, dpmpp-2m-sde or unipc
    eta: float = 0.0  # DDIM's noise (ddim only): 0 deterministic, 1 DDPM's posterior variance (below the
    # paper's ancestral variance 1 - alpha_t)
    # inference: the paper's 1e-4..0.09; training: only the trained gamma range
    sample_schedule: ScheduleName = "inference"
    clip_denoised: bool = True  # every sampler clips its y0 estimates to [-1, 1] (not in the paper's Algorithm 2)
    loss: Literal["l2", "l1"] = "l2"  # l2 (the paper) or l1 (its ablation)
    # diffusion, or regression: the paper's baseline mapping x to y with L2
    objective: Literal["diffusion", "regression"] = "diffusion"
    # what the network predicts: eps (the paper's noise) or v = sqrt(gamma) eps - sqrt(1 - gamma) y_0 (a distilled
    # student's: y_0 from eps divides by sqrt(gamma), which is about 1e-10 at the first of few sampling steps)
    parameterization: Parameterization = "eps"


@dataclass
class TaskConfig:
    name: str = "inpainting"  # colorization, inpainting, uncropping, jpeg, sr-x2, sr-x4, deblurring, denoising,
    # paired (source/target files) or multi
    tasks: tuple[str, ...] = MULTI_TASK_DEFAULT  # what ``multi`` mixes
    weights: tuple[float, ...] = ()  # ``multi``'s sampling weights, one per task, normalised (empty: uniform)


@dataclass
class DataConfig:
    path: str = ""
    crop_scale_min: float = 1.0  # 1.0: the paper's largest square crop; < 1: random square crops down to this side
    flip: bool = True
    num_workers: int = 1
    max_bad_fraction: float = 0.01  # stop when more files than this cannot be read
    max_pixels: int = DEFAULT_MAX_PIXELS  # a file claiming more pixels is unreadable, refused before decoding
    target_bits: int = 8  # found in the data: 16 when training targets have 16-bit samples (samples are written so)


@dataclass
class TrainConfig:
    steps: int = 1_000_000
    batch_size: int = 1024
    lr: float = 1e-4
    warmup_steps: int = 10_000
    adam_betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema_decay: float = 0.9999
    ema_warmup: bool = False  # decay min(ema_decay, (1 + n) / (10 + n)): lets short runs use their EMA early
    seed: int = 0
    # classifier-free guidance: the probability that an example's source x is replaced by zeros, the "no source"
    # input of guided sampling (0: the paper's recipe, and a model that cannot be guided)
    cond_drop_prob: float = 0.0
    log_every: int = 100
    checkpoint_every: int = 5000
    sample_every: int = 5000  # sample sheets (0: never)
    sheet_images: int = 4
    sheet_samples: int = 2
    keep_checkpoints: int = 2
    device: str = "auto"
    # memory layout of activations: auto is channels_last on CPUs (oneDNN convolutions are faster) and NCHW on GPUs
    # (CUDA's GroupNorm copies channels_last tensors to contiguous ones: docs/performance.md); or true/false
    channels_last: str = "auto"
    # batch_size is the global batch of one optimisation step, over all processes; each process runs it in
    # micro-batches of at most micro_batch_size (0: batch_size / processes) with gradient accumulation between
    micro_batch_size: int = 0
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"  # autocast; weights, optimizer and EMA stay float32
    # under bf16/fp16 autocast, run GroupNorm in that dtype instead of autocast's float32 (saves the casts around
    # every norm; statistics still accumulate in float32). Off: autocast's rule, as PyTorch and the paper's code do
    low_precision_norm: bool = False
    gradient_checkpointing: bool = False  # recompute activations in the backward pass: less memory, ~30% slower
    compile: bool = False  # torch.compile the network (minutes of compilation before the first step)
    # on CUDA: let cuDNN time its convolution algorithms for the run's shapes in the first steps and keep the fastest
    # (torch.backends.cudnn.benchmark); false for runs whose GPU results must repeat bit for bit
    cudnn_benchmark: bool = True
    tf32: bool = True  # on CUDA: float32 matmuls and convolutions on TF32 tensor cores (false: full float32)
    # ddp (each process holds the whole model) or fsdp (parameters, gradients, Adam and EMA sharded over the
    # processes: for networks that do not fit one device several times over)
    sharding: Literal["ddp", "fsdp"] = "ddp"
    time_limit_minutes: float = 0.0  # > 0: checkpoint and stop after this long (a job's allocation); resume later
    # how long a process of a launched run waits in a collective before the run fails: the others wait while the main
    # process writes a checkpoint (8.8 GB for `paper`) or sheets, or while the slowest draws its rows of the sheets
    # (NCCL's default is 10 minutes)
    collective_timeout_minutes: float = 60.0


@dataclass
class DistillConfig:
    # progressive distillation (`palette distill`, Salimans & Ho 2022): this model is a student that samples in
    # `steps` DDIM steps, trained to match two DDIM steps of `teacher` (the teacher's weights) in each of its steps.
    # steps = 0: not a student
    teacher: str = ""
    steps: int = 0


@dataclass
class Config:
    task: TaskConfig = field(default_factory=TaskConfig)
    model: UNetConfig = field(default_factory=UNetConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    preset: str = "paper"

    def to_dict(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Config":
        return _build(cls, d, "")

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def save(self, path: Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))

    @classmethod
    def load(cls, path: Path) -> "Config":
        return cls.from_dict(yaml.safe_load(Path(path).read_text()))

    def validate(self) -> None:
        """Raise PaletteError for values that cannot work together."""
        self._check_ranges()
        self._check_choices()
        if str(self.train.channels_last).lower() not in ("auto", "true", "false"):
            raise PaletteError(f"train.channels_last must be auto, true or false, got {self.train.channels_last!r}")
        if self.task.name not in (*TASK_NAMES, PAIRED, "multi"):
            raise PaletteError(
                f"unknown task {self.task.name!r}: choose one of {', '.join((*TASK_NAMES, PAIRED, 'multi'))}"
            )
        tasks, weights = self.task.tasks, self.task.weights
        if len(set(tasks)) != len(tasks):
            raise PaletteError(f"task.tasks names a task twice: {', '.join(tasks)}")
        if weights and (len(weights) != len(tasks) or not all(w > 0 for w in weights)):
            raise PaletteError(
                f"task.weights must be one positive number per task of task.tasks ({', '.join(tasks)}), got "
                f"{list(weights)}"
            )
        for t in self.task.tasks:
            if t == PAIRED:
                raise PaletteError("task.tasks: paired data cannot be mixed with degradations in a multi-task model")
            if t not in TASK_NAMES:
                raise PaletteError(f"unknown task {t!r} in task.tasks: choose from {', '.join(TASK_NAMES)}")
        source = self.model.source_channels
        if self.model.channels not in (1, 3) or source not in (None, 1, 3):
            raise PaletteError(
                f"model.channels and model.source_channels must be 1 or 3, got {self.model.channels} and {source}"
            )
        if self.train.cond_drop_prob and self.diffusion.objective == "regression":
            raise PaletteError("train.cond_drop_prob is for guided diffusion: the regression baseline has no guidance")
        levels = len(self.model.channel_mult) - 1
        if self.model.image_size % 2**levels:
            raise PaletteError(
                f"--image-size {self.model.image_size} must be divisible by {2**levels} for a network with "
                f"{levels + 1} resolution levels (model.channel_mult={list(self.model.channel_mult)})"
            )
        if self.train.batch_size < 1 or self.train.steps < 1:
            raise PaletteError("--batch-size and --steps must be at least 1")
        if self.train.micro_batch_size < 0:
            raise PaletteError(f"train.micro_batch_size must be 0 (no accumulation) or positive, got "
                               f"{self.train.micro_batch_size}")
        if self.data.max_pixels < 1:
            raise PaletteError(f"data.max_pixels must be at least 1, got {self.data.max_pixels}")
        if not 0 < self.data.crop_scale_min <= 1:
            raise PaletteError(f"data.crop_scale_min must be in (0, 1], got {self.data.crop_scale_min}")
        from .samplers import check_sampler

        try:
            check_sampler(self.diffusion.sampler, 0.0)
            check_sampler("ddim", self.diffusion.eta)  # the config's eta is DDIM's, whatever the default sampler
        except ValueError as err:
            raise PaletteError(f"diffusion.sampler / diffusion.eta: {err}") from None
        limit = self.sampling_schedule().steps
        if not 1 <= self.diffusion.sample_steps <= limit:
            raise PaletteError(f"diffusion.sample_steps must be between 1 and {limit}, got {self.diffusion.sample_steps}")
        if self.distill.steps:
            self._check_student()

    def _check_student(self) -> None:
        """A distilled student samples with DDIM (eta 0) in exactly the steps it was trained for, and predicts v."""
        d, steps = self.diffusion, self.distill.steps
        if d.sampler != "ddim" or d.eta != 0 or d.sample_steps != steps or d.parameterization != "v":
            raise PaletteError(
                f"distill.steps={steps} is a student of progressive distillation: it needs diffusion.sampler=ddim, "
                f"diffusion.eta=0, diffusion.sample_steps={steps} and diffusion.parameterization=v")
        try:
            NoiseSchedule(self.sampling_schedule()).check_halving(steps)
        except ValueError as err:
            raise PaletteError(f"distill.steps: {err}") from None

    def _check_choices(self) -> None:
        """Every ``Literal``-typed field holds one of its values."""
        for section in dataclasses.fields(self):
            values = getattr(self, section.name)
            if not dataclasses.is_dataclass(values):
                continue
            for name, choices in _choices_of(type(values)).items():
                value = getattr(values, name)
                if value not in choices:
                    raise PaletteError(f"{section.name}.{name} must be one of {', '.join(choices)}, got {value!r}")

    def _check_ranges(self) -> None:
        """Numbers outside their range fail late and obscurely (a division by zero at the first log, a loss that turns
        NaN after hours, a data loader's traceback): each must be finite and in its range (:data:`RANGES`)."""
        for key, flag, what, within in RANGES:
            section, name = key.split(".")
            value = getattr(getattr(self, section), name)
            numbers = value if isinstance(value, tuple) else (value,)
            if not (all(math.isfinite(v) for v in numbers) and within(value)):
                raise PaletteError(f"{f'{flag} ({key})' if flag else key} must be {what}, got {_shown(value)}")

    def sampling_schedule(self) -> ScheduleConfig:
        """The discrete schedule samplers walk: the paper's inference schedule, or the training schedule."""
        d = self.diffusion
        return d.inference_schedule if d.sample_schedule == "inference" else d.train_schedule


def _choices_of(cls) -> dict[str, tuple[str, ...]]:
    """The allowed values of each ``Literal``-typed field of the dataclass ``cls``."""
    return {name: get_args(hint) for name, hint in get_type_hints(cls).items() if get_origin(hint) is Literal}


def allowed(key: str) -> tuple[str, ...]:
    """The allowed values of the config field ``key`` (``section.name``), from its ``Literal`` type."""
    section, name = key.split(".")
    return _choices_of(type(getattr(Config(), section)))[name]


# (config key, its flag or "", what it must be, whether a finite value is in range)
RANGES = (
    ("model.image_size", "--image-size", "positive", lambda v: v > 0),
    ("train.lr", "", "positive", lambda v: v > 0),
    ("train.warmup_steps", "", "0 or more", lambda v: v >= 0),
    ("train.adam_betas", "", "two numbers in [0, 1)", lambda v: len(v) == 2 and all(0 <= b < 1 for b in v)),
    ("train.weight_decay", "", "0 or more", lambda v: v >= 0),
    ("train.grad_clip", "", "0 (no clipping) or more", lambda v: v >= 0),
    ("train.ema_decay", "", "between 0 and 1", lambda v: 0 <= v <= 1),
    ("train.cond_drop_prob", "", "in [0, 1)", lambda v: 0 <= v < 1),
    ("train.log_every", "", "at least 1", lambda v: v >= 1),
    ("train.checkpoint_every", "", "at least 1", lambda v: v >= 1),
    ("train.sample_every", "", "0 (no sheets) or more", lambda v: v >= 0),
    ("train.sheet_images", "", "at least 1", lambda v: v >= 1),
    ("train.sheet_samples", "", "at least 1", lambda v: v >= 1),
    ("train.keep_checkpoints", "", "0 (keep all) or more", lambda v: v >= 0),
    ("train.time_limit_minutes", "--time-limit", "0 (no limit) or more", lambda v: v >= 0),
    ("train.collective_timeout_minutes", "", "positive", lambda v: v > 0),
    ("distill.steps", "", "0 (not a student) or more", lambda v: v >= 0),
    ("data.num_workers", "--workers", "0 (load in the training process) or more", lambda v: v >= 0),
    ("data.max_bad_fraction", "", "between 0 and 1", lambda v: 0 <= v <= 1),
)


def _shown(value: Any) -> str:
    return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _build(cls, data: dict[str, Any], where: str):
    if not isinstance(data, dict):
        raise PaletteError(f"config section {where or '(top)'} must be a mapping, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            raise PaletteError(f"unknown config key {where + key!r}; known keys: {', '.join(fields)}")
        kwargs[key] = _coerce(_prototype(cls, fields[key]), value, where + key)
    return cls(**kwargs)


def _prototype(cls, f: dataclasses.Field) -> Any:
    """A value of the field's type: its default, or the type's zero for a required field."""
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return typing.get_type_hints(cls)[f.name]()


def _coerce(default: Any, value: Any, key: str) -> Any:
    if dataclasses.is_dataclass(default):
        if isinstance(value, (list, tuple)) and isinstance(default, ScheduleConfig):
            value = dict(zip(("beta_start", "beta_end", "steps"), value))
        return _build(type(default), value, key + ".")
    if isinstance(default, tuple):
        if isinstance(value, str):
            value = [v for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            value = [value]
        inner = default[0] if default else None
        return tuple(_coerce(inner, v, key) if inner is not None else _scalar(v) for v in value)
    if value is None:
        return None
    if isinstance(default, bool):
        if isinstance(value, str):
            if value.lower() in ("true", "1", "yes"):
                return True
            if value.lower() in ("false", "0", "no"):
                return False
        if isinstance(value, bool):
            return value
        raise PaletteError(f"{key} must be true or false, got {value!r}")
    try:
        if isinstance(default, int):
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if isinstance(default, float):
            return float(value)
    except (TypeError, ValueError):
        raise PaletteError(f"{key} must be a {type(default).__name__}, got {value!r}") from None
    return value


def use_channels_last(value: Any, device: Any) -> bool:
    """Whether ``train.channels_last`` (auto, true or false) means channels_last on ``device`` (a torch.device)."""
    value = str(value).lower()
    return device.type == "cpu" if value == "auto" else value == "true"


def _scalar(text: Any) -> Any:
    return yaml.safe_load(text) if isinstance(text, str) else text


def apply_overrides(config: Config, overrides: list[str]) -> Config:
    """Apply ``section.key=value`` strings (``train.lr=3e-4``, ``model.attention_resolutions=16,8``)."""
    data = config.to_dict()
    for item in overrides:
        if "=" not in item:
            raise PaletteError(f"override {item!r} is not of the form key=value (e.g. train.lr=3e-4)")
        key, text = item.split("=", 1)
        parts = key.strip().split(".")
        node = data
        for part in parts[:-1]:
            if not isinstance(node, dict) or part not in node:
                raise PaletteError(f"unknown config key {key!r} in override {item!r}")
            node = node[part]
        if not isinstance(node, dict) or parts[-1] not in node:
            raise PaletteError(f"unknown config key {key!r} in override {item!r}")
        # a text field takes the text as it is: YAML would read "no" as false and "" as null
        node[parts[-1]] = text if isinstance(node[parts[-1]], str) else _scalar(text)
    return Config.from_dict(data)


# Each preset overrides the defaults above (the paper's recipe). tiny and small are sized to train on a 2-core CPU.
# They keep the paper's 8 channels per GroupNorm group (256 channels, 32 groups) rather than its 32 groups: with 32
# groups of their 32 channels, each norm is an instance norm that removes every channel's mean, the network cannot
# carry x's colours to its output, and JPEG samples came out with random colours (measured: docs/paper-fidelity.md).
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {
        "model": dict(image_size=32, base_channels=32, channel_mult=(1, 2, 2), num_res_blocks=1,
                      attention_resolutions=(8,), head_channels=32, groups=4),
        "train": dict(batch_size=16, steps=2000, lr=5e-4, warmup_steps=100, ema_decay=0.999, ema_warmup=True,
                      log_every=25, checkpoint_every=500, sample_every=500),
        "diffusion": dict(sample_steps=250),
    },
    "small": {
        "model": dict(image_size=64, base_channels=32, channel_mult=(1, 2, 3, 4), num_res_blocks=1,
                      attention_resolutions=(16, 8), head_channels=32, groups=4),
        "train": dict(batch_size=16, steps=20000, lr=2e-4, warmup_steps=500, ema_decay=0.999, ema_warmup=True,
                      log_every=50, checkpoint_every=1000, sample_every=2000),
        "diffusion": dict(sample_steps=250),
    },
    "base": {
        "model": dict(image_size=256, base_channels=128, channel_mult=(1, 1, 2, 2, 4, 4), num_res_blocks=2,
                      attention_resolutions=(32, 16, 8), head_channels=64),
        # micro-batches of 16 per GPU: 16 images fit an 80 GB card in fp32, 32 do not (docs/performance.md)
        "train": dict(batch_size=256, micro_batch_size=16),
    },
    "paper": {
        "model": dict(image_size=256, base_channels=256, channel_mult=(1, 1, 2, 2, 4, 4), num_res_blocks=2,
                      attention_resolutions=(32, 16, 8), head_channels=64),
        # 16 images with gradient checkpointing fit an 80 GB card (docs/performance.md); FSDP shards the 552.8M
        # parameters' weights, gradients, Adam moments and EMA (8.8 GB in fp32) over the processes
        "train": dict(batch_size=1024, steps=1_000_000, micro_batch_size=16, gradient_checkpointing=True,
                      sharding="fsdp"),
    },
}


def preset(name: str) -> Config:
    """The configuration of a preset (``tiny``, ``small``, ``base`` or ``paper``)."""
    if name not in PRESETS:
        raise PaletteError(f"unknown preset {name!r}: choose one of {', '.join(PRESETS)}")
    data = Config(preset=name).to_dict()
    for section, values in PRESETS[name].items():
        data[section].update(_plain(values))
    return Config.from_dict(data)
