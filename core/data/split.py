"""Deterministic train/val/test split: by content hash, or contiguous for one long text."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from lmforge.data.textkey import text_digest
from lmforge.settings import Settings

SPLITS = ("train", "val", "test")


class SplitSettings(Settings):
    """How prepared records are divided into train, val and test."""

    mode: Literal["hash", "contiguous"] = Field(
        "hash", description="hash: each record goes by a hash of its normalized text, stable "
                            "under reordering and appending; contiguous: the first part of the "
                            "stream trains and the rest validates and tests (one long text)")
    val: float = Field(0.05, ge=0.0, lt=1.0, description="share of the data for validation")
    test: float = Field(0.05, ge=0.0, lt=1.0, description="share of the data for test")
    seed: int = Field(0, description="salt of the hash (hash mode): another seed, another split")
    leakage_check: bool = Field(True, description="report exact and near duplicates across splits")
    near_threshold: float = Field(0.8, gt=0.0, le=1.0,
                                  description="Jaccard similarity the leakage check calls near")

    @model_validator(mode="after")
    def _shares_leave_training_data(self) -> SplitSettings:
        if self.val + self.test >= 1.0:
            raise ValueError(f"val + test must be below 1 so something is left to train on; "
                             f"found val={self.val} + test={self.test} = {self.val + self.test}")
        return self


def hash_split(text: str, settings: SplitSettings) -> str:
    """The split of one record in hash mode: a pure function of its normalized text and the seed."""
    digest = text_digest(f"{settings.seed}\x00{text}" if settings.seed else text)
    position = int.from_bytes(digest[:8], "big") / 2**64
    if position < settings.test:
        return "test"
    if position < settings.test + settings.val:
        return "val"
    return "train"


def contiguous_bounds(total_chars: int, settings: SplitSettings) -> tuple[int, int]:
    """Character offsets where val and then test begin in contiguous mode."""
    val_start = round(total_chars * (1.0 - settings.val - settings.test))
    test_start = round(total_chars * (1.0 - settings.test))
    return val_start, test_start
