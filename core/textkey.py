"""The normalized form of a text that exact dedup and the split hash compare."""

import hashlib
import unicodedata


def text_key(text: str) -> str:
    """NFKC, case-folded, whitespace collapsed: texts differing only in these compare equal."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def text_digest(text: str) -> bytes:
    """A 16-byte digest of `text_key(text)`."""
    return hashlib.blake2b(text_key(text).encode("utf-8"), digest_size=16).digest()
