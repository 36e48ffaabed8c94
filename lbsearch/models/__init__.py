"""The model layer: LanguageBind encoders built from configs and loaded from released checkpoints."""

from lbsearch.models.config import MODALITIES, ModelConfig, TextConfig, VisionConfig
from lbsearch.models.encoder import Encoder
from lbsearch.models.factory import build_encoder, default_dtype, load_checkpoint, load_model_set, save_checkpoint
from lbsearch.preprocess import preprocessor_for

__all__ = [
    "MODALITIES",
    "Encoder",
    "ModelConfig",
    "TextConfig",
    "VisionConfig",
    "build_encoder",
    "default_dtype",
    "load_checkpoint",
    "load_model_set",
    "preprocessor_for",
    "save_checkpoint",
]
