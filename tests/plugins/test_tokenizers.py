"""Tests of the built-in tokenizers: char, byte-bpe and word."""

from __future__ import annotations

import gzip
import json
import random

import pytest
from pydantic import ValidationError

from lmforge.errors import LmforgeError
from lmforge.interfaces.tokenizer import file_hash, load_tokenizer
from lmforge.plugins import tokenizers
from tests.conftest import EXAMPLE_DATA

MULTILINGUAL = [
    "Emma Woodhouse, handsome, clever, and rich, had lived nearly twenty-one years.",
    "Café crème, naïve façade: déjà vu à Zürich.",
    "東京は日本の首都です。北京是中国的首都。",
    "Emoji time 🎉🐍 and a family 👨‍👩‍👧 too!",
    "Don't stop; it isn't over (not yet).",
]
CORPUS = MULTILINGUAL * 30
NAMES = ("char", "byte-bpe", "word")
SETTINGS = {"char": {}, "byte-bpe": {"vocab_size": 400}, "word": {}}


def trained(registry, name, texts=CORPUS, **settings):
    tokenizer = registry.get("tokenizer", name).create({**SETTINGS[name], **settings})
    tokenizer.train(iter(texts))  # an iterator: tokenizers must not need a list
    return tokenizer


def test_the_three_tokenizers_are_registered_with_docs(registry):
    for name in NAMES:
        entry = registry.get("tokenizer", name)
        assert entry.doc and entry.provider.builtin


@pytest.mark.parametrize("name", NAMES)
def test_special_tokens_come_first_and_are_distinct(registry, name):
    tokenizer = trained(registry, name)
    specials = tokenizer.special_tokens
    expected = ["eos", "pad"] + (["unk"] if name != "byte-bpe" else [])
    assert list(specials) == expected
    assert sorted(specials.values()) == list(range(len(expected)))
    assert (tokenizer.eos_id, tokenizer.pad_id) == (0, 1)
    assert tokenizer.decode(list(specials.values())) == ""


@pytest.mark.parametrize("name", NAMES)
def test_save_and_load_give_identical_encodings(tmp_path, registry, name):
    tokenizer = trained(registry, name)
    digest = tokenizer.save(tmp_path / "tokenizer.json")
    assert digest == file_hash(tmp_path / "tokenizer.json")
    loaded = load_tokenizer(tmp_path / "tokenizer.json", registry)
    assert type(loaded) is type(tokenizer) and loaded.registered_name == name
    assert loaded.vocab_size == tokenizer.vocab_size
    assert loaded.special_tokens == tokenizer.special_tokens
    probe = MULTILINGUAL + ["unseen: ñandú 한국어 🦀 <|eos|>"]
    assert loaded.encode_batch(probe) == tokenizer.encode_batch(probe)
    assert loaded.to_json() == tokenizer.to_json()


@pytest.mark.parametrize("name", NAMES)
def test_batch_encoding_equals_single_encoding(registry, name):
    tokenizer = trained(registry, name)
    texts = MULTILINGUAL + ["", " ", "new words and 새로운 글자"]
    assert tokenizer.encode_batch(texts) == [tokenizer.encode(t) for t in texts]
    batch = tokenizer.encode_batch(texts)
    assert tokenizer.decode_batch(batch) == [tokenizer.decode(ids) for ids in batch]


@pytest.mark.parametrize("name", NAMES)
def test_training_is_deterministic(tmp_path, registry, name):
    first = trained(registry, name).save(tmp_path / "a.json")
    second = trained(registry, name).save(tmp_path / "b.json")
    assert first == second


@pytest.mark.parametrize("name", NAMES)
def test_ids_stay_below_vocab_size_and_bad_ids_are_refused(registry, name):
    tokenizer = trained(registry, name)
    ids = [i for t in MULTILINGUAL for i in tokenizer.encode(t)]
    assert min(ids) >= 0 and max(ids) < tokenizer.vocab_size
    with pytest.raises(LmforgeError, match=f"cannot decode id {tokenizer.vocab_size}"):
        tokenizer.decode([3, tokenizer.vocab_size])
    with pytest.raises(LmforgeError, match="cannot decode id -1"):
        tokenizer.decode([-1])


@pytest.mark.parametrize("name", NAMES)
def test_a_corrupt_state_is_refused_with_a_message(registry, name):
    tokenizer = registry.get("tokenizer", name).create({})
    with pytest.raises(LmforgeError, match=f"{name} tokenizer: saved state"):
        tokenizer.set_state({"something": "else"})


# char


def test_char_round_trips_seen_characters_and_maps_unseen_ones_to_unk(registry):
    tokenizer = trained(registry, "char")
    for text in MULTILINGUAL:
        assert tokenizer.decode(tokenizer.encode(text)) == text
    unk = tokenizer.special_tokens["unk"]
    ids = tokenizer.encode("é🦀a\U0010FFFF")
    assert ids[1] == unk and ids[3] == unk and unk not in (ids[0], ids[2])
    assert tokenizer.decode(ids) == "éa"


def test_char_vocabulary_is_sorted_by_code_point_after_the_specials(registry):
    tokenizer = trained(registry, "char", texts=["cab", "🎉é"])
    assert tokenizer.vocab_size == 3 + 5
    assert tokenizer.encode("abcé🎉") == [3, 4, 5, 6, 7]


def test_char_min_frequency_and_lone_surrogates(registry):
    tokenizer = trained(registry, "char", texts=["aab"], min_frequency=2)
    assert tokenizer.encode("ab\ud800") == [3, 2, 2]


# byte-bpe


def test_byte_bpe_round_trips_any_unicode_exactly(registry):
    tokenizer = trained(registry, "byte-bpe")
    unseen = ["한국어와 ελληνικά, עברית", "🦀🧪\u200d\t\r\n  x", "\x00\x7f <|eos|><|pad|>", ""]
    for text in MULTILINGUAL + unseen:
        assert tokenizer.decode(tokenizer.encode(text)) == text
    assert tokenizer.eos_id not in tokenizer.encode("<|eos|>")


def test_byte_bpe_respects_vocab_size(registry):
    assert trained(registry, "byte-bpe", vocab_size=300).vocab_size == 300
    small_corpus = trained(registry, "byte-bpe", texts=["ab ab"], vocab_size=4096)
    assert 258 <= small_corpus.vocab_size < 300  # runs out of pairs: stops below the setting
    entry = registry.get("tokenizer", "byte-bpe")
    for vocab_size in (257, 2**20 + 1):
        with pytest.raises(ValidationError, match="vocab_size"):
            entry.create({"vocab_size": vocab_size})


def test_byte_bpe_state_is_a_hugging_face_tokenizer(registry):
    from tokenizers import Tokenizer as HfTokenizer

    tokenizer = trained(registry, "byte-bpe")
    hf = HfTokenizer.from_str(json.dumps(tokenizer.get_state()))
    assert hf.token_to_id("<|eos|>") == 0 and hf.token_to_id("<|pad|>") == 1
    assert hf.encode(MULTILINGUAL[0]).ids == tokenizer.encode(MULTILINGUAL[0])


def test_byte_bpe_needs_training_first(registry):
    tokenizer = registry.get("tokenizer", "byte-bpe").create({})
    with pytest.raises(LmforgeError, match="not trained"):
        tokenizer.encode("text")


def test_byte_bpe_encodes_long_texts_in_pieces_with_the_same_ids(registry, monkeypatch):
    tokenizer = trained(registry, "byte-bpe")
    monkeypatch.setattr(tokenizers, "PIECE_CHARS", 8)
    # whitespace of every kind around line breaks, where cutting wrongly would change the ids
    parts = ["\n", "\n\n", " ", "  ", "\t", "\r\n", "'s", "'", "word", "é", "日本", "🎉", "12",
             "!?", "\u3000", "\xa0", "\x1c", "\x85", "\u2028"]
    rng = random.Random(0)
    for _ in range(200):
        text = "".join(rng.choice(parts) for _ in range(rng.randint(1, 100)))
        assert tokenizer.encode(text) == tokenizer.hf.encode(text, add_special_tokens=False).ids
        assert tokenizer.decode(tokenizer.encode(text)) == text


def test_char_and_byte_bpe_round_trip_austen(registry):
    with gzip.open(EXAMPLE_DATA / "austen_6_novels.txt.gz", "rt", encoding="utf-8") as handle:
        text = handle.read(300_000)
    paragraphs = text.split("\n\n")
    for name, settings in (("char", {}), ("byte-bpe", {"vocab_size": 1000})):
        tokenizer = trained(registry, name, texts=paragraphs, **settings)
        assert tokenizer.decode_batch(tokenizer.encode_batch(paragraphs)) == paragraphs
        assert tokenizer.decode(tokenizer.encode(text)) == text
    assert len(tokenizers._pieces(text)) > 1
    assert tokenizer.encode(text) == tokenizer.hf.encode(text, add_special_tokens=False).ids


# word


def test_word_vocabulary_order_min_frequency_and_unk(registry):
    tokenizer = trained(registry, "word", texts=["b a b c, a b", "rare d d ."], min_frequency=2)
    assert tokenizer.get_state() == {"words": ["b", "a", "d"]}  # by count, then alphabetically
    assert tokenizer.encode("a b rare zzz") == [4, 3, 2, 2]
    assert tokenizer.decode(tokenizer.encode("a rare b")) == "a b"  # unk is left out


def test_word_max_vocab_keeps_the_most_frequent(registry):
    tokenizer = trained(registry, "word", texts=["x x x y y z z w"], max_vocab=2)
    assert tokenizer.get_state() == {"words": ["x", "y"]}


def test_word_lowercase(registry):
    cased = trained(registry, "word", texts=["The the THE"], min_frequency=1)
    assert cased.vocab_size == 3 + 3
    lower = trained(registry, "word", texts=["The the THE"], min_frequency=1, lowercase=True)
    assert lower.get_state() == {"words": ["the"]}
    assert lower.encode("THE tHe") == [3, 3]


def test_word_removes_stop_words_whatever_their_case(registry):
    texts = ["The cat didn't sit on the mat.", "A cat sat, not on THE mat!"]
    tokenizer = trained(registry, "word", texts=texts, min_frequency=1, remove_stopwords=True)
    assert set(tokenizer.get_state()["words"]) == {"cat", "sit", "mat", ".", "sat", ",", "!"}
    assert tokenizer.decode(tokenizer.encode("The cat DIDN'T sit, the dog did.")) == "cat sit,."


def test_word_decode_spacing_is_readable_but_lossy(registry):
    texts = ["Hello, world! (Yes) it's done: 50 % ok?\n\nNew   line."]
    tokenizer = trained(registry, "word", texts=texts, min_frequency=1)
    assert tokenizer.decode(tokenizer.encode(texts[0])) == (
        "Hello, world! (Yes) it's done: 50% ok? New line.")
