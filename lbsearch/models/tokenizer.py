"""Text to token ids, identical to the official LanguageBind (CLIP BPE) tokenizer.

open_clip's SimpleTokenizer uses the same BPE merges, lower-casing and ftfy clean-up as the slow HF
CLIPTokenizer the official code uses. The official tokenizer pads with the end-of-text id (49407) rather
than 0, so we do the same: the pooled text feature is read at the first end-of-text token either way,
but matching ids exactly keeps parity checks simple.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import torch

CONTEXT_LENGTH = 77
BOS_ID = 49406
EOS_ID = 49407


@lru_cache(maxsize=1)
def _bpe():
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer(context_length=CONTEXT_LENGTH)


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
