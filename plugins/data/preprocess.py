"""Built-in preprocessors: normalize, clean, filter and stopwords."""

from __future__ import annotations

import html
import re
import sys
import unicodedata
from functools import cache

from pydantic import Field, field_validator, model_validator

from lmforge import hookimpl
from lmforge.interfaces.data import Preprocessor, Record
from lmforge.settings import Settings as ComponentSettings

# Characters that end a line besides "\n" (those str.splitlines knows); "\r\n" is handled first.
_LINE_SEPARATORS = "\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"
_LINE_SEPARATOR_TABLE = str.maketrans(dict.fromkeys(_LINE_SEPARATORS, "\n"))
_BLANK_LINE_RUN = re.compile(r"\n{3,}")


def _word_set(words: str) -> frozenset[str]:
    """The whitespace-separated words of `words` (long word lists read best as text)."""
    return frozenset(words.split())


def _character_class(codes: list[int]) -> str:
    """A regex character class matching the sorted code points `codes`, as ranges."""
    ranges: list[list[int]] = []
    for code in codes:
        if ranges and ranges[-1][1] == code - 1:
            ranges[-1][1] = code
        else:
            ranges.append([code, code])
    return "[" + "".join(re.escape(chr(first)) if first == last
                         else f"{re.escape(chr(first))}-{re.escape(chr(last))}"
                         for first, last in ranges) + "]"


@cache
def _control_chars() -> tuple[dict[int, str | None], re.Pattern]:
    """A str.translate table that turns line separators into newlines and deletes the other
    control and format characters (Unicode Cc and Cf) but tab and newline, and a regex finding
    any of them.

    Built on first use (it scans every code point, about 0.1 s) so importing plugins stays fast.
    """
    codes = [code for code in range(sys.maxunicode + 1)
             if unicodedata.category(chr(code)) in ("Cc", "Cf") and chr(code) not in "\n\t"]
    table: dict[int, str | None] = dict.fromkeys(codes)
    table.update(_LINE_SEPARATOR_TABLE)
    return table, re.compile(_character_class(codes))


def remove_control_chars(text: str) -> str:
    """Delete control and format characters but tab and newline; line separators become
    newlines."""
    table, pattern = _control_chars()
    text = text.replace("\r\n", "\n")
    # str.translate is fast on ASCII text but slow elsewhere, where a regex finds the rare text
    # that needs it sooner.
    if text.isascii() or pattern.search(text):
        text = text.translate(table)
    return text


def _tidy_line(line: str) -> str:
    content = line.strip()
    if not content:
        return ""
    if "  " in content or "\t" in content or not content.isascii():
        content = " ".join(content.split())
    return line[:len(line) - len(line.lstrip())] + content


def tidy_whitespace(text: str) -> str:
    """Strip trailing whitespace per line, turn runs of spaces or tabs inside a line into one
    space (leading indentation is kept), at most one blank line in a row, no blank lines or
    whitespace at the ends (the first line keeps its indentation)."""
    text = "\n".join([_tidy_line(line) for line in text.split("\n")])
    if "\n\n\n" in text:
        text = _BLANK_LINE_RUN.sub("\n\n", text)
    return text.lstrip("\n").rstrip()


class Normalize(Preprocessor):
    """Normalizes Unicode and whitespace.

    In order: Unicode NFKC (compatibility forms such as ligatures and full-width characters
    become their plain equivalents); control and format characters removed (Unicode categories
    Cc and Cf such as BOMs and zero-width spaces, except tab and newline; line separators such as
    CR, form feed and U+2028 become newlines); whitespace normalized (CRLF becomes LF, trailing
    whitespace removed, runs of spaces or tabs inside a line become one space while leading
    indentation is kept, at most one blank line in a row, blank lines and whitespace at the ends
    removed, though the first line keeps its indentation);
    optionally lowercased. A record left empty is dropped ("empty").
    """

    at_inference = True
    per_record = True

    class Settings(ComponentSettings):
        nfkc: bool = Field(True, description="apply Unicode NFKC normalization")
        remove_control_chars: bool = Field(
            True, description="remove control and format characters (Unicode Cc/Cf) except tab "
                              "and newline; line separators become newlines")
        normalize_whitespace: bool = Field(
            True, description="CRLF to LF, strip trailing whitespace, collapse spaces inside "
                              "lines (keeping indentation) and runs of blank lines")
        lowercase: bool = False

    def __init__(self, settings: Normalize.Settings):
        super().__init__(settings)
        if settings.remove_control_chars:
            _control_chars()  # built now rather than while the first record waits

    def process(self, record: Record) -> Record | None:
        text = record["text"]
        if self.settings.nfkc:
            text = unicodedata.normalize("NFKC", text)
        if self.settings.remove_control_chars:
            text = remove_control_chars(text)
        elif self.settings.normalize_whitespace:
            text = text.replace("\r\n", "\n").translate(_LINE_SEPARATOR_TABLE)
        if self.settings.normalize_whitespace:
            text = tidy_whitespace(text)
        if self.settings.lowercase:
            text = text.lower()
        if not text.strip():
            return self.drop("empty")
        return {**record, "text": text}


_HTML_ELEMENTS = _word_set(
    "a abbr address area article aside audio b base bdi bdo big blockquote body br button canvas "
    "caption center cite code col colgroup data datalist dd del details dfn dialog div dl dt em "
    "embed fieldset figcaption figure font footer form frame frameset h1 h2 h3 h4 h5 h6 head "
    "header hgroup hr html i iframe img input ins kbd label legend li link main map mark meta "
    "meter nav noscript object ol optgroup option output p param picture pre progress q rp rt "
    "ruby s samp section select small source span strike strong sub summary sup svg table tbody "
    "td template textarea tfoot th thead time title tr track tt u ul var video wbr"
)
# Removing these would join the text on either side, so they become a line break.
_LINE_BREAKING_ELEMENTS = _word_set(
    "address article aside blockquote body br dd div dl dt fieldset figcaption figure footer "
    "form h1 h2 h3 h4 h5 h6 header hr html li main nav ol p pre section table td th tr ul")
_ELEMENT_NAME = "|".join(sorted(_HTML_ELEMENTS, key=len, reverse=True))
# A text is treated as HTML only when it shows markup that prose and code rarely contain: a closing
# tag, an attribute assignment, a comment or a doctype. Docstrings mentioning "<input>", "<P>" or
# "<a statement>", or explaining entities such as "&gt;", are left as they are.
_HTML_EVIDENCE = re.compile(
    rf"</(?:{_ELEMENT_NAME})\s*>|<(?:{_ELEMENT_NAME})\s[^<>]*=|<!--|<!doctype", re.IGNORECASE)
_HIDDEN_ELEMENT = re.compile(r"<(script|style)\b[^>]*>.*?</\1\s*>", re.IGNORECASE | re.DOTALL)
# Only known element names count as tags, so comparisons such as `a < b > c`, doctest
# `<BLANKLINE>` and reprs such as `<class 'int'>` survive even in HTML.
_HTML_TAG = re.compile(
    rf"<!--.*?-->|<![A-Za-z\[][^<>]*>|<\?[A-Za-z][^<>]*\?>|</?({_ELEMENT_NAME})\b(?:\s[^<>]*)?/?>",
    re.IGNORECASE | re.DOTALL)
_URL_CHAR = r"[^\s<>\"'`()\[\]{}]"
_URL_PARENS = r"\([^\s<>\"'`()]*\)"
_URL_LAST_CHAR = r"[^\s<>\"'`()\[\]{}.,;:!?*]"
_URL_BODY = (rf"\b(?:(?:https?|ftp)://|www\.)(?:{_URL_CHAR}|{_URL_PARENS})*"
             rf"(?:{_URL_LAST_CHAR}|{_URL_PARENS})")
_EMAIL_BODY = r"\b(?:mailto:)?[\w.%+-]+@[\w-]+(?:\.[\w-]+)*\.[^\W\d_]{2,}\b"


def _address_pattern(body: str) -> re.Pattern:
    """An address alone or in brackets ("Ann <ann@example.com>", "(www.example.com)"), which go
    with it; the spaces before it are captured so that removing it leaves no space before the
    next punctuation."""
    return re.compile(rf"(?P<space>[^\S\n]*)(?:<{body}>|\({body}\)|{body})", re.IGNORECASE)


_URL = _address_pattern(_URL_BODY)
_EMAIL = _address_pattern(_EMAIL_BODY)


def _tag_replacement(match: re.Match) -> str:
    element = match.group(1)
    return "\n" if element and element.lower() in _LINE_BREAKING_ELEMENTS else ""


def _may_contain_url(text: str) -> bool:
    """A cheap test (C-speed substring checks) that lets most texts skip the URL regex."""
    return "://" in text or "www." in text or "WWW." in text


class Clean(Preprocessor):
    """Removes HTML markup, URLs and e-mail addresses.

    HTML: a text showing markup (a closing tag such as `</p>`, an attribute such as `href=`, a
    comment or a doctype) loses its `<script>` and `<style>` elements with their contents, its
    comments and the tags of known HTML elements (block elements such as `<p>` and `<br>` become a
    line break), then its entities such as `&amp;` are unescaped. Other texts are left alone, so
    docstrings mentioning `<input>` or explaining `&gt;` survive, and so do angle brackets around
    other words even in HTML (comparisons, doctest `<BLANKLINE>`, reprs like `<class 'int'>`).
    URLs (http, https, ftp, or starting with www.) and e-mail addresses, with angle brackets
    around them if any, become `replacement`. Whitespace is tidied where something was removed.
    A record left empty is dropped ("empty").
    """

    at_inference = True
    per_record = True

    class Settings(ComponentSettings):
        html: bool = Field(True, description="remove HTML tags, script/style contents and "
                                             "comments, and unescape entities")
        urls: bool = Field(True, description="replace http(s)/ftp/www. URLs with `replacement`")
        emails: bool = Field(True, description="replace e-mail addresses with `replacement`")
        replacement: str = Field("", description="what a removed URL or e-mail address becomes, "
                                                 "e.g. '<url>'; empty removes it")

    def process(self, record: Record) -> Record | None:
        original = record["text"]
        text = original
        if self.settings.html:
            text = self._remove_html(text)
        if self.settings.urls and _may_contain_url(text):
            text = _URL.sub(self._replace_address, text)
        if self.settings.emails and "@" in text:
            text = _EMAIL.sub(self._replace_address, text)
        if text == original:
            return record
        text = tidy_whitespace(text)
        if not text:
            return self.drop("empty")
        return {**record, "text": text}

    def _replace_address(self, match: re.Match) -> str:
        replacement = self.settings.replacement
        return match.group("space") + replacement if replacement else ""

    @staticmethod
    def _remove_html(text: str) -> str:
        if "<" not in text or not _HTML_EVIDENCE.search(text):
            return text
        text = _HIDDEN_ELEMENT.sub("", text)
        text = _HTML_TAG.sub(_tag_replacement, text)
        return html.unescape(text) if "&" in text else text


def _check_range(settings: ComponentSettings, low: str, high: str) -> None:
    low_value, high_value = getattr(settings, low), getattr(settings, high)
    if low_value is not None and high_value is not None and low_value > high_value:
        raise ValueError(f"{low} ({low_value}) is greater than {high} ({high_value}): "
                         f"no text could pass")


class Filter(Preprocessor):
    """Drops records by length and by simple quality signals.

    Each rule drops under its own reason: `min_chars`/`max_chars` ("too_short_chars",
    "too_long_chars"), `min_words`/`max_words` ("too_few_words", "too_many_words"; words are runs
    of non-whitespace), `max_non_letter_ratio` ("non_letters": the share of visible characters
    that are not letters — digits, punctuation, symbols) and `max_repeated_line_ratio`
    ("repeated_lines": the share of non-blank lines repeating an earlier line of the same record).
    Bounds are inclusive; None disables a rule.
    """

    per_record = True

    class Settings(ComponentSettings):
        min_chars: int | None = Field(1, ge=0, description="fewest characters a record may have")
        max_chars: int | None = Field(None, ge=1, description="most characters a record may have")
        min_words: int | None = Field(None, ge=0, description="fewest words a record may have")
        max_words: int | None = Field(None, ge=1, description="most words a record may have")
        max_non_letter_ratio: float | None = Field(
            None, ge=0.0, le=1.0,
            description="largest share of visible characters that are not letters; off by default "
                        "because code-heavy docstrings (doctests, signatures) run to 0.3-0.5 and "
                        "tables of numbers higher; 0.5 drops mostly symbol soup from web text")
        max_repeated_line_ratio: float | None = Field(
            None, ge=0.0, le=1.0,
            description="largest share of non-blank lines that repeat an earlier line; off by "
                        "default because short texts reach high shares by chance (2 equal lines "
                        "of 2 give 0.5); 0.3 drops boilerplate-heavy web pages")

        @model_validator(mode="after")
        def _bounds_ordered(self):
            _check_range(self, "min_chars", "max_chars")
            _check_range(self, "min_words", "max_words")
            return self

    def process(self, record: Record) -> Record | None:
        reason = self._rejection(record["text"])
        return record if reason is None else self.drop(reason)

    def _rejection(self, text: str) -> str | None:
        settings = self.settings
        if settings.min_chars is not None and len(text) < settings.min_chars:
            return "too_short_chars"
        if settings.max_chars is not None and len(text) > settings.max_chars:
            return "too_long_chars"
        if settings.min_words is not None or settings.max_words is not None:
            words = len(text.split())
            if settings.min_words is not None and words < settings.min_words:
                return "too_few_words"
            if settings.max_words is not None and words > settings.max_words:
                return "too_many_words"
        if (settings.max_non_letter_ratio is not None
                and non_letter_ratio(text) > settings.max_non_letter_ratio):
            return "non_letters"
        if (settings.max_repeated_line_ratio is not None
                and repeated_line_ratio(text) > settings.max_repeated_line_ratio):
            return "repeated_lines"
        return None


_NON_LETTER = re.compile(r"[^\w\s]|[\d_]")


def non_letter_ratio(text: str) -> float:
    """The share of non-whitespace characters that are not letters (0 for a blank text)."""
    visible = sum(map(len, text.split()))
    return len(_NON_LETTER.findall(text)) / visible if visible else 0.0


def repeated_line_ratio(text: str) -> float:
    """The share of non-blank lines equal (ignoring surrounding whitespace) to an earlier one."""
    lines = [stripped for line in text.splitlines() if (stripped := line.strip())]
    return (len(lines) - len(set(lines))) / len(lines) if lines else 0.0


ENGLISH_STOP_WORDS = _word_set("""
i me my myself we our ours ourselves you you're you've you'll you'd your yours yourself
yourselves he him his himself she she's her hers herself it it's its itself they them their
theirs themselves what which who whom this that that'll these those am is are was were be been
being have has had having do does did doing a an the and but if or because as until while of at
by for with about against between into through during before after above below to from up down
in out on off over under again further then once here there when where why how all any both each
few more most other some such no nor not only own same so than too very s t can will just don
don't should should've now d ll m o re ve y ain aren aren't couldn couldn't didn didn't doesn
doesn't hadn hadn't hasn hasn't haven haven't isn isn't ma mightn mightn't mustn mustn't needn
needn't shan shan't shouldn shouldn't wasn wasn't weren weren't won won't wouldn wouldn't
""")
_PUNCTUATION = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~‘’“”«»–—…"
_TYPOGRAPHIC_APOSTROPHE = str.maketrans("’", "'")


def _word_key(word: str) -> str:
    return word.casefold().translate(_TYPOGRAPHIC_APOSTROPHE)


class Stopwords(Preprocessor):
    """Removes English stop words, for word-level classifier features.

    Uses the common English list (NLTK's, 179 words, with contractions such as "don't").
    Words compare case-insensitively, ignoring punctuation around them; that punctuation is kept:
    what followed a removed word joins the previous word and what preceded it joins the next
    ("the end of it." becomes "end."). Whitespace becomes single spaces. `extra` adds words to
    the list; `keep` takes words off it — for sentiment, keep negations such as "not", "no",
    "nor" and "don't", which the list contains. A record left empty is dropped ("empty").
    """

    at_inference = True
    per_record = True

    class Settings(ComponentSettings):
        extra: list[str] = Field([], description="words to remove besides the standard list")
        keep: list[str] = Field([], description="words of the standard list to keep, e.g. "
                                                "['not', 'no'] for sentiment")

        @field_validator("extra", "keep")
        @classmethod
        def _single_words(cls, words: list[str]) -> list[str]:
            for word in words:
                if not word or word != word.strip() or len(word.split()) != 1:
                    raise ValueError(f"{word!r} is not a single word without spaces")
            return words

        @model_validator(mode="after")
        def _no_contradiction(self):
            both = {_word_key(w) for w in self.extra} & {_word_key(w) for w in self.keep}
            if both:
                raise ValueError(f"words both in extra and keep: {', '.join(sorted(both))}")
            return self

    def __init__(self, settings: Stopwords.Settings):
        super().__init__(settings)
        extra = {_word_key(word) for word in settings.extra}
        keep = {_word_key(word) for word in settings.keep}
        self.stop_words = frozenset((ENGLISH_STOP_WORDS | extra) - keep)

    def process(self, record: Record) -> Record | None:
        text = self.remove_stop_words(record["text"])
        if not text:
            return self.drop("empty")
        return {**record, "text": text}

    def remove_stop_words(self, text: str) -> str:
        """The text without its stop words, in single-spaced words; empty when nothing but stop
        words (and the punctuation around them) was there."""
        kept: list[str] = []
        carried_prefix = ""
        for token in text.split():
            core = token.strip(_PUNCTUATION)
            if _word_key(core) not in self.stop_words:
                kept.append(carried_prefix + token)
                carried_prefix = ""
                continue
            start = len(token) - len(token.lstrip(_PUNCTUATION))
            prefix, suffix = token[:start], token[start + len(core):]
            if suffix and kept:
                kept[-1] += suffix
            else:
                carried_prefix += suffix
            carried_prefix += prefix
        return " ".join(kept)


@hookimpl
def register_preprocessors(register):
    register("normalize", Normalize)
    register("clean", Clean)
    register("filter", Filter)
    register("stopwords", Stopwords)
