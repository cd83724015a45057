"""Benchmark fixtures: the development corpora, skipped where absent."""

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def shared_file(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"{path} not found")
    return path


@pytest.fixture
def austen():
    return shared_file("austen_6_novels.txt.gz")


@pytest.fixture
def vader():
    return shared_file("vader_movie_snippets.tsv.gz")
