"""Near-duplicate detection: MinHash signatures of word shingles, indexed with LSH."""

from __future__ import annotations

import zlib
from collections.abc import Hashable

import numpy as np
from datasketch import MinHash, MinHashLSH

from lmforge.data.textkey import text_key

# Odd multiplier of the polynomial that combines word hashes into shingle hashes (the 32-bit FNV
# prime); datasketch mixes every input hash with the MurmurHash3 finalizer before permuting it.
_SHINGLE_MULTIPLIER = np.uint32(0x01000193)
_SCHEME = "affine32"
# Share of pairs at exactly the threshold that the LSH must offer as candidates. Candidates are
# verified against their signatures, so extra candidates cost a comparison, not a wrong answer.
_CANDIDATE_RECALL = 0.95


def lsh_bands(threshold: float, num_perm: int) -> tuple[int, int]:
    """The LSH banding (bands, rows per band) for `threshold`: the most rows per band (fewest
    candidates) that still offers a pair at exactly `threshold` with probability >= 0.95.

    datasketch's own optimizer balances false positives against false negatives, which misses more
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
    fewer words is a single shingle. `signature(text)` sketches them into a MinHash of
    `num_perm` values; `query(signature)` returns the keys of indexed texts whose estimated
    Jaccard similarity is at least `threshold`, and `insert(key, signature)` adds one.
    Signatures made with the same `num_perm`, `shingle_size` and `seed` are comparable across
    indexes and runs.

    Typical use, keeping the first of each group of near duplicates:

        index = NearDuplicateIndex(threshold=0.8)
        for key, text in documents:
            signature = index.signature(text)
            if not index.query(signature):
                index.insert(key, signature)

    Memory grows with the number of indexed texts: each keeps its signature (`4 * num_perm` bytes
    plus object overhead) and one LSH bucket entry per band, about 6 KB per text with the
    defaults (18 bands), so a million texts take some 6 GB.
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
        # Built once and shared by every signature: datasketch would otherwise draw the
        # permutations again for each MinHash.
        self._permutations = MinHash(num_perm=num_perm, seed=seed, scheme=_SCHEME).permutations
        self._lsh = MinHashLSH(num_perm=num_perm, params=lsh_bands(threshold, num_perm))
        self._signatures: dict[Hashable, MinHash] = {}

    def signature(self, text: str) -> MinHash:
        """The MinHash of the word shingles of `text`."""
        signature = MinHash(num_perm=self.num_perm, seed=self.seed, hashfunc=int,
                            permutations=self._permutations, scheme=_SCHEME)
        signature.update_batch(self._shingle_hashes(text).tolist())
        return signature

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

    def query(self, signature: MinHash) -> list[Hashable]:
        """Keys of the indexed texts whose estimated Jaccard similarity to `signature` is at least
        the threshold, most similar first."""
        similarities = {}
        for key in self._lsh.query(signature):
            similarity = signature.jaccard(self._signatures[key])
            if similarity >= self.threshold:
                similarities[key] = similarity
        return sorted(similarities, key=similarities.__getitem__, reverse=True)

    def insert(self, key: Hashable, signature: MinHash) -> None:
        """Index `signature` under `key`; a key may be inserted once."""
        if key in self._signatures:
            raise ValueError(f"key {key!r} is already in the near-duplicate index")
        self._lsh.insert(key, signature, check_duplication=False)
        self._signatures[key] = signature

    def __len__(self) -> int:
        return len(self._signatures)
