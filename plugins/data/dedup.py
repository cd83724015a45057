"""Built-in dedup preprocessor: exact and, optionally, near-duplicate removal."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from lmforge import hookimpl
from lmforge.data.neardup import NearDuplicateIndex
from lmforge.data.textkey import text_digest
from lmforge.interfaces.data import Preprocessor, Record
from lmforge.settings import Settings as ComponentSettings


class Dedup(Preprocessor):
    """Removes duplicate records, keeping the first occurrence.

    Exact duplicates are texts equal after NFKC, case folding and whitespace collapsing
    ("exact_duplicate"). With `near: true`, a record whose word shingles (`shingle_size` words)
    overlap an earlier kept record's by at least `threshold` (Jaccard similarity, estimated with
    MinHash and LSH) is dropped too ("near_duplicate"): this catches lightly edited copies.
    Memory grows with the number of kept records: about 100 bytes each (a 16-byte digest in a
    set) for exact dedup, about 2.5 KB more each with `near` on. The report gives the counts and
    the duplicate rate.
    """

    class Settings(ComponentSettings):
        near: bool = Field(False, description="also drop near duplicates (MinHash LSH); about "
                                              "ten times slower than exact dedup alone (some "
                                              "5 MB/s of text per core against 50)")
        threshold: float = Field(0.8, gt=0.0, le=1.0,
                                 description="Jaccard similarity of word shingles from which "
                                             "two texts are near duplicates")
        num_perm: int = Field(128, ge=16, le=1024,
                              description="MinHash size: more is more accurate, slower and "
                                          "bigger (the estimate's error is about 1/sqrt(num_perm))")
        shingle_size: int = Field(5, ge=1, le=50,
                                  description="words per shingle: smaller finds looser "
                                              "paraphrases, larger only near-verbatim copies")

    def __init__(self, settings: Dedup.Settings):
        super().__init__(settings)
        self.records_seen = 0
        self._digests: set[bytes] = set()
        self._near_index = None
        if settings.near:
            self._near_index = NearDuplicateIndex(settings.threshold, settings.num_perm,
                                                  settings.shingle_size)

    def precompute(self, record: Record) -> tuple:
        """The text's digest and, with `near`, its MinHash: what a worker computes ahead."""
        text, index = record["text"], self._near_index
        return text_digest(text), None if index is None else index.signature(text)

    def process(self, record: Record, precomputed: tuple | None = None) -> Record | None:
        self.records_seen += 1
        digest, signature = precomputed or (text_digest(record["text"]), None)
        if digest in self._digests:
            return self.drop("exact_duplicate")
        self._digests.add(digest)
        if self._near_index is not None:
            if signature is None:
                signature = self._near_index.signature(record["text"])
            if self._near_index.query(signature):
                return self.drop("near_duplicate")
            self._near_index.insert(self.records_seen, signature)
        return record

    def report(self) -> dict[str, Any]:
        exact, near = self.dropped["exact_duplicate"], self.dropped["near_duplicate"]
        return {
            "exact_duplicates": exact,
            "near_duplicates": near,
            "duplicate_rate": (exact + near) / self.records_seen if self.records_seen else 0.0,
        }


@hookimpl
def register_preprocessors(register):
    register("dedup", Dedup)
