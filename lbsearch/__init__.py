"""lbsearch: multi-modal search over your own media library, built on LanguageBind."""

from lbsearch.tokenizer import tokenize

__all__ = ["tokenize"]
__version__ = "0.1.0"
