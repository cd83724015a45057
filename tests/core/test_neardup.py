"""Tests of the MinHash near-duplicate index."""

import numpy as np
import pytest

from lmforge.data.neardup import NearDuplicateIndex, jaccard, lsh_bands

PARAGRAPH = (
    "Emma Woodhouse, handsome, clever, and rich, with a comfortable home and happy disposition, "
    "seemed to unite some of the best blessings of existence; and had lived nearly twenty-one "
    "years in the world with little to distress or vex her. She was the youngest of the two "
    "daughters of a most affectionate, indulgent father, and had been mistress of his house."
)
OTHER = (
    "It is a truth universally acknowledged, that a single man in possession of a fortune, "
    "must be in want of a wife. However little known the feelings or views of such a man may be "
    "on his first entering a neighbourhood, this truth is so well fixed in the minds of the "
    "surrounding families, that he is considered their property."
)


def _replace_word(text: str, position: int, word: str) -> str:
    words = text.split()
    words[position] = word
    return " ".join(words)


def test_finds_a_copy_with_one_word_changed_and_not_a_different_text():
    index = NearDuplicateIndex()
    index.insert("emma", index.signature(PARAGRAPH))
    index.insert("pride", index.signature(OTHER))

    assert index.query(index.signature(_replace_word(PARAGRAPH, 3, "wealthy"))) == ["emma"]
    assert index.query(index.signature(_replace_word(OTHER, 2, "fact"))) == ["pride"]
    assert index.query(index.signature("Something else entirely, in a few words.")) == []


def test_estimate_is_close_to_the_true_shingle_jaccard():
    index = NearDuplicateIndex()
    # One word changed in the middle spoils 5 of 56 shingles: Jaccard = 51 / 61 ~ 0.84, so such
    # an edit sits near the default threshold; an edit near either end spoils fewer shingles.
    edited = _replace_word(PARAGRAPH, 30, "hardly")
    estimate = jaccard(index.signature(PARAGRAPH), index.signature(edited))
    assert estimate == pytest.approx(51 / 61, abs=0.12)
    assert jaccard(index.signature(PARAGRAPH), index.signature(OTHER)) < 0.1


def test_signature_ignores_case_whitespace_and_compatibility_forms():
    index = NearDuplicateIndex()
    variant = "  " + PARAGRAPH.upper().replace(" ", " \n\t ").replace("fi", "\ufb01") + "\n"
    assert np.array_equal(index.signature(variant), index.signature(PARAGRAPH))


def test_signatures_are_reproducible_across_indexes():
    first = NearDuplicateIndex(seed=7).signature(PARAGRAPH)
    second = NearDuplicateIndex(seed=7).signature(PARAGRAPH)
    other_seed = NearDuplicateIndex(seed=8).signature(PARAGRAPH)
    assert np.array_equal(first, second)
    assert not np.array_equal(first, other_seed)


def test_word_order_matters_through_shingles():
    index = NearDuplicateIndex(shingle_size=2)
    forward = index.signature("one two three four five six seven eight")
    backward = index.signature("eight seven six five four three two one")
    assert jaccard(forward, backward) < 0.2


def test_text_shorter_than_a_shingle_is_one_shingle():
    index = NearDuplicateIndex(shingle_size=5)
    assert jaccard(index.signature("hello world"), index.signature("Hello   WORLD")) == 1.0
    assert jaccard(index.signature("hello world"), index.signature("world hello")) < 0.1
    index.insert(0, index.signature("hello world"))
    assert index.query(index.signature("hello world")) == [0]
    assert index.query(index.signature("hello there")) == []


def test_query_ranks_most_similar_first_and_len_counts_inserts():
    index = NearDuplicateIndex(threshold=0.5)
    assert len(index) == 0
    assert index.query(index.signature(PARAGRAPH)) == []
    index.insert("two_changes", index.signature(
        _replace_word(_replace_word(PARAGRAPH, 20, "x"), 40, "y")))
    index.insert("exact", index.signature(PARAGRAPH))
    index.insert("one_change", index.signature(_replace_word(PARAGRAPH, 20, "x")))
    assert len(index) == 3
    assert index.query(index.signature(PARAGRAPH)) == ["exact", "one_change", "two_changes"]


def test_a_key_is_inserted_once():
    index = NearDuplicateIndex()
    index.insert("a", index.signature(PARAGRAPH))
    with pytest.raises(ValueError, match="already in the near-duplicate index"):
        index.insert("a", index.signature(OTHER))


@pytest.mark.parametrize("threshold", [0.99, 1.0])
def test_high_thresholds_work(threshold):
    index = NearDuplicateIndex(threshold=threshold)
    index.insert(1, index.signature(PARAGRAPH))
    assert index.query(index.signature(PARAGRAPH.lower())) == [1]
    assert index.query(index.signature(_replace_word(PARAGRAPH, 30, "hardly"))) == []


@pytest.mark.parametrize("threshold", [0.05, 0.5, 0.8, 0.9, 0.99, 1.0])
@pytest.mark.parametrize("num_perm", [16, 128, 256])
def test_lsh_bands_offer_most_pairs_at_the_threshold(threshold, num_perm):
    bands, rows = lsh_bands(threshold, num_perm)
    assert bands >= 2 and bands * rows <= num_perm
    assert 1 - (1 - threshold**rows) ** bands >= 0.95 or rows == 1


@pytest.mark.parametrize("arguments", [
    {"threshold": 0.0}, {"threshold": 1.5}, {"num_perm": 1}, {"shingle_size": 0},
])
def test_rejects_nonsense_parameters(arguments):
    with pytest.raises(ValueError):
        NearDuplicateIndex(**arguments)


def test_signatures_equal_datasketch_affine32_minhashes():
    MinHash = pytest.importorskip("datasketch").MinHash

    index = NearDuplicateIndex(num_perm=64, shingle_size=3, seed=5)
    reference = MinHash(num_perm=64, seed=5, scheme="affine32").permutations
    for text in (PARAGRAPH, OTHER, "one", "two words"):
        expected = MinHash(num_perm=64, seed=5, hashfunc=int, permutations=reference,
                           scheme="affine32")
        expected.update_batch(index._shingle_hashes(text).tolist())
        assert np.array_equal(index.signature(text), expected.hashvalues)
