"""`python -m lbsearch.cli`: what the `lbsearch` console script runs."""

from lbsearch.cli import app

app()
