"""Benchmark fixtures: the corpora the shipped examples read, in examples/data."""

from pathlib import Path

import pytest

EXAMPLE_DATA = Path(__file__).resolve().parents[1] / "examples" / "data"


@pytest.fixture
def austen():
    return EXAMPLE_DATA / "austen_6_novels.txt.gz"


@pytest.fixture
def vader():
    return EXAMPLE_DATA / "vader_movie_snippets.tsv.gz"
