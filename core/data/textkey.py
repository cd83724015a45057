"""The normalized form of a text that exact dedup and the split hash compare."""

import hashlib
import unicodedata
from functools import lru_cache


def text_key(text: str) -> str:
    """NFKC, case-folded, whitespace collapsed: texts differing only in these compare equal."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


# Dedup and the split both digest each record's text in turn: a tiny cache saves the second
# digest (the lookup is cheap because a str caches its own hash).
@lru_cache(maxsize=8)
def text_digest(text: str) -> bytes:
    """A 16-byte digest of `text_key(text)`."""
    return hashlib.blake2b(text_key(text).encode("utf-8"), digest_size=16).digest()
