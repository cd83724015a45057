"""Tests of the built-in normalize, clean, filter and stopwords preprocessors."""

import copy

import pytest
from pydantic import ValidationError

from lmforge.plugins.data.preprocess import (
    ENGLISH_STOP_WORDS,
    Clean,
    Filter,
    Normalize,
    Stopwords,
    non_letter_ratio,
    repeated_line_ratio,
)

DOCSTRING = '''Return the sum of *values*.

    Args:
        values:   the numbers to add,
                  in any order.

    Example:
        >>> total([1, 2])
        3
'''


def make(cls, **settings):
    return cls(cls.Settings(**settings))


def text_of(preprocessor, text, **fields):
    result = preprocessor.process({"text": text, **fields})
    return None if result is None else result["text"]


# normalize


def test_normalize_applies_nfkc():
    normalize = make(Normalize)
    assert text_of(normalize, "\ufb01ne \uff11\uff12\uff13 caf\u0065\u0301") == "fine 123 caf\u00e9"


def test_normalize_nfkc_can_be_turned_off():
    assert text_of(make(Normalize, nfkc=False), "\ufb01ne") == "\ufb01ne"


def test_normalize_removes_control_and_format_characters():
    normalize = make(Normalize)
    text = "\ufeffa\x00b\u200bc\x07d\u00ade\u202ef\x7fg"
    assert text_of(normalize, text) == "abcdefg"


def test_normalize_removes_control_characters_from_ascii_text():
    assert text_of(make(Normalize), "a\x00b\x07c\x1bd\re") == "abcd\ne"


def test_normalize_keeps_control_characters_when_told():
    normalize = make(Normalize, remove_control_chars=False)
    assert text_of(normalize, "a\u200bb") == "a\u200bb"


def test_normalize_turns_line_separators_into_newlines():
    text = "one\r\ntwo\rthree\u2028four\x0cfive"
    assert text_of(make(Normalize), text) == "one\ntwo\nthree\nfour\nfive"


def test_normalize_keeps_indentation_and_collapses_inner_spaces():
    expected = '''Return the sum of *values*.

    Args:
        values: the numbers to add,
                  in any order.

    Example:
        >>> total([1, 2])
        3'''
    assert text_of(make(Normalize), DOCSTRING) == expected


def test_normalize_tidies_whitespace():
    normalize = make(Normalize)
    text = "\n \n  first  line \t \n\n\n\n\tsecond\t\tline\t\n   \n"
    assert text_of(normalize, text) == "  first line\n\n\tsecond line"


def test_normalize_collapses_unicode_spaces_inside_lines():
    normalize = make(Normalize, nfkc=False)
    assert text_of(normalize, "\u00a0\u00a0caf\u00e9\u00a0\u2009au\u3000lait") == (
        "\u00a0\u00a0caf\u00e9 au lait")


def test_normalize_whitespace_can_be_turned_off():
    normalize = make(Normalize, normalize_whitespace=False)
    assert text_of(normalize, "a  b \n\n\n\nc") == "a  b \n\n\n\nc"


def test_normalize_lowercases_only_when_told():
    assert text_of(make(Normalize), "Hello World") == "Hello World"
    assert text_of(make(Normalize, lowercase=True), "Hello World") == "hello world"


def test_normalize_drops_a_record_left_empty():
    normalize = make(Normalize)
    assert normalize.process({"text": " \u200b\n\t\ufeff "}) is None
    assert normalize.process({"text": ""}) is None
    assert normalize.dropped == {"empty": 2}


def test_normalize_returns_a_new_record_and_keeps_other_fields():
    record = {"text": "a  b", "label": 1, "source": "f.txt:3"}
    original = copy.deepcopy(record)
    result = make(Normalize).process(record)
    assert record == original
    assert result == {"text": "a b", "label": 1, "source": "f.txt:3"}


# clean


def test_clean_removes_html_tags_hidden_elements_and_entities():
    clean = make(Clean)
    text = ("<html><head><style>p { color: red }</style></head><body><p>Fish &amp; <b>chips</b>"
            "</p><script type='text/javascript'>alert('x')</script><!-- a comment -->"
            "<p>caf&eacute; &lt;b&gt;</p></body></html>")
    assert text_of(clean, text) == "Fish & chips\n\ncafé <b>"


def test_clean_keeps_angle_brackets_that_are_not_html_tags():
    clean = make(Clean)
    text = "<p>if a < b and c > d:\n    <BLANKLINE>\n    <class 'int'></p>"
    assert text_of(clean, text) == "if a < b and c > d:\n    <BLANKLINE>\n    <class 'int'>"


def test_clean_leaves_text_without_markup_alone():
    clean = make(Clean)
    text = 'Reads "<input>" or lines like "<P>"; run(\'<a statement>\') escapes > as &gt;.'
    assert text_of(clean, text) == text


def test_clean_removes_doctypes_and_processing_instructions():
    clean = make(Clean)
    text = '<?xml version="1.0"?><!DOCTYPE html><html lang="en">Hi</html>'
    assert text_of(clean, text) == "Hi"


def test_clean_html_can_be_turned_off():
    clean = make(Clean, html=False)
    assert text_of(clean, "<b>bold</b> &amp;") == "<b>bold</b> &amp;"


def test_clean_removes_urls():
    clean = make(Clean)
    text = ("See https://example.com/a_(b)?q=1, or www.example.org. Also ftp://files.example.net/x "
            "and HTTP://EXAMPLE.COM")
    assert text_of(clean, text) == "See, or. Also and"


def test_clean_replaces_urls_and_emails_with_the_replacement():
    clean = make(Clean, replacement="<link>")
    text = "Visit http://example.com/page. Mail jane.doe+news@mail.example.co.uk today."
    assert text_of(clean, text) == "Visit <link>. Mail <link> today."


def test_clean_urls_can_be_turned_off():
    clean = make(Clean, urls=False)
    assert text_of(clean, "Visit http://example.com now") == "Visit http://example.com now"


def test_clean_removes_emails():
    clean = make(Clean)
    assert text_of(clean, "Write to jane.doe@example.com  or mailto:x@y.org.") == "Write to or."


def test_clean_removes_brackets_around_addresses():
    clean = make(Clean)
    text = "By Greg Ward <gward@python.net>, see <https://example.com/optik> (www.optik.org)."
    assert text_of(clean, text) == "By Greg Ward, see."


def test_clean_keeps_at_signs_that_are_not_emails():
    clean = make(Clean)
    text = "@property\ndef area(self):\n    return a @ b"
    assert text_of(clean, text) == text


def test_clean_emails_can_be_turned_off():
    clean = make(Clean, emails=False)
    assert text_of(clean, "Write to jane@example.com") == "Write to jane@example.com"


def test_clean_leaves_whitespace_alone_when_nothing_was_removed():
    record = {"text": "  indented  text  "}
    assert make(Clean).process(record) is record


def test_clean_drops_a_record_left_empty():
    clean = make(Clean)
    assert clean.process({"text": "<p> </p>"}) is None
    assert clean.process({"text": "https://example.com"}) is None
    assert clean.dropped == {"empty": 2}


def test_clean_does_not_mutate_the_record():
    record = {"text": "<i>a</i> http://x.org", "source": "s:1"}
    result = make(Clean).process(record)
    assert record == {"text": "<i>a</i> http://x.org", "source": "s:1"}
    assert result == {"text": "a", "source": "s:1"}


# filter


@pytest.mark.parametrize(("settings", "kept", "dropped", "reason"), [
    ({"min_chars": 5}, "abcde", "abcd", "too_short_chars"),
    ({"max_chars": 5}, "abcde", "abcdef", "too_long_chars"),
    ({"min_words": 2}, "one two", "one", "too_few_words"),
    ({"max_words": 2}, "one two", "one two three", "too_many_words"),
    ({"max_non_letter_ratio": 0.5}, "ab 12", "ab 123", "non_letters"),
    ({"max_repeated_line_ratio": 0.5}, "x\ny\n\nx\ny", "x\nx\nx", "repeated_lines"),
])
def test_filter_rule_at_its_boundary(settings, kept, dropped, reason):
    keep_all = {"min_chars": None}
    filter_ = make(Filter, **{**keep_all, **settings})
    record = {"text": kept}
    assert filter_.process(record) is record
    assert filter_.process({"text": dropped}) is None
    assert filter_.dropped == {reason: 1}


def test_filter_defaults_keep_prose_and_docstrings_and_drop_empty_text():
    filter_ = make(Filter)
    for text in (DOCSTRING, "Emma Woodhouse, handsome, clever, and rich.", "x", "CHAPTER 1"):
        assert filter_.process({"text": text}) is not None
    assert filter_.process({"text": ""}) is None
    assert filter_.dropped == {"too_short_chars": 1}


def test_non_letter_ratio_counts_visible_characters_only():
    assert non_letter_ratio("a b 1") == pytest.approx(1 / 3)
    assert non_letter_ratio("    ") == 0.0
    assert non_letter_ratio("élan_1!") == pytest.approx(3 / 7)


def test_repeated_line_ratio_ignores_blank_lines_and_surrounding_spaces():
    assert repeated_line_ratio("a\n\n\n  a  \nb") == pytest.approx(1 / 3)
    assert repeated_line_ratio("\n\n") == 0.0


@pytest.mark.parametrize(("settings", "message"), [
    ({"min_chars": 10, "max_chars": 5}, "min_chars (10) is greater than max_chars (5)"),
    ({"min_words": 3, "max_words": 2}, "min_words (3) is greater than max_words (2)"),
    ({"min_chars": -1}, "greater than or equal to 0"),
    ({"max_non_letter_ratio": 1.5}, "less than or equal to 1"),
    ({"max_words": "many"}, "valid integer"),
    ({"min_char": 3}, "Extra inputs are not permitted"),
])
def test_filter_rejects_nonsense_settings(settings, message):
    with pytest.raises(ValidationError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Filter.Settings(**settings)


# stopwords


def test_stop_word_list_is_the_standard_english_one():
    assert 170 <= len(ENGLISH_STOP_WORDS) <= 200
    assert {"the", "a", "and", "not", "no", "don't", "yourselves"} <= ENGLISH_STOP_WORDS
    assert "cat" not in ENGLISH_STOP_WORDS


def test_stopwords_removes_stop_words_keeping_punctuation():
    stopwords = make(Stopwords)
    assert text_of(stopwords, "The cat sat on the mat.") == "cat sat mat."
    assert text_of(stopwords, "I saw the end of it.") == "saw end."
    assert text_of(stopwords, '"The garden," she said, "is lovely."') == '"garden," said, "lovely."'


def test_stopwords_compares_case_insensitively_with_both_apostrophes():
    stopwords = make(Stopwords)
    assert text_of(stopwords, "THE Cat DON'T Sleep, don\u2019t") == "Cat Sleep,"


def test_stopwords_normalizes_whitespace():
    assert text_of(make(Stopwords), "  cat\n\n  sat\tdown  ") == "cat sat"


def test_stopwords_keep_and_extra():
    text = "This movie is not good and no fun"
    assert text_of(make(Stopwords), text) == "movie good fun"
    assert text_of(make(Stopwords, keep=["not", "No"]), text) == "movie not good no fun"
    assert text_of(make(Stopwords, extra=["Movie"]), text) == "good fun"


def test_stopwords_drops_a_record_left_empty():
    stopwords = make(Stopwords)
    assert stopwords.process({"text": "It is what it is."}) is None
    assert stopwords.dropped == {"empty": 1}


def test_stopwords_does_not_mutate_the_record():
    record = {"text": "the cat", "label": "pos"}
    assert make(Stopwords).process(record) == {"text": "cat", "label": "pos"}
    assert record == {"text": "the cat", "label": "pos"}


@pytest.mark.parametrize(("settings", "message"), [
    ({"extra": ["two words"]}, "not a single word"),
    ({"keep": [""]}, "not a single word"),
    ({"extra": ["cat"], "keep": ["CAT"]}, "both in extra and keep: cat"),
    ({"extra": "cat"}, "valid list"),
    ({"stop": ["cat"]}, "Extra inputs are not permitted"),
])
def test_stopwords_rejects_nonsense_settings(settings, message):
    with pytest.raises(ValidationError, match=message):
        Stopwords.Settings(**settings)


# settings and registration


@pytest.mark.parametrize(("cls", "settings", "message"), [
    (Normalize, {"lowercase": [1]}, "valid boolean"),
    (Clean, {"html": "sometimes"}, "valid boolean"),
    (Clean, {"replacement": 3}, "valid string"),
    (Normalize, {"colour": "blue"}, "Extra inputs are not permitted"),
    (Clean, {"url": False}, "Extra inputs are not permitted"),
])
def test_settings_reject_bad_types_and_unknown_keys(cls, settings, message):
    with pytest.raises(ValidationError, match=message):
        cls.Settings(**settings)


@pytest.mark.parametrize(("name", "cls"), [
    ("normalize", Normalize), ("clean", Clean), ("filter", Filter), ("stopwords", Stopwords),
])
def test_preprocessors_are_registered(registry, name, cls):
    entry = registry.get("preprocessor", name)
    assert entry.component is cls
    assert entry.settings is cls.Settings
    assert entry.doc.strip()
    assert isinstance(entry.create({}), cls)
