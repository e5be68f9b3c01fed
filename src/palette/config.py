"""Configuration: a handful of plain values in nested dataclasses, presets, and ``key=value`` overrides.

The dataclasses are where each value's type, default and allowed values live: a field with a fixed set of values is
typed ``Literal[...]``, :meth:`Config.validate` checks every such field against it, and the command line takes its
flags' choices from the same types (:func:`allowed`). The ranges of numbers are :mod:`palette.config_ranges`; reading
plain values (YAML, JSON, ``key=value`` text) into the typed fields is :mod:`palette.config_values`. Errors name the
config field (``train.lr``); the command line names its flag instead.

A run's resolved configuration is saved as YAML in its folder and as JSON in the metadata of every weights file, so
a checkpoint alone is enough to rebuild its network, schedules and task.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

import yaml

from .config_ranges import check_ranges
from .config_values import from_plain, plain, set_dotted
from .diffusion import INFERENCE_SCHEDULE, TRAINING_SCHEDULE, NoiseSchedule, Parameterization, ScheduleConfig
from .errors import ArgumentError
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
        return plain(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Config":
        return from_plain(cls, d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def save(self, path: Path) -> None:
        """Write ``path`` whole (a temporary file renamed over it): a crash never leaves a run a half-written config."""
        from .checkpoint import atomic_write_bytes  # checkpoint imports config

        atomic_write_bytes(Path(path), yaml.safe_dump(self.to_dict(), sort_keys=False).encode())

    @classmethod
    def load(cls, path: Path) -> "Config":
        return cls.from_dict(yaml.safe_load(Path(path).read_text()))

    def validate(self) -> None:
        """Raise an :class:`~palette.errors.ArgumentError` naming the config field of a value that cannot work, alone
        or with the others."""
        check_ranges(self)
        self._check_choices()
        if str(self.train.channels_last).lower() not in ("auto", "true", "false"):
            raise ArgumentError("train.channels_last", f"must be auto, true or false, got {self.train.channels_last!r}")
        self._check_tasks()
        self._check_network()
        if self.train.cond_drop_prob and self.diffusion.objective == "regression":
            raise ArgumentError("train.cond_drop_prob", "is for guided diffusion: the regression baseline has no "
                                "guidance")
        self._check_sampling()
        if self.distill.steps:
            self._check_student()

    def _check_tasks(self) -> None:
        """The task is known; a multi-task model mixes known degradations, each once, with one weight each."""
        names = (*TASK_NAMES, PAIRED, "multi")
        if self.task.name not in names:
            raise ArgumentError("task.name", f"{self.task.name!r} is unknown: choose one of {', '.join(names)}")
        tasks, weights = self.task.tasks, self.task.weights
        if len(set(tasks)) != len(tasks):
            raise ArgumentError("task.tasks", f"names a task twice: {', '.join(tasks)}")
        if weights and (len(weights) != len(tasks) or not all(w > 0 for w in weights)):
            raise ArgumentError("task.weights", f"must be one positive number per task of task.tasks "
                                f"({', '.join(tasks)}), got {list(weights)}")
        for t in tasks:
            if t == PAIRED:
                raise ArgumentError("task.tasks", ": paired data cannot be mixed with degradations in a multi-task "
                                    "model")
            if t not in TASK_NAMES:
                raise ArgumentError("task.tasks", f": unknown task {t!r}: choose from {', '.join(TASK_NAMES)}")

    def _check_network(self) -> None:
        """Images of 1 or 3 channels, of a size every resolution level of the U-Net halves."""
        model, source = self.model, self.model.source_channels
        if model.channels not in (1, 3):
            raise ArgumentError("model.channels", f"must be 1 or 3, got {model.channels}")
        if source not in (None, 1, 3):
            raise ArgumentError("model.source_channels", f"must be 1 or 3, got {source}")
        levels = len(model.channel_mult) - 1
        if model.image_size % 2**levels:
            raise ArgumentError("model.image_size", f"{model.image_size} must be divisible by {2**levels} for a "
                                f"network with {levels + 1} resolution levels (model.channel_mult="
                                f"{list(model.channel_mult)})")

    def _check_sampling(self) -> None:
        """The default sampler, DDIM's eta and the number of steps the sampling schedule allows."""
        from .samplers import check_sampler

        try:
            check_sampler(self.diffusion.sampler, 0.0)
        except ValueError as err:
            raise ArgumentError("diffusion.sampler", f": {err}") from None
        try:
            check_sampler("ddim", self.diffusion.eta)  # the config's eta is DDIM's, whatever the default sampler
        except ValueError as err:
            raise ArgumentError("diffusion.eta", f": {err}") from None
        limit = self.sampling_schedule().steps
        if not 1 <= self.diffusion.sample_steps <= limit:
            raise ArgumentError("diffusion.sample_steps", f"must be between 1 and {limit}, got "
                                f"{self.diffusion.sample_steps}")

    def _check_student(self) -> None:
        """A distilled student samples with DDIM (eta 0) in exactly the steps it was trained for, and predicts v."""
        d, steps = self.diffusion, self.distill.steps
        if d.sampler != "ddim" or d.eta != 0 or d.sample_steps != steps or d.parameterization != "v":
            raise ArgumentError(
                "distill.steps", f"{steps} is a student of progressive distillation: it needs diffusion.sampler=ddim, "
                f"diffusion.eta=0, diffusion.sample_steps={steps} and diffusion.parameterization=v")
        try:
            NoiseSchedule(self.sampling_schedule()).check_halving(steps)
        except ValueError as err:
            raise ArgumentError("distill.steps", f": {err}") from None

    def _check_choices(self) -> None:
        """Every ``Literal``-typed field holds one of its values."""
        for section in dataclasses.fields(self):
            values = getattr(self, section.name)
            if not dataclasses.is_dataclass(values):
                continue
            for name, choices in _choices_of(type(values)).items():
                value = getattr(values, name)
                if value not in choices:
                    raise ArgumentError(f"{section.name}.{name}", f"must be one of {', '.join(choices)}, got "
                                        f"{value!r}")

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


def use_channels_last(value: Any, device: Any) -> bool:
    """Whether ``train.channels_last`` (auto, true or false) means channels_last on ``device`` (a torch.device)."""
    value = str(value).lower()
    return device.type == "cpu" if value == "auto" else value == "true"


def apply_overrides(config: Config, overrides: list[str]) -> Config:
    """Apply ``section.key=value`` strings (``train.lr=3e-4``, ``model.attention_resolutions=16,8``)."""
    data = config.to_dict()
    for item in overrides:
        set_dotted(data, item)
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
        raise ArgumentError("preset", f": unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    data = Config(preset=name).to_dict()
    for section, values in PRESETS[name].items():
        data[section].update(plain(values))
    return Config.from_dict(data)
