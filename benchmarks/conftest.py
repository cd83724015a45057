"""Benchmark fixtures: the development corpora, skipped where absent."""

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture
def austen():
    path = SHARED_DATA / "austen_6_novels.txt.gz"
    if not path.exists():
        pytest.skip(f"{path} not found")
    return path


@pytest.fixture
def vader():
    path = SHARED_DATA / "vader_movie_snippets.tsv.gz"
    if not path.exists():
        pytest.skip(f"{path} not found")
    return path
