"""Built-in tokenizers: characters, byte-level BPE and words."""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from pydantic import Field
from tokenizers import Tokenizer as HfTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from lmforge import hookimpl
from lmforge.errors import LmforgeError
from lmforge.interfaces.tokenizer import Tokenizer
from lmforge.plugins.data.preprocess import ENGLISH_STOP_WORDS
from lmforge.settings import Settings as ComponentSettings

# Special tokens take the first ids, in this order, in every built-in tokenizer.
EOS_PAD = ("eos", "pad")
EOS_PAD_UNK = ("eos", "pad", "unk")
UNK = EOS_PAD_UNK.index("unk")


def _check_ids(ids: Sequence[int], vocab_size: int, tokenizer: str) -> None:
    if len(ids) and (min(ids) < 0 or max(ids) >= vocab_size):
        bad = next(i for i in ids if not 0 <= i < vocab_size)
        raise LmforgeError(f"{tokenizer} tokenizer: cannot decode id {bad}: ids go from 0 to "
                           f"{vocab_size - 1} (vocabulary of {vocab_size})")


def _state_field(state: Any, key: str, kind: type, tokenizer: str) -> Any:
    """`state[key]`, checked to be a `kind`, with an error naming what was found instead."""
    value = state.get(key) if isinstance(state, dict) else None
    if not isinstance(value, kind):
        raise LmforgeError(f"{tokenizer} tokenizer: saved state must have {key!r} as a "
                           f"{kind.__name__}, found {type(value).__name__} in {state!r:.200}")
    return value


class CharTokenizer(Tokenizer):
    """One token per character (Unicode code point).

    The vocabulary is every character seen in training at least `min_frequency` times, in
    code point order, after the special tokens eos (0), pad (1) and unk (2). A character not in
    the vocabulary encodes as unk, which decoding leaves out, like every special token: texts
    made of known characters round-trip exactly. Encoding runs through a numpy lookup table
    (some 35 MB/s of English text on one core).
    """

    class Settings(ComponentSettings):
        min_frequency: int = Field(1, ge=1, description="characters seen fewer times in "
                                                        "training encode as unk")

    def __init__(self, settings: CharTokenizer.Settings):
        super().__init__(settings)
        self._set_chars("")

    def train(self, texts: Iterable[str]) -> None:
        counts: Counter[str] = Counter()
        for text in texts:
            counts.update(text)
        kept = sorted(char for char, count in counts.items()
                      if count >= self.settings.min_frequency)
        self._set_chars("".join(kept))

    def _set_chars(self, chars: str) -> None:
        self._chars = chars
        specials = len(EOS_PAD_UNK)
        codes = np.array([ord(char) for char in chars], dtype=np.int64)
        # code point -> id, up to the largest known one (at most 4.4 MB); any past it is unknown
        self._lookup = np.full(int(codes.max()) + 1 if len(codes) else 1, UNK, np.int32)
        self._lookup[codes] = np.arange(specials, specials + len(codes), dtype=np.int32)
        self._texts = [""] * specials + list(chars)  # id -> text, special tokens decode to ""

    def encode(self, text: str) -> list[int]:
        # "surrogatepass": a Python string may hold lone surrogates; they are just unknown here
        codes = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
        last = len(self._lookup) - 1
        ids = self._lookup[np.minimum(codes, last)]
        ids[codes > last] = UNK
        return ids.tolist()

    def decode(self, ids: Sequence[int]) -> str:
        _check_ids(ids, self.vocab_size, "char")
        return "".join([self._texts[i] for i in ids])

    @property
    def vocab_size(self) -> int:
        return len(self._texts)

    @property
    def special_tokens(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(EOS_PAD_UNK)}

    def get_state(self) -> dict[str, Any]:
        # code points rather than a string: JSON text could not hold a lone surrogate
        return {"code_points": [ord(char) for char in self._chars]}

    def set_state(self, state: Any) -> None:
        codes = _state_field(state, "code_points", list, "char")
        in_range = all(isinstance(c, int) and 0 <= c <= 0x10FFFF for c in codes)
        if not in_range or codes != sorted(set(codes)):
            raise LmforgeError("char tokenizer: saved code points must be distinct, sorted and "
                               f"between 0 and 0x10FFFF, found {codes!r:.200}")
        self._set_chars("".join(map(chr, codes)))


# Long texts are encoded in pieces of about this many characters (see _pieces).
PIECE_CHARS = 1 << 16


def _pieces(text: str) -> list[str]:
    """`text` cut before line breaks that follow a non-space, about every PIECE_CHARS characters.

    GPT-2's pre-tokenizer never puts such a line break in the same word as what precedes it,
    and reads on from it as from the start of a text, so the pieces' ids joined are the whole
    text's ids. Encoding pieces is faster (Hugging Face slows down on strings of megabytes) and
    runs in parallel. (str.isspace accepts every character the pre-tokenizer's \\s matches.)
    """
    pieces, start = [], 0
    cut = text.find("\n", PIECE_CHARS)
    while cut != -1:
        if text[cut - 1].isspace():
            cut = text.find("\n", cut + 1)
            continue
        pieces.append(text[start:cut])
        start = cut
        cut = text.find("\n", cut + PIECE_CHARS)
    pieces.append(text[start:])
    return pieces


class ByteBpeTokenizer(Tokenizer):
    """Byte-level BPE (as in GPT-2), trained with Hugging Face `tokenizers`.

    Text is split into words and punctuation runs, turned into UTF-8 bytes, and frequent
    byte pairs are merged into new tokens until the vocabulary has `vocab_size` tokens (fewer
    when the corpus runs out of pairs seen `min_frequency` times). The 256 bytes are always in
    the vocabulary, so every Unicode text round-trips exactly: nothing is unknown. Ids: eos (0),
    pad (1), the 256 bytes, then the merges in the order they were learnt. Text that looks like
    a special token ("<|eos|>") is encoded as ordinary text. The saved state is the Hugging Face
    tokenizer's own JSON, loadable with `tokenizers.Tokenizer.from_str`. Batch encoding runs
    in parallel on every core (4 to 7 MB/s of English on two cores); texts over 64K characters
    are cut at line breaks into pieces encoded in parallel, with the same ids.
    """

    class Settings(ComponentSettings):
        vocab_size: int = Field(4096, ge=256 + len(EOS_PAD), le=2**20,
                                description="tokens in the vocabulary, the 256 bytes and the "
                                            "special tokens included")
        min_frequency: int = Field(2, ge=1, description="a pair of tokens seen fewer times in "
                                                        "training is never merged")

    SPECIAL_TEXTS = {"eos": "<|eos|>", "pad": "<|pad|>"}

    def __init__(self, settings: ByteBpeTokenizer.Settings):
        super().__init__(settings)
        self._hf = None

    def train(self, texts: Iterable[str]) -> None:
        hf = HfTokenizer(models.BPE())
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        hf.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=self.settings.vocab_size, min_frequency=self.settings.min_frequency,
            special_tokens=[self.SPECIAL_TEXTS[name] for name in EOS_PAD],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
        hf.train_from_iterator(texts, trainer=trainer)  # reads the iterator in batches
        self._use(hf)

    def _use(self, hf: Any) -> None:
        for i, name in enumerate(EOS_PAD):
            found = hf.token_to_id(self.SPECIAL_TEXTS[name])
            if found != i:
                raise LmforgeError(f"byte-bpe tokenizer: special token {name!r} "
                                   f"({self.SPECIAL_TEXTS[name]}) must have id {i}, found {found}")
        # Not saved in the JSON: without it, "<|eos|>" typed in a text would encode as eos.
        hf.encode_special_tokens = True
        self._hf = hf

    @property
    def hf(self) -> Any:
        """The trained Hugging Face tokenizer."""
        if self._hf is None:
            raise LmforgeError("byte-bpe tokenizer is not trained: train it or load a saved one")
        return self._hf

    def encode(self, text: str) -> list[int]:
        if len(text) > PIECE_CHARS:
            return self.encode_batch([text])[0]
        return self.hf.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        pieces = [_pieces(text) for text in texts]
        # encode_batch_fast (tokenizers >= 0.20) skips the character offsets: ~20% faster
        encode = getattr(self.hf, "encode_batch_fast", self.hf.encode_batch)
        encoded = iter(encode([p for ps in pieces for p in ps], add_special_tokens=False))
        return [[i for _ in ps for i in next(encoded).ids] for ps in pieces]

    def decode(self, ids: Sequence[int]) -> str:
        _check_ids(ids, self.vocab_size, "byte-bpe")
        return self.hf.decode(list(ids), skip_special_tokens=True)

    def decode_batch(self, batch: Sequence[Sequence[int]]) -> list[str]:
        for ids in batch:
            _check_ids(ids, self.vocab_size, "byte-bpe")
        return self.hf.decode_batch([list(ids) for ids in batch], skip_special_tokens=True)

    @property
    def vocab_size(self) -> int:
        return self._hf.get_vocab_size() if self._hf is not None else len(EOS_PAD)

    @property
    def special_tokens(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(EOS_PAD)}

    def get_state(self) -> dict[str, Any]:
        # kept as JSON data rather than a string so the saved file stays readable
        return json.loads(self.hf.to_str())

    def set_state(self, state: Any) -> None:
        if not isinstance(state, dict) or state.get("model", {}).get("type") != "BPE":
            raise LmforgeError("byte-bpe tokenizer: saved state must be a Hugging Face BPE "
                               f"tokenizer's JSON, found {state!r:.200}")
        try:
            hf = HfTokenizer.from_str(json.dumps(state))
        except Exception as exc:  # tokenizers raises plain Exception on a bad document
            raise LmforgeError(f"byte-bpe tokenizer: saved state is not a valid Hugging Face "
                               f"tokenizer: {exc}") from None
        self._use(hf)


# A word, possibly with inner apostrophes ("don't", "o'clock"), or one punctuation character.
WORD_PATTERN = re.compile(r"\w+(?:['’]\w+)*|[^\w\s]")
_NO_SPACE_BEFORE = re.compile(r" (?=[.,;:!?%)\]}])")
_NO_SPACE_AFTER = re.compile(r"(?<=[(\[{]) ")
_TYPOGRAPHIC_APOSTROPHE = str.maketrans("’", "'")


class WordTokenizer(Tokenizer):
    """One token per word or punctuation character, for small models and classifier features.

    Words are runs of letters and digits, with inner apostrophes ("don't"); every other visible
    character is a token of its own; whitespace separates and is dropped. The vocabulary is the
    words seen `min_frequency` times or more, most frequent first (ties in code point order),
    at most `max_vocab` of them, after eos (0), pad (1) and unk (2); other words encode as unk.
    With `remove_stopwords`, English stop words (the list of the `stopwords` preprocessor,
    matched ignoring case) are dropped when training and encoding.

    Decoding is lossy by nature: it leaves out special tokens (unk included) and joins tokens
    with single spaces, except before closing punctuation and after opening brackets, so
    "Hello, world!" comes back as is but the original spacing, line breaks and (with
    `lowercase`) case are gone.
    """

    class Settings(ComponentSettings):
        lowercase: bool = Field(False, description="lowercase texts before splitting them")
        min_frequency: int = Field(2, ge=1, description="words seen fewer times in training "
                                                        "encode as unk")
        max_vocab: int | None = Field(None, ge=1, description="keep at most this many words "
                                                              "(special tokens not counted)")
        remove_stopwords: bool = Field(False, description="drop English stop words, e.g. for "
                                                          "bag-of-words classifier features")

    def __init__(self, settings: WordTokenizer.Settings):
        super().__init__(settings)
        self._set_words([])

    def _words(self, text: str) -> list[str]:
        return WORD_PATTERN.findall(text.lower() if self.settings.lowercase else text)

    def _is_stop_word(self, word: str) -> bool:
        return word.casefold().translate(_TYPOGRAPHIC_APOSTROPHE) in ENGLISH_STOP_WORDS

    def train(self, texts: Iterable[str]) -> None:
        counts: Counter[str] = Counter()
        for text in texts:
            counts.update(self._words(text))
        kept = [(-count, word) for word, count in counts.items()
                if count >= self.settings.min_frequency
                and not (self.settings.remove_stopwords and self._is_stop_word(word))]
        kept.sort()
        self._set_words([word for _, word in kept[:self.settings.max_vocab]])

    def _set_words(self, words: list[str]) -> None:
        self._vocab = [""] * len(EOS_PAD_UNK) + words  # id -> word, special tokens decode to ""
        self._ids = {word: i for i, word in enumerate(self._vocab) if word}

    def encode(self, text: str) -> list[int]:
        get = self._ids.get
        if not self.settings.remove_stopwords:
            return [get(word, UNK) for word in self._words(text)]
        # stop words never enter the vocabulary, so only unknown words need the check
        ids = (get(word) or (None if self._is_stop_word(word) else UNK)
               for word in self._words(text))
        return [i for i in ids if i is not None]

    def decode(self, ids: Sequence[int]) -> str:
        _check_ids(ids, self.vocab_size, "word")
        text = " ".join(word for i in ids if (word := self._vocab[i]))
        return _NO_SPACE_AFTER.sub("", _NO_SPACE_BEFORE.sub("", text))

    @property
    def vocab_size(self) -> int:
        return len(self._vocab)

    @property
    def special_tokens(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(EOS_PAD_UNK)}

    def get_state(self) -> dict[str, Any]:
        return {"words": self._vocab[len(EOS_PAD_UNK):]}

    def set_state(self, state: Any) -> None:
        words = _state_field(state, "words", list, "word")
        if len(set(words)) != len(words) or not all(isinstance(w, str) and w for w in words):
            raise LmforgeError("word tokenizer: saved words must be distinct non-empty strings, "
                               f"found {words!r:.200}")
        self._set_words(words)


@hookimpl
def register_tokenizers(register):
    register("char", CharTokenizer)
    register("byte-bpe", ByteBpeTokenizer)
    register("word", WordTokenizer)
