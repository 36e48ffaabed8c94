"""lbsearch: multi-modal search over your own media library, built on LanguageBind.

    from lbsearch import Library, tokenize

Names are imported on first use, so `import lbsearch.storage.database` (say) does not pay for loading torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lbsearch.library import Library
    from lbsearch.models.tokenizer import tokenize

__all__ = ["Library", "tokenize"]
__version__ = "0.1.0"

_LAZY = {"Library": "lbsearch.library", "tokenize": "lbsearch.models.tokenizer"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'lbsearch' has no attribute {name!r}")
