"""The tokenizer interface and its one-file format."""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from lmforge.atomic import atomic_write_text
from lmforge.errors import LmforgeError
from lmforge.host.registry import Registry
from lmforge.settings import NoSettings, Settings

FORMAT = "lmforge-tokenizer/1"


class Tokenizer(ABC):
    """Turns text into token ids and back.

    A tokenizer is built from settings, then either trained on texts or restored from the state
    it saved. Every tokenizer has the special tokens its tasks need; `eos` ends a document (the
    `lm` task puts it between documents) and `pad` fills batches. Subclasses implement `train`,
    `encode`, `decode`, `vocab_size`, `special_tokens` and `get_state`/`set_state`.
    """

    Settings = NoSettings
    registered_name = ""  # set by the registry when it creates the tokenizer

    def __init__(self, settings: Settings):
        self.settings = settings

    @abstractmethod
    def train(self, texts: Iterable[str]) -> None:
        """Learn the vocabulary from an iterator of texts (streamed: do not keep them all)."""

    @abstractmethod
    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, with no special tokens added."""

    @abstractmethod
    def decode(self, ids: Sequence[int]) -> str:
        """The text of `ids`; special tokens are left out."""

    @property
    @abstractmethod
    def vocab_size(self) -> int:
        """Number of ids, special tokens included; every id is below it."""

    @property
    @abstractmethod
    def special_tokens(self) -> dict[str, int]:
        """Special token names ("eos", "pad", "unk", ...) to ids."""

    @abstractmethod
    def get_state(self) -> Any:
        """Everything a trained tokenizer needs to be restored, as JSON-compatible data."""

    @abstractmethod
    def set_state(self, state: Any) -> None:
        """Restore what `get_state` returned."""

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text; override where the library encodes batches faster."""
        return [self.encode(text) for text in texts]

    def decode_batch(self, batch: Sequence[Sequence[int]]) -> list[str]:
        """The text of each id sequence."""
        return [self.decode(ids) for ids in batch]

    @property
    def eos_id(self) -> int:
        """The id that ends a document."""
        return self.special_tokens["eos"]

    @property
    def pad_id(self) -> int:
        """The id that fills batches."""
        return self.special_tokens["pad"]

    def to_json(self) -> str:
        """The one-file form `save` writes: format, type, settings and state."""
        document = {"format": FORMAT, "type": self.registered_name,
                    "settings": self.settings.model_dump(mode="json"),
                    "vocab_size": self.vocab_size, "special_tokens": self.special_tokens,
                    "state": self.get_state()}
        return json.dumps(document, ensure_ascii=False, sort_keys=True)

    def save(self, path: Path) -> str:
        """Write the tokenizer to one JSON file atomically; return the file's content hash."""
        text = self.to_json()
        atomic_write_text(Path(path), text)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()


def load_tokenizer(path: Path, registry: Registry) -> Tokenizer:
    """Restore a tokenizer saved by `Tokenizer.save`, whatever plugin provides its type."""
    path = Path(path)
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LmforgeError(f"{path}: tokenizer file not found") from None
    except (OSError, ValueError) as exc:
        raise LmforgeError(f"{path}: not a readable tokenizer file: {exc}") from None
    found = document.get("format") if isinstance(document, dict) else document
    if found != FORMAT:
        raise LmforgeError(f"{path}: expected a tokenizer file of format {FORMAT!r}, "
                           f"found {found!r}")
    tokenizer = registry.get("tokenizer", document["type"]).create(document["settings"])
    tokenizer.set_state(document["state"])
    return tokenizer


def file_hash(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
