"""Tests of the built-in dedup preprocessor."""

import copy
import gzip
import re

import pytest
from pydantic import ValidationError

from lmforge.plugins.data.dedup import Dedup
from tests.conftest import EXAMPLE_DATA

PARAGRAPH = (
    "She was the youngest of the two daughters of a most affectionate, indulgent father; and "
    "had, in consequence of her sister's marriage, been mistress of his house from an early "
    "period. Her mother had died too long ago for her to have more than an indistinct "
    "remembrance of her caresses; and her place had been supplied by an excellent governess."
)
# One word changed near the end: a word in the middle spoils 5 of 56 shingles (Jaccard ~0.84),
# which the MinHash estimate puts on either side of the default 0.8 threshold.
EDITED = PARAGRAPH.replace("excellent governess", "excellent nurse")
DIFFERENT = (
    "Sir Walter Elliot, of Kellynch Hall, in Somersetshire, was a man who, for his own amusement, "
    "never took up any book but the Baronetage; there he found occupation for an idle hour, and "
    "consolation in a distressed one; there his faculties were roused into admiration and respect, "
    "by contemplating the limited remnant of the earliest patents."
)


def make(**settings):
    return Dedup(Dedup.Settings(**settings))


def kept_texts(dedup, texts):
    return [record["text"] for text in texts if (record := dedup.process({"text": text}))]


def test_exact_dedup_keeps_the_first_of_case_and_whitespace_variants():
    dedup = make()
    texts = ["Hello World", "hello   world", " HELLO\tWORLD\n", "Hello, World", "Hello World"]
    assert kept_texts(dedup, texts) == ["Hello World", "Hello, World"]
    assert dedup.dropped == {"exact_duplicate": 3}
    assert dedup.report() == {"exact_duplicates": 3, "near_duplicates": 0, "duplicate_rate": 0.6}


def test_exact_dedup_treats_compatibility_forms_as_equal():
    assert kept_texts(make(), ["\ufb01ne \uff11", "fine 1"]) == ["\ufb01ne \uff11"]


def test_near_dedup_is_off_by_default():
    assert kept_texts(make(), [PARAGRAPH, EDITED, DIFFERENT]) == [PARAGRAPH, EDITED, DIFFERENT]


def test_near_dedup_drops_a_lightly_edited_copy_but_not_a_different_text():
    dedup = make(near=True)
    assert kept_texts(dedup, [PARAGRAPH, EDITED, DIFFERENT, PARAGRAPH.upper()]) == [
        PARAGRAPH, DIFFERENT]
    assert dedup.dropped == {"near_duplicate": 1, "exact_duplicate": 1}
    assert dedup.report() == {"exact_duplicates": 1, "near_duplicates": 1, "duplicate_rate": 0.5}


def test_a_stricter_threshold_keeps_the_edited_copy():
    assert kept_texts(make(near=True, threshold=0.99), [PARAGRAPH, EDITED]) == [PARAGRAPH, EDITED]


def test_report_before_any_record():
    assert make().report() == {"exact_duplicates": 0, "near_duplicates": 0, "duplicate_rate": 0.0}


def test_records_pass_through_unchanged():
    record = {"text": PARAGRAPH, "label": 1, "source": "a.txt:1"}
    original = copy.deepcopy(record)
    assert make(near=True).process(record) == original
    assert record == original


@pytest.mark.parametrize(("settings", "message"), [
    ({"threshold": 0}, "greater than 0"),
    ({"threshold": 1.5}, "less than or equal to 1"),
    ({"num_perm": 1}, "greater than or equal to 16"),
    ({"shingle_size": 0}, "greater than or equal to 1"),
    ({"near": "sometimes"}, "valid boolean"),
    ({"treshold": 0.9}, "Extra inputs are not permitted"),
])
def test_rejects_nonsense_settings(settings, message):
    with pytest.raises(ValidationError, match=message):
        Dedup.Settings(**settings)


def test_dedup_is_registered(registry):
    entry = registry.get("preprocessor", "dedup")
    assert entry.component is Dedup
    assert entry.settings is Dedup.Settings
    assert "first occurrence" in entry.doc
    assert entry.create({"near": True}).settings.near is True


def test_austen_chapter_headings_are_duplicates():
    with gzip.open(EXAMPLE_DATA / "austen_6_novels.txt.gz", "rt", encoding="utf-8") as file:
        paragraphs = re.split(r"\n\s*\n", file.read(400_000))
    dedup = make(near=True)
    kept = kept_texts(dedup, [p for p in paragraphs if p.strip()])
    assert kept.count("CHAPTER I") == 1
    assert dedup.report()["exact_duplicates"] > 0
    assert dedup.report()["duplicate_rate"] < 0.05


@pytest.mark.parametrize("near", [False, True])
def test_precomputed_keys_decide_as_process_alone(near):
    """What a worker process precomputes (in another instance) gives the same decisions."""
    texts = [PARAGRAPH, EDITED, DIFFERENT, PARAGRAPH.upper(), EDITED + " ", DIFFERENT[:50]]
    alone, ahead, worker = make(near=near), make(near=near), make(near=near)
    precomputed = [worker.precompute({"text": text}) for text in texts]
    decisions = [alone.process({"text": text}) is not None for text in texts]
    assert decisions == [ahead.process({"text": text}, pre) is not None
                         for text, pre in zip(texts, precomputed, strict=True)]
    assert alone.report() == ahead.report() and worker.records_seen == 0
    assert decisions == [True, not near, True, False, False, True]
