"""The `lbsearch` command: a thin Typer layer over the Python API (no logic lives only here).

Exit codes: 0 success; 1 an error (message on stderr, never a traceback); 2 bad usage; 3 indexing finished but
some files failed; 4 `verify` found disagreements; 130 interrupted (Ctrl-C) after a clean stop.
"""

from lbsearch.cli import evaluate, library, models, train  # noqa: F401  (each module adds its commands)
from lbsearch.cli.common import app

__all__ = ["app"]
