"""Training configurations as data: tower sizes, the toy world to learn from, and the settings of both stages.

``preset("toy")`` is the demo checkpoint set (``lbsearch train toy``); ``preset("test")`` is a tiny version that
runs in seconds for CI. Change a field with ``dataclasses.replace``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

from lbsearch.errors import ConfigError
from lbsearch.models.config import ModelConfig
from lbsearch.toyworld import RenderConfig, WorldSpec

BOUND_MODALITIES = ("video", "audio", "depth", "thermal")
METHODS = ("lora", "full", "scratch")


@dataclass(frozen=True)
class Schedule:
    """AdamW with a linear warm-up to ``lr`` and a cosine decay to ``lr * min_lr_ratio`` over ``steps``."""

    steps: int
    batch_size: int
    lr: float
    warmup_steps: int
    weight_decay: float = 0.05
    min_lr_ratio: float = 0.0
    betas: tuple[float, float] = (0.9, 0.98)

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 2 or self.lr <= 0 or not 0 <= self.warmup_steps <= self.steps:
            raise ConfigError(f"unusable schedule {self}: need steps >= 1, batch_size >= 2, lr > 0, warm-up <= steps")


@dataclass(frozen=True)
class TowerSizes:
    """The architecture of the small towers trained here (the real product loads released ones)."""

    width: int = 64
    layers: int = 4
    heads: int = 4
    patch_size: int = 8
    text_width: int = 32
    text_layers: int = 2
    text_heads: int = 2
    projection_dim: int = 64
    hidden_act: str = "gelu"
    # Audio's mel x time grid: 10 ms frames, so ``audio_target_length`` 112 is a 1.12 s window.
    audio_mel_bins: int = 56
    audio_target_length: int = 112

    def image_config(self, image_size: int) -> ModelConfig:
        """The stage-1 (image + language) model, in the official config layout."""
        raw = {
            "architectures": ["LanguageBindImage"],
            "projection_dim": self.projection_dim,
            "vision_config": {
                "hidden_size": self.width,
                "intermediate_size": 4 * self.width,
                "num_hidden_layers": self.layers,
                "num_attention_heads": self.heads,
                "image_size": image_size,
                "patch_size": self.patch_size,
                "hidden_act": self.hidden_act,
                "lora_r": 0,
            },
            "text_config": {
                "hidden_size": self.text_width,
                "intermediate_size": 4 * self.text_width,
                "num_hidden_layers": self.text_layers,
                "num_attention_heads": self.text_heads,
                "hidden_act": self.hidden_act,
            },
        }
        return ModelConfig.from_dict(raw, source="TowerSizes")


@dataclass(frozen=True)
class ToyData:
    """Which toy world to render for training, and how many scenes."""

    seed: int = 0
    train_scenes: int = 8000
    spec: WorldSpec = field(default_factory=WorldSpec)
    render: RenderConfig = field(default_factory=RenderConfig)
    workers: int = 2


@dataclass(frozen=True)
class Stage1Config:
    """Language stage: a CLIP trained from scratch on the stills and their captions.

    Besides the world's own captions, a fraction of the texts names only a few attributes ("a red thing moving
    left"), some of those wrapped in prompt-template phrasing ("a photo of a circle."), the way a real CLIP's web
    captions mention parts of a picture. Without them the language tower never sees a one-attribute description,
    and zero-shot class prompts would be out of its distribution.
    """

    schedule: Schedule
    full_caption_fraction: float = 0.5
    template_fraction: float = 0.5
    mention_weights: tuple[float, ...] = (1.0, 1.0, 1.0)


@dataclass(frozen=True)
class LoraSettings:
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.1
    # Video: LoRA on the temporal attention too; otherwise the (new) temporal blocks train in full.
    temporal: bool = False


@dataclass(frozen=True)
class Stage2Config:
    """Binding one modality to the frozen language tower.

    ``method``: "lora" (image-initialised, LoRA on the attention projections), "full" (image-initialised, every
    weight trained) or "scratch" (random init, every weight trained). With LoRA, parameters whose name contains
    one of ``also_train`` are trained in full as well (new input layers such as the audio position table).
    ``mask_ratio``: the fraction of patch tokens dropped per sample during training (the CLS token always stays).
    """

    modality: str
    schedule: Schedule
    method: str = "lora"
    lora: LoraSettings = field(default_factory=LoraSettings)
    mask_ratio: float = 0.5
    also_train: tuple[str, ...] = ()
    scenes: int | None = None

    def __post_init__(self) -> None:
        if self.modality not in BOUND_MODALITIES:
            raise ConfigError(f"stage 2 binds one of {BOUND_MODALITIES}, not {self.modality!r}")
        if self.method not in METHODS:
            raise ConfigError(f"unknown stage-2 method {self.method!r}; expected one of {METHODS}")
        if not 0.0 <= self.mask_ratio < 1.0:
            raise ConfigError(f"mask_ratio={self.mask_ratio}: must lie in [0, 1)")


@dataclass(frozen=True)
class TrainConfig:
    name: str
    towers: TowerSizes
    data: ToyData
    stage1: Stage1Config
    stage2: dict[str, Stage2Config]
    threads: int = 2
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# Input layers that meet a new kind of signal (a spectrogram, a depth map) keep learning in full next to LoRA.
INPUT_LAYERS = ("embeddings.", "pre_layrnorm")


def _toy() -> TrainConfig:
    stage2 = {
        "audio": Stage2Config(
            "audio", Schedule(steps=300, batch_size=128, lr=2e-3, warmup_steps=30), mask_ratio=0.3,
            lora=LoraSettings(rank=8, alpha=16, dropout=0.0), also_train=INPUT_LAYERS, scenes=4000,
        ),
        "depth": Stage2Config(
            # Depth and thermal read the shape from an outline alone (no colour); with half the scenes and
            # 250-600 steps thermal shape stalled at 0.82-0.87 zero-shot, with all of them and 1000 steps 0.94.
            "depth", Schedule(steps=800, batch_size=128, lr=2e-3, warmup_steps=50), mask_ratio=0.3,
            lora=LoraSettings(rank=8, alpha=16, dropout=0.0), also_train=INPUT_LAYERS,
        ),
        "thermal": Stage2Config(
            "thermal", Schedule(steps=1000, batch_size=128, lr=2e-3, warmup_steps=50), mask_ratio=0.3,
            lora=LoraSettings(rank=8, alpha=16, dropout=0.0), also_train=INPUT_LAYERS,
        ),
        "video": Stage2Config(
            "video", Schedule(steps=300, batch_size=48, lr=2e-3, warmup_steps=40), mask_ratio=0.5,
            lora=LoraSettings(rank=8, alpha=16, dropout=0.1), also_train=("temporal",),
        ),
    }
    return TrainConfig(
        name="toy",
        towers=TowerSizes(),
        data=ToyData(),
        stage1=Stage1Config(Schedule(steps=2400, batch_size=128, lr=5e-3, warmup_steps=100, min_lr_ratio=0.1),
                            mention_weights=(0.5, 0.3, 0.2)),
        stage2=stage2,
    )


def _test() -> TrainConfig:
    # Fewer combinations and short sounds: the whole pipeline in well under a minute.
    spec = WorldSpec(shapes=("circle", "triangle"), colours=("red", "blue"), directions=("left", "right"),
                     short_audio_seconds=(1.0, 1.5), long_audio_fraction=0.0)
    render = RenderConfig(size=32, num_frames=4)
    towers = TowerSizes(width=32, layers=2, heads=2, patch_size=8, text_width=32, text_layers=1, text_heads=2,
                        projection_dim=32, audio_mel_bins=32, audio_target_length=64)
    schedule = Schedule(steps=60, batch_size=64, lr=3e-3, warmup_steps=6)
    stage2 = {m: Stage2Config(m, schedule, mask_ratio=0.3, also_train=INPUT_LAYERS) for m in BOUND_MODALITIES}
    stage2["video"] = replace(stage2["video"], also_train=("temporal",))
    # Audio starts furthest from the stills (a spectrogram, not a picture): a few more steps.
    stage2["audio"] = replace(stage2["audio"], schedule=replace(schedule, steps=100))
    return TrainConfig(
        name="test",
        towers=towers,
        data=ToyData(train_scenes=384, spec=spec, render=render),
        stage1=Stage1Config(Schedule(steps=300, batch_size=64, lr=5e-3, warmup_steps=20)),
        stage2=stage2,
    )


_PRESETS = {"toy": _toy, "test": _test}


def preset(name: str) -> TrainConfig:
    """A named training configuration: "toy" (the demo checkpoints) or "test" (tiny, for CI)."""
    try:
        return _PRESETS[name]()
    except KeyError:
        raise ConfigError(f"unknown training preset {name!r}; known: {', '.join(_PRESETS)}") from None
