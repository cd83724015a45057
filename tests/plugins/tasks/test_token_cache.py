"""Tests of the token cache: contents, dtype, reuse, invalidation and atomicity."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

from lmforge.config import resolve
from lmforge.data.prepare import prepare_data
from lmforge.errors import LmforgeError
from lmforge.interfaces.tokenizer import Tokenizer
from lmforge.plugins.tasks.token_cache import encode_splits, load_token_cache, token_cache_key

SPLIT_TEXTS = {"train": ["héllo", "", "wörld 🎉"], "val": ["abc"], "test": []}


class FakePrepared:
    """Stands in for PreparedData: texts per split and a data key."""

    def __init__(self, texts=SPLIT_TEXTS, key="data-1"):
        self.texts = texts
        self.report = {"cache": {"key": key}}

    def records(self, split):
        for text in self.texts[split]:
            yield {"text": text}


class CodePointTokenizer(Tokenizer):
    """Id = code point + 1 (eos 0, pad 1 shared with U+0000); counts the texts it encodes."""

    def __init__(self, vocab_size=0x110001):
        super().__init__(Tokenizer.Settings())
        self._vocab_size = vocab_size
        self.encoded = 0

    def train(self, texts):
        pass

    def encode(self, text: str) -> list[int]:
        self.encoded += 1
        return [ord(c) + 1 for c in text]

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(chr(i - 1) for i in ids if i > 1)

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    @property
    def special_tokens(self) -> dict[str, int]:
        return {"eos": 0, "pad": 1}

    def get_state(self):
        return {}

    def set_state(self, state):
        pass


def expected_ids(tokenizer, texts):
    return [i for text in texts for i in [*tokenizer.encode(text), tokenizer.eos_id]]


def test_key_depends_on_data_and_tokenizer():
    key = token_cache_key("d", "t")
    assert len(key) == 16 and int(key, 16) >= 0
    assert key == token_cache_key("d", "t")
    assert len({key, token_cache_key("d2", "t"), token_cache_key("d", "t2")}) == 3


def test_contents_are_the_documents_each_followed_by_eos(tmp_path):
    tokenizer = CodePointTokenizer()
    cache = encode_splits(FakePrepared(), tokenizer, "tok-1", tmp_path)
    assert not cache.hit and set(cache) == {"train", "val", "test"}
    for split, texts in SPLIT_TEXTS.items():
        assert cache[split].tolist() == expected_ids(tokenizer, texts)
        assert not cache[split].flags.writeable
    assert isinstance(cache["train"], np.memmap) and len(cache["test"]) == 0
    meta = cache.meta
    assert (meta["tokens"]["train"], meta["documents"]["train"]) == (6 + 1 + 8, 3)
    assert meta["bytes"] == {"train": 6 + 0 + 11, "val": 3, "test": 0}
    assert (cache.meta["tokenizer_hash"], cache.meta["data_key"]) == ("tok-1", "data-1")
    assert cache.folder.name == f"tokens-{token_cache_key('data-1', 'tok-1')}"
    assert (cache.folder / "COMPLETE").is_file()


@pytest.mark.parametrize(("vocab_size", "dtype"), [(300, "uint16"), (65536, "uint16"),
                                                   (65537, "uint32"), (0x110001, "uint32")])
def test_dtype_follows_vocab_size(tmp_path, vocab_size, dtype):
    texts = {"train": ["\U0001f389"] if vocab_size > 0x1F38A else ["ab"]}
    cache = encode_splits(FakePrepared(texts), CodePointTokenizer(vocab_size), "t", tmp_path,
                          splits=("train",))
    assert cache.meta["dtype"] == dtype and cache["train"].dtype == np.dtype(dtype)
    assert cache["train"].tolist() == expected_ids(CodePointTokenizer(), texts["train"])


def test_an_id_past_the_vocabulary_is_an_error(tmp_path):
    with pytest.raises(LmforgeError, match="produced id 127882 "):
        encode_splits(FakePrepared({"train": ["🎉"]}), CodePointTokenizer(300), "t", tmp_path,
                      splits=("train",))
    assert not list(tmp_path.glob("tokens-*"))


def test_a_complete_cache_is_reused_without_encoding(tmp_path):
    first = encode_splits(FakePrepared(), CodePointTokenizer(), "tok-1", tmp_path)
    tokenizer = CodePointTokenizer()
    second = encode_splits(FakePrepared(), tokenizer, "tok-1", tmp_path)
    assert second.hit and tokenizer.encoded == 0
    assert second.folder == first.folder and second.meta == first.meta
    assert {s: a.tolist() for s, a in second.items()} == {s: a.tolist() for s, a in first.items()}


def test_a_new_tokenizer_hash_or_data_key_gives_a_new_cache(tmp_path):
    first = encode_splits(FakePrepared(), CodePointTokenizer(), "tok-1", tmp_path)
    other_tokenizer = encode_splits(FakePrepared(), CodePointTokenizer(), "tok-2", tmp_path)
    other_data = encode_splits(FakePrepared(key="data-2"), CodePointTokenizer(), "tok-1",
                               tmp_path)
    assert not other_tokenizer.hit and not other_data.hit
    assert len({first.folder, other_tokenizer.folder, other_data.folder}) == 3


def test_an_incomplete_folder_is_rebuilt(tmp_path):
    first = encode_splits(FakePrepared(), CodePointTokenizer(), "tok-1", tmp_path)
    (first.folder / "COMPLETE").unlink()
    with pytest.raises(LmforgeError, match="not a complete token cache"):
        load_token_cache(first.folder)
    tokenizer = CodePointTokenizer()
    again = encode_splits(FakePrepared(), tokenizer, "tok-1", tmp_path)
    assert not again.hit and tokenizer.encoded == 4
    assert again["train"].tolist() == expected_ids(tokenizer, SPLIT_TEXTS["train"])


def test_asking_for_more_splits_rebuilds_and_keeps_the_old_ones(tmp_path):
    encode_splits(FakePrepared(), CodePointTokenizer(), "t", tmp_path, splits=("train",))
    both = encode_splits(FakePrepared(), CodePointTokenizer(), "t", tmp_path, splits=("val",))
    assert not both.hit and list(both) == ["val"] and set(both.meta["tokens"]) == {"train", "val"}
    tokenizer = CodePointTokenizer()
    assert encode_splits(FakePrepared(), tokenizer, "t", tmp_path, splits=("train",)).hit


def test_a_truncated_array_is_reported(tmp_path):
    cache = encode_splits(FakePrepared(), CodePointTokenizer(), "t", tmp_path)
    (cache.folder / "train.bin").write_bytes(b"\0\0")
    with pytest.raises(LmforgeError, match=r"expected 15 uint32 token ids \(60 bytes\), found 2"):
        load_token_cache(cache.folder)


def test_real_prepared_data_with_a_trained_tokenizer(tmp_path, registry):
    corpus = tmp_path / "corpus.txt"
    paragraphs = [f"Paragraph {i}: naïve café {i * 7} 🎉." for i in range(200)]
    corpus.write_text("\n\n".join(paragraphs) + "\n", encoding="utf-8")
    config = resolve({"name": "t", "runs_dir": str(tmp_path / "runs"),
                      "data": {"source": {"type": "text", "paths": [str(corpus)]}}}, registry)
    prepared = prepare_data(config)
    tokenizer = registry.get("tokenizer", "byte-bpe").create({"vocab_size": 300})
    tokenizer.train(record["text"] for record in prepared.records("train"))
    digest = tokenizer.save(tmp_path / "tokenizer.json")
    cache = encode_splits(prepared, tokenizer, digest, config.run_dir / "data")
    for split in ("train", "val", "test"):
        texts = [record["text"] for record in prepared.records(split)]
        assert cache[split].tolist() == expected_ids(tokenizer, texts)
        assert cache.meta["bytes"][split] == sum(len(t.encode()) for t in texts)
    assert cache.meta["dtype"] == "uint16" and cache.meta["vocab_size"] == 300
    assert encode_splits(prepared, tokenizer, digest, config.run_dir / "data").hit
