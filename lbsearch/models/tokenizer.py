"""Text to token ids, identical to the official LanguageBind (CLIP BPE) tokenizer.

open_clip's SimpleTokenizer uses the same BPE merges, lower-casing and ftfy clean-up as the slow HF
CLIPTokenizer the official code uses. The official tokenizer pads with the end-of-text id (49407) rather
than 0, so we do the same: the pooled text feature is read at the first end-of-text token either way,
but matching ids exactly keeps parity checks simple.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Sequence
from functools import lru_cache
from types import ModuleType

import torch

CONTEXT_LENGTH = 77
BOS_ID = 49406
EOS_ID = 49407


@lru_cache(maxsize=1)
def _bpe():
    return _open_clip_tokenizer().SimpleTokenizer(context_length=CONTEXT_LENGTH)


def _open_clip_tokenizer() -> ModuleType:
    """open_clip's tokenizer module, loaded without running the open_clip package's __init__, which imports
    torchvision and transformers (7.6 s of a 10 s `lbsearch search` on the dev machine); the module itself needs
    neither (it imports only ftfy, regex, numpy and torch, and reads its vocabulary beside itself)."""
    loaded = sys.modules.get("open_clip.tokenizer")
    if loaded is not None:
        return loaded
    package = importlib.util.find_spec("open_clip")  # finds the package without importing it
    if package is None or not package.submodule_search_locations:
        raise ImportError("open_clip_torch is not installed (pip install open_clip_torch)")
    location = f"{package.submodule_search_locations[0]}/tokenizer.py"
    spec = importlib.util.spec_from_file_location("lbsearch_open_clip_tokenizer", location)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tokenize(texts: str | Sequence[str], context_length: int = CONTEXT_LENGTH) -> torch.LongTensor:
    """Tokenize one text or a list into a ``[N, context_length]`` LongTensor padded with EOS.

    Long texts are truncated to ``context_length`` tokens and keep their final EOS, as the official
    tokenizer does with ``truncation=True``.
    """
    if isinstance(texts, str):
        texts = [texts]
    bpe = _bpe()
    out = torch.full((len(texts), context_length), EOS_ID, dtype=torch.long)
    for row, text in enumerate(texts):
        ids = [BOS_ID, *bpe.encode(text), EOS_ID]
        if len(ids) > context_length:
            ids = [*ids[: context_length - 1], EOS_ID]
        out[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
    return out
