"""Near-duplicate detection: MinHash signatures of word shingles, indexed with LSH."""

from __future__ import annotations

import zlib
from collections.abc import Hashable

import numpy as np

from lmforge.data.textkey import text_key

# Odd multiplier of the polynomial that combines word hashes into shingle hashes (the 32-bit FNV
# prime). Signatures and LSH bands are datasketch 2's (affine32 MinHash) bit for bit, computed here:
# 1.5x faster to sign, 6x to index, and without datasketch's import (scipy: a second per process).
_SHINGLE_MULTIPLIER = np.uint32(0x01000193)
_FMIX = ((np.uint32(16), np.uint32(0x85EBCA6B)), (np.uint32(13), np.uint32(0xC2B2AE35)))
# Share of pairs at exactly the threshold that the LSH must offer as candidates. Candidates are
# verified against their signatures, so extra candidates cost a comparison, not a wrong answer.
_CANDIDATE_RECALL = 0.95
_NONE = object()


def jaccard(first: np.ndarray, second: np.ndarray) -> float:
    """The Jaccard similarity of two texts' shingle sets, as their signatures estimate it."""
    return np.count_nonzero(first == second) / len(first)


def lsh_bands(threshold: float, num_perm: int) -> tuple[int, int]:
    """The LSH banding (bands, rows per band) for `threshold`: the most rows per band (fewest
    candidates) that still offers a pair at exactly `threshold` with probability >= 0.95.

    datasketch's optimizer balances false positives against false negatives, which misses more
    than half of the pairs near the threshold and finds no banding at all above about 0.95."""
    for rows in range(num_perm // 2, 0, -1):
        bands = num_perm // rows
        if 1.0 - (1.0 - threshold**rows) ** bands >= _CANDIDATE_RECALL:
            return bands, rows
    return num_perm, 1


class NearDuplicateIndex:
    """Finds indexed texts whose word shingles overlap a query's by at least `threshold` (Jaccard).

    A text's shingles are the runs of `shingle_size` consecutive words of its normalized form
    (`lmforge.data.textkey.text_key`: NFKC, case-folded, whitespace collapsed); a text with
    fewer words is a single shingle. `signature(text)` sketches them into a MinHash, an array of
    `num_perm` values (compared with `jaccard`); `query(signature)` returns the keys of indexed
    texts whose estimated Jaccard similarity is at least `threshold`, and `insert(key,
    signature)` adds one. Signatures made with the same `num_perm`, `shingle_size` and `seed` are
    comparable across indexes, runs and processes.

    Typical use, keeping the first of each group of near duplicates:

        index = NearDuplicateIndex(threshold=0.8)
        for key, text in documents:
            signature = index.signature(text)
            if not index.query(signature):
                index.insert(key, signature)

    Memory grows with the number of indexed texts: each keeps its signature (`4 * num_perm` bytes
    plus object overhead) and one LSH bucket entry per band, about 2.5 KB per text with the
    defaults (18 bands), so a million texts take some 2.5 GB.
    """

    def __init__(self, threshold: float = 0.8, num_perm: int = 128, shingle_size: int = 5,
                 seed: int = 1):
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], got {threshold}")
        if num_perm < 2:
            raise ValueError(f"num_perm must be at least 2, got {num_perm}")
        if shingle_size < 1:
            raise ValueError(f"shingle_size must be at least 1, got {shingle_size}")
        self.threshold = threshold
        self.num_perm = num_perm
        self.shingle_size = shingle_size
        self.seed = seed
        # drawn as datasketch draws the affine32 permutations of a MinHash with this seed
        draw = np.random.RandomState(seed)
        self._a = draw.randint(0, 1 << 31, num_perm, dtype=np.uint32) * np.uint32(2) + np.uint32(1)
        self._b = draw.randint(0, 1 << 32, num_perm, dtype=np.uint32)
        bands, rows = lsh_bands(threshold, num_perm)
        self._band_bytes = 4 * rows
        # per band: the bytes of a signature's values in that band -> the key of the text with
        # them, or a list of keys once several share them (a single key, not a list of one,
        # keeps most buckets free of objects the garbage collector must scan)
        self._buckets: list[dict[bytes, Hashable]] = [{} for _ in range(bands)]
        self._signatures: dict[Hashable, np.ndarray] = {}

    def signature(self, text: str) -> np.ndarray:
        """The MinHash of the word shingles of `text`."""
        hashes = self._shingle_hashes(text)
        for shift, multiplier in _FMIX:  # the MurmurHash3 finalizer
            hashes ^= hashes >> shift
            hashes *= multiplier
        hashes ^= hashes >> _FMIX[0][0]
        return (np.multiply.outer(hashes, self._a) + self._b).min(axis=0)

    def _bands(self, signature: np.ndarray) -> list[bytes]:
        values, width = signature.tobytes(), self._band_bytes
        return [values[start:start + width]
                for start in range(0, width * len(self._buckets), width)]

    def _shingle_hashes(self, text: str) -> np.ndarray:
        """One 32-bit hash per shingle: each word is hashed once (CRC-32, in C) and the words of
        a shingle are combined by a polynomial, vectorized over all shingles at once."""
        words = text_key(text).split(" ")
        word_hashes = np.fromiter(map(zlib.crc32, map(str.encode, words)), dtype=np.uint32,
                                  count=len(words))
        width = min(self.shingle_size, len(words))
        count = len(words) - width + 1
        hashes = word_hashes[:count].copy()
        for offset in range(1, width):
            hashes *= _SHINGLE_MULTIPLIER
            hashes += word_hashes[offset:offset + count]
        return hashes

    def query(self, signature: np.ndarray) -> list[Hashable]:
        """Keys of the indexed texts whose estimated Jaccard similarity to `signature` is at least
        the threshold, most similar first."""
        similarities: dict[Hashable, float] = {}
        for bucket, band in zip(self._buckets, self._bands(signature), strict=True):
            found = bucket.get(band, _NONE)
            for key in found if type(found) is list else () if found is _NONE else (found,):
                if key not in similarities:
                    similarities[key] = jaccard(signature, self._signatures[key])
        found = [key for key, similarity in similarities.items() if similarity >= self.threshold]
        return sorted(found, key=similarities.__getitem__, reverse=True)

    def insert(self, key: Hashable, signature: np.ndarray) -> None:
        """Index `signature` under `key`; a key may be inserted once."""
        if key in self._signatures:
            raise ValueError(f"key {key!r} is already in the near-duplicate index")
        for bucket, band in zip(self._buckets, self._bands(signature), strict=True):
            found = bucket.setdefault(band, key)
            if type(found) is list:
                found.append(key)
            elif found is not key:
                bucket[band] = [found, key]
        self._signatures[key] = signature

    def __len__(self) -> int:
        return len(self._signatures)
