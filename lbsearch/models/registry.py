"""The released LanguageBind checkpoints and the named model sets lbsearch knows.

A model set names one checkpoint per modality. Entries are hub ids or folders; `load_model_set` reads them.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from lbsearch.errors import ConfigError
from lbsearch.modalities import MODALITIES

# Hub id -> modality, for `lbsearch models` and for naming checkpoints in help texts.
RELEASED: dict[str, str] = {
    "LanguageBind/LanguageBind_Video_FT": "video",
    "LanguageBind/LanguageBind_Video": "video",
    "LanguageBind/LanguageBind_Video_V1.5_FT": "video",
    "LanguageBind/LanguageBind_Video_Huge_V1.5_FT": "video",
    "LanguageBind/LanguageBind_Audio_FT": "audio",
    "LanguageBind/LanguageBind_Audio": "audio",
    "LanguageBind/LanguageBind_Depth": "depth",
    "LanguageBind/LanguageBind_Thermal": "thermal",
    "LanguageBind/LanguageBind_Image": "image",
}

# The small checkpoint set trained on the synthetic toy world (committed; see docs/training.md).
DEMO_DIR = Path(__file__).resolve().parent.parent / "assets" / "demo_models"

MODEL_SETS: dict[str, dict[str, str]] = {
    "languagebind": {
        "video": "LanguageBind/LanguageBind_Video_FT",
        "audio": "LanguageBind/LanguageBind_Audio_FT",
        "depth": "LanguageBind/LanguageBind_Depth",
        "thermal": "LanguageBind/LanguageBind_Thermal",
        "image": "LanguageBind/LanguageBind_Image",
    },
    "demo": {m: str(DEMO_DIR / m) for m in MODALITIES},
}


def model_set(name: str) -> dict[str, str]:
    """The checkpoints of a named set, as ``{modality: hub id or folder}``."""
    try:
        return dict(MODEL_SETS[name])
    except KeyError:
        raise ConfigError(f"unknown model set {name!r}; known: {', '.join(sorted(MODEL_SETS))}") from None


def parse_model_options(options: list[str]) -> dict[str, str]:
    """``["video=LanguageBind/LanguageBind_Video_FT", ...]`` -> ``{"video": ...}``."""
    parsed: dict[str, str] = {}
    for option in options:
        modality, sep, name = option.partition("=")
        if not sep or not name or modality not in MODALITIES:
            raise ConfigError(
                f"--model {option!r}: expected MODALITY=HUB_ID_OR_FOLDER with MODALITY one of {', '.join(MODALITIES)}"
            )
        parsed[modality] = name
    return parsed


def chosen_models(named: str | None, options: Sequence[str] = (), default: str | None = None) -> dict[str, str]:
    """What ``--models NAME`` and ``--model MODALITY=CHECKPOINT`` say together: the named set (``default`` when
    neither is given) with the single checkpoints laid over it."""
    name = named or (None if options else default)
    chosen = model_set(name) if name else {}
    chosen.update(parse_model_options(list(options)))
    return chosen
