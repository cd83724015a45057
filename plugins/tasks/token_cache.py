"""The token cache: each split of prepared data encoded once into a flat memory-mapped array."""

from __future__ import annotations

import hashlib
import itertools
import json
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lmforge.atomic import atomic_dir, fault_point, is_complete
from lmforge.data.split import SPLITS
from lmforge.errors import LmforgeError
from lmforge.interfaces.tokenizer import Tokenizer
from lmforge.run.folder import TOKEN_CACHE_PREFIX

# Bump when the layout or meaning of the cache files changes, so old caches are not reused.
TOKEN_FORMAT = 1
# Texts encoded per call to encode_batch: bounds memory and lets batch encoders run in parallel.
CHUNK_TEXTS = 1024


@dataclass(eq=False)
class TokenCache(Mapping[str, np.ndarray]):
    """The token ids of each split, as a mapping split -> read-only array.

    Each array holds the split's documents in order, each followed by the tokenizer's eos id.
    Arrays are `np.memmap`s of `{split}.bin`, except an empty split's, a plain empty array (an
    empty file cannot be mapped). `meta` is `meta.json`: dtype, vocab size, eos id, tokenizer
    hash, data key, and "tokens", "documents" and "bytes", each a dict split -> count; "bytes"
    counts the UTF-8 bytes of the split's text (the denominator of bits per byte; the eos
    separators add none). `hit` is true when a complete cache was reused without encoding.
    """

    folder: Path
    arrays: dict[str, np.ndarray]
    meta: dict[str, Any]
    hit: bool

    def __getitem__(self, split: str) -> np.ndarray:
        return self.arrays[split]

    def __iter__(self) -> Iterator[str]:
        return iter(self.arrays)

    def __len__(self) -> int:
        return len(self.arrays)


def token_cache_key(data_key: str, tokenizer_hash: str) -> str:
    """A hash of what the token ids depend on: the prepared data and the saved tokenizer."""
    payload = {"format": TOKEN_FORMAT, "data": data_key, "tokenizer": tokenizer_hash}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned type that holds every id below `vocab_size`."""
    return np.dtype(np.uint16 if vocab_size <= 2**16 else np.uint32)


def encode_splits(prepared: Any, tokenizer: Tokenizer, tokenizer_hash: str, cache_dir: Path,
                  splits: Iterable[str] = SPLITS) -> TokenCache:
    """Encode the prepared splits into `cache_dir/tokens-KEY/`, or reuse a complete cache there.

    `prepared` is a `lmforge.data.prepare.PreparedData` (anything with `records(split)` and
    `report["cache"]["key"]` does). `tokenizer_hash` identifies the tokenizer, e.g. what
    `Tokenizer.save` returned: a new data key or tokenizer hash gives a new folder.
    """
    splits = tuple(splits)
    data_key = prepared.report["cache"]["key"]
    folder = Path(cache_dir) / f"{TOKEN_CACHE_PREFIX}{token_cache_key(data_key, tokenizer_hash)}"
    previous: tuple[str, ...] = ()
    if is_complete(folder):
        arrays, meta = load_token_cache(folder)
        if set(splits) <= set(arrays):
            return TokenCache(folder, {s: arrays[s] for s in splits}, meta, hit=True)
        previous = tuple(arrays)
    # Rebuilding keeps the splits the old folder had, so callers asking for different
    # splits do not take turns throwing each other's work away.
    everything = tuple(dict.fromkeys(previous + splits))
    _write_cache(folder, prepared, tokenizer, tokenizer_hash, data_key, everything)
    arrays, meta = load_token_cache(folder)
    return TokenCache(folder, {s: arrays[s] for s in splits}, meta, hit=False)


def _write_cache(folder: Path, prepared: Any, tokenizer: Tokenizer, tokenizer_hash: str,
                 data_key: str, splits: tuple[str, ...]) -> None:
    started = time.perf_counter()
    dtype = token_dtype(tokenizer.vocab_size)
    with atomic_dir(folder) as tmp:
        figures = {split: _encode_split(prepared.records(split), tokenizer, dtype,
                                        tmp / f"{split}.bin")
                   for split in splits}
        seconds = time.perf_counter() - started
        counts = {name: {split: figures[split][name] for split in splits}
                  for name in ("tokens", "documents", "bytes")}
        total_bytes = sum(counts["bytes"].values())
        meta = {"format": TOKEN_FORMAT, "dtype": dtype.name,
                "vocab_size": tokenizer.vocab_size, "eos_id": tokenizer.eos_id,
                "tokenizer": tokenizer.registered_name, "tokenizer_hash": tokenizer_hash,
                "data_key": data_key, **counts, "seconds": round(seconds, 3),
                "mb_per_s": round(total_bytes / 1e6 / seconds, 3) if seconds > 0 else None}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")


def encode_documents(texts: Iterable[str], tokenizer: Tokenizer
                     ) -> Iterator[tuple[np.ndarray, int, int]]:
    """Token ids of the texts, eos after each, a chunk at a time (batch encoding).

    Yields (int64 ids, documents in the chunk, UTF-8 bytes of their text).
    """
    eos = tokenizer.eos_id
    texts = iter(texts)
    while chunk := list(itertools.islice(texts, CHUNK_TEXTS)):
        flat: list[int] = []
        for ids in tokenizer.encode_batch(chunk):
            flat.extend(ids)
            flat.append(eos)
        n_bytes = sum(len(t) if t.isascii() else len(t.encode("utf-8")) for t in chunk)
        yield np.asarray(flat, dtype=np.int64), len(chunk), n_bytes


def _encode_split(records: Iterable[dict], tokenizer: Tokenizer, dtype: np.dtype,
                  path: Path) -> dict[str, int]:
    """Append the split's documents to `path` chunk by chunk; return its counts."""
    tokens = documents = text_bytes = 0
    with open(path, "wb") as handle:
        texts = (record["text"] for record in records)
        for array, count, n_bytes in encode_documents(texts, tokenizer):
            _check_range(array, tokenizer.vocab_size, tokenizer, path, documents)
            array.astype(dtype).tofile(handle)
            fault_point(path, "chunk written")
            tokens += len(array)
            documents += count
            text_bytes += n_bytes
    return {"tokens": tokens, "documents": documents, "bytes": text_bytes}


def _check_range(ids: np.ndarray, vocab_size: int, tokenizer: Tokenizer, path: Path,
                 first_document: int) -> None:
    # An id past the vocabulary would wrap around silently once stored in a small dtype.
    bad = ids[(ids < 0) | (ids >= vocab_size)]
    if len(bad):
        raise LmforgeError(
            f"tokenizer {tokenizer.registered_name or type(tokenizer).__name__!r} produced id "
            f"{int(bad[0])} while encoding documents from #{first_document} of {path.stem}: "
            f"ids must be between 0 and {vocab_size - 1} (its vocab_size)")


def load_token_cache(folder: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Open a complete token cache folder: its arrays (read-only) by split, and its meta."""
    folder = Path(folder)
    if not is_complete(folder):
        raise LmforgeError(f"{folder}: not a complete token cache (no COMPLETE marker); "
                           f"encode_splits rebuilds it")
    try:
        meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise LmforgeError(f"{folder}: unreadable token cache meta.json ({exc}); delete the "
                           f"folder to rebuild it") from None
    if not isinstance(meta, dict) or meta.get("format") != TOKEN_FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else meta
        raise LmforgeError(f"{folder}/meta.json: expected token cache format {TOKEN_FORMAT}, "
                           f"found {found!r}; delete the folder to rebuild it")
    dtype = np.dtype(meta["dtype"])
    arrays = {split: _open_array(folder / f"{split}.bin", dtype, tokens)
              for split, tokens in meta["tokens"].items()}
    return arrays, meta


def _open_array(path: Path, dtype: np.dtype, tokens: int) -> np.ndarray:
    size = path.stat().st_size if path.is_file() else None
    if size != tokens * dtype.itemsize:
        raise LmforgeError(f"{path}: expected {tokens} {dtype.name} token ids "
                           f"({tokens * dtype.itemsize} bytes), found "
                           f"{'no file' if size is None else f'{size} bytes'}; delete "
                           f"{path.parent} to rebuild the token cache")
    if tokens == 0:
        empty = np.empty(0, dtype=dtype)
        empty.flags.writeable = False  # read-only like the memmaps
        return empty
    return np.memmap(path, dtype=dtype, mode="r", shape=(tokens,))
