"""`python cli.py ...` from a checkout: the `lbsearch` command, whose code is `lbsearch.cli` (installed under the
package's own name, so that no generic top-level `cli` module lands in site-packages)."""

from lbsearch.cli import app

if __name__ == "__main__":
    app()
