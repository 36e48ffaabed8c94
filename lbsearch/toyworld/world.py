"""The toy world's semantics: attributes, seeded scene sampling, captions and splits.

A scene is a coloured shape that moves in a direction, sounds like its shape, stands near or far and is hot or
cold. Everything a renderer needs (position, size, pitch, clip length, ...) is drawn here from the seed, so a
scene is a small, JSON-serialisable value and rendering it is a pure function (see ``render.render_modality``).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from lbsearch.errors import ConfigError, LbsearchError

# Every value the world knows; a WorldSpec picks a subset. Colours are RGB; no colour is orange-like or
# white-like, so the hot glow (orange) and the cold frost (pale blue-white) never pass for a colour.
SHAPES = ("circle", "square", "triangle", "star", "cross", "diamond")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 35, 35),
    "green": (40, 185, 60),
    "blue": (45, 85, 235),
    "yellow": (235, 215, 40),
    "purple": (150, 55, 205),
    "pink": (245, 115, 185),
}
DIRECTIONS = ("left", "right", "up", "down")
DISTANCES = ("near", "far")
TEMPERATURES = ("hot", "cold")
# Each shape has its own sound, so the audio tells the shape (and the caption names the sound).
SOUNDS: dict[str, str] = {
    "circle": "a low hum",
    "square": "a buzz",
    "triangle": "a chime",
    "star": "a whistle",
    "cross": "a rattle",
    "diamond": "a beep",
}

# The attributes that vary independently, in the order a combination tuple lists them. "sound" is not among
# them: it follows from the shape.
VISIBLE_ATTRIBUTES = ("shape", "colour", "direction", "distance", "temperature")
Combination = tuple[str, str, str, str, str]

# What each modality's file shows (the attributes a zero-shot classifier of that modality can read).
CARRIED_BY: dict[str, tuple[str, ...]] = {
    "image": VISIBLE_ATTRIBUTES,
    "video": VISIBLE_ATTRIBUTES,
    "audio": ("shape", "sound"),
    "depth": ("shape", "distance"),
    "thermal": ("shape", "distance", "temperature"),
}

SPLITS = ("train", "test", "heldout")

# Caption templates: every one names every attribute; the first is the scene's main caption.
CAPTION_TEMPLATES = (
    "a {colour} {shape} moving {direction} with {sound}, {distance} and {temperature}",
    "a {temperature} {colour} {shape}, {distance}, moving {direction} and making {sound}",
    "{sound} from a {distance} {temperature} {colour} {shape} moving {direction}",
    "a {colour} {shape} that is {temperature} and {distance}, moving {direction} with {sound}",
)


@dataclass(frozen=True)
class WorldSpec:
    """Which attribute values exist, how combinations are held out, and how long the sounds are.

    A combination is held out (never in train or test, only in the "heldout" split) when the sum of its value
    indices is divisible by ``heldout_modulus``. The rule does not depend on any seed, so every world with this
    spec holds out the same combinations, and since it changes with every single attribute, each held-out
    combination differs in one attribute from combinations seen in training.
    """

    shapes: tuple[str, ...] = ("circle", "square", "triangle", "star")
    colours: tuple[str, ...] = ("red", "green", "blue", "yellow")
    directions: tuple[str, ...] = DIRECTIONS
    distances: tuple[str, ...] = DISTANCES
    temperatures: tuple[str, ...] = TEMPERATURES
    heldout_modulus: int = 8
    short_audio_seconds: tuple[float, float] = (1.0, 3.0)
    # Some clips are longer than the audio encoder's 10.375 s window, so its three-chunk path is exercised.
    long_audio_seconds: tuple[float, float] = (11.0, 13.0)
    long_audio_fraction: float = 0.1

    def __post_init__(self) -> None:
        known = {"shapes": SHAPES, "colours": tuple(COLOURS), "directions": DIRECTIONS,
                 "distances": DISTANCES, "temperatures": TEMPERATURES}
        for name, allowed in known.items():
            values = getattr(self, name)
            unknown = [v for v in values if v not in allowed]
            if unknown or len(set(values)) != len(values) or len(values) < 2:
                raise ConfigError(
                    f"WorldSpec.{name}={values!r}: need at least two distinct values from {allowed}")
        if self.heldout_modulus < 2:
            raise ConfigError(f"WorldSpec.heldout_modulus={self.heldout_modulus}: must be at least 2")
        if not 0.0 <= self.long_audio_fraction <= 1.0:
            raise ConfigError(f"WorldSpec.long_audio_fraction={self.long_audio_fraction}: must lie in [0, 1]")
        for name in ("short_audio_seconds", "long_audio_seconds"):
            low, high = getattr(self, name)
            if not 0.1 <= low <= high:
                raise ConfigError(f"WorldSpec.{name}={(low, high)}: need 0.1 <= low <= high")

    @property
    def values(self) -> dict[str, tuple[str, ...]]:
        """Each visible attribute's values, in VISIBLE_ATTRIBUTES order."""
        return {"shape": self.shapes, "colour": self.colours, "direction": self.directions,
                "distance": self.distances, "temperature": self.temperatures}

    def combinations(self) -> list[Combination]:
        """Every visible combination, in a fixed order."""
        return list(itertools.product(*self.values.values()))

    def is_heldout(self, combination: Combination) -> bool:
        indices = [values.index(v) for values, v in zip(self.values.values(), combination, strict=True)]
        return sum(indices) % self.heldout_modulus == 0

    def seen_combinations(self) -> list[Combination]:
        """The combinations of the train and test splits."""
        return [c for c in self.combinations() if not self.is_heldout(c)]

    def heldout_combinations(self) -> list[Combination]:
        """The combinations only the heldout split shows."""
        return [c for c in self.combinations() if self.is_heldout(c)]

    def split_combinations(self, split: str) -> list[Combination]:
        _check_split(split)
        return self.heldout_combinations() if split == "heldout" else self.seen_combinations()


@dataclass(frozen=True)
class Nuisance:
    """What varies between scenes of one combination: where, how big, how fast, how loud, which noise.

    Lengths are fractions of the image side, so one scene renders at any resolution.
    """

    x: float  # shape centre at mid-clip
    y: float
    radius: float
    rotation: float  # radians
    travel: float  # distance covered during the clip
    trail: float  # length of the fading trail behind the shape in the still image
    brightness: float  # multiplies the shape's colour
    background: tuple[float, float, float]  # RGB background level
    ambient: float  # thermal background level, 0..255
    surface_mm: float  # depth of the shape
    wall_mm: float  # depth of the background wall at the top of the frame
    heat: float  # thermal level of the shape, 0..255
    pitch: float  # multiplies the sound's frequencies
    loudness: float  # peak amplitude of the sound
    seconds: float  # length of the audio and of the video
    noise_seed: int

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Nuisance:
        return cls(**{**raw, "background": tuple(raw["background"])})


@dataclass(frozen=True)
class Scene:
    """One scene: its labels, its captions and everything needed to render it."""

    id: str
    split: str
    attributes: dict[str, str] = field(hash=False)  # VISIBLE_ATTRIBUTES plus "sound"
    captions: tuple[str, ...]
    nuisance: Nuisance

    @property
    def caption(self) -> str:
        return self.captions[0]

    @property
    def combination(self) -> Combination:
        return tuple(self.attributes[name] for name in VISIBLE_ATTRIBUTES)  # type: ignore[return-value]

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "split": self.split, "attributes": dict(self.attributes),
                "captions": list(self.captions), "nuisance": asdict(self.nuisance)}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Scene:
        try:
            return cls(id=str(raw["id"]), split=str(raw["split"]), attributes=dict(raw["attributes"]),
                       captions=tuple(raw["captions"]), nuisance=Nuisance.from_dict(raw["nuisance"]))
        except (KeyError, TypeError, ValueError) as error:
            raise LbsearchError(f"not a toy-world scene record ({error!r}): {str(raw)[:200]}") from error


def attributes_of(combination: Combination) -> dict[str, str]:
    """The labels of a combination, the sound included."""
    attributes = dict(zip(VISIBLE_ATTRIBUTES, combination, strict=True))
    attributes["sound"] = SOUNDS[attributes["shape"]]
    return attributes


def captions_for(attributes: dict[str, str]) -> tuple[str, ...]:
    """Every caption template filled with these attributes."""
    return tuple(template.format(**attributes) for template in CAPTION_TEMPLATES)


class World:
    """A seeded source of scenes.

    Scene ``i`` of a split depends only on (seed, spec, split, i): asking for more scenes never changes the
    first ones. Each split walks through its allowed combinations in reshuffled rounds, so combinations are
    balanced and the first ``len(spec.split_combinations(split))`` scenes of a split all differ.
    """

    def __init__(self, seed: int = 0, spec: WorldSpec | None = None):
        self.seed = int(seed)
        self.spec = spec or WorldSpec()
        self._combinations = {split: self.spec.split_combinations(split) for split in SPLITS}
        self._rounds: dict[tuple[str, int], np.ndarray] = {}

    def scenes(self, split: str, n: int, start: int = 0) -> list[Scene]:
        """Scenes ``start .. start+n-1`` of a split."""
        if n < 0 or start < 0:
            raise ConfigError(f"scene range start={start}, n={n}: both must be non-negative")
        return [self.scene(split, index) for index in range(start, start + n)]

    def iter_scenes(self, split: str) -> Iterator[Scene]:
        """The scenes of a split, without end."""
        return (self.scene(split, index) for index in itertools.count())

    def scene(self, split: str, index: int) -> Scene:
        _check_split(split)
        combinations = self._combinations[split]
        round_, position = divmod(index, len(combinations))
        combination = combinations[self._round_order(split, round_)[position]]
        attributes = attributes_of(combination)
        rng = self._rng(split, "scene", index)
        return Scene(id=f"{split}-{index:06d}", split=split, attributes=attributes,
                     captions=captions_for(attributes), nuisance=self._sample_nuisance(attributes, rng))

    def _rng(self, split: str, purpose: str, index: int) -> np.random.Generator:
        key = (SPLITS.index(split), ("scene", "round").index(purpose), index)
        return np.random.default_rng(np.random.SeedSequence(self.seed, spawn_key=key))

    def _round_order(self, split: str, round_: int) -> np.ndarray:
        if (split, round_) not in self._rounds:
            order = self._rng(split, "round", round_).permutation(len(self._combinations[split]))
            self._rounds[(split, round_)] = order
        return self._rounds[(split, round_)]

    def _sample_nuisance(self, attributes: dict[str, str], rng: np.random.Generator) -> Nuisance:
        near = attributes["distance"] == "near"
        # Even a far shape spans about three patches of a 56-pixel, patch-8 image, so its outline stays legible.
        radius = rng.uniform(0.18, 0.22) if near else rng.uniform(0.115, 0.14)
        travel = rng.uniform(0.2, 0.28)
        # The trail reaches past the shape's own extent, near or far, so it always shows.
        trail = radius * rng.uniform(1.0, 1.3) + 0.03
        # Keep the whole path, the trail and most of the glow around the shape inside the frame.
        margin = radius + 0.03
        behind, ahead = max(travel / 2, trail) + margin, travel / 2 + margin
        progress = rng.uniform(behind, 1.0 - ahead)
        across = rng.uniform(margin, 1.0 - margin)
        direction = attributes["direction"]
        along = progress if direction in ("right", "down") else 1.0 - progress
        x, y = (along, across) if direction in ("left", "right") else (across, along)
        long_clip = rng.uniform() < self.spec.long_audio_fraction
        seconds = rng.uniform(*(self.spec.long_audio_seconds if long_clip else self.spec.short_audio_seconds))
        level = rng.uniform(15, 55)
        return Nuisance(
            x=float(x), y=float(y), radius=float(radius), rotation=float(rng.uniform(-0.25, 0.25)),
            travel=float(travel), trail=float(trail), brightness=float(rng.uniform(0.8, 1.0)),
            background=tuple(float(level + t) for t in rng.uniform(-8, 8, size=3)),  # type: ignore[arg-type]
            ambient=float(rng.uniform(80, 115)),
            surface_mm=float(rng.uniform(800, 1500) if near else rng.uniform(2800, 3800)),
            wall_mm=float(rng.uniform(6500, 9000)),
            heat=float(rng.uniform(215, 250) if attributes["temperature"] == "hot" else rng.uniform(20, 50)),
            pitch=float(rng.uniform(0.97, 1.03)), loudness=float(rng.uniform(0.3, 0.7)),
            seconds=round(float(seconds), 3), noise_seed=int(rng.integers(2**31)),
        )


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}; expected one of {SPLITS}")
