"""The model layer: LanguageBind encoders built from configs and loaded from released checkpoints."""

from lbsearch.models.config import MODALITIES, ModelConfig, TextConfig, VisionConfig
from lbsearch.models.encoder import Encoder
from lbsearch.models.factory import build_encoder, load_checkpoint, load_model_set, save_checkpoint

__all__ = [
    "MODALITIES",
    "Encoder",
    "ModelConfig",
    "TextConfig",
    "VisionConfig",
    "build_encoder",
    "load_checkpoint",
    "load_model_set",
    "preprocessor_for",
    "save_checkpoint",
]


def __getattr__(name: str) -> object:
    # The preprocessors import the media readers (seconds): only for callers that ask for them.
    if name == "preprocessor_for":
        from lbsearch.preprocess import preprocessor_for

        return preprocessor_for
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
