"""Tests of the file helpers for data sources: path expansion, the line reader, file hashing."""

import gzip
import tracemalloc
from pathlib import Path

import pytest

from lmforge.errors import DataError
from lmforge.plugins.data.textio import _BLOCK_BYTES, Line, expand_paths, hash_files, read_lines


def write(path: Path, data: bytes | str = b"x\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def texts(path: Path, **kwargs) -> list[str]:
    return [line.text for line in read_lines(path, **kwargs)]


# expand_paths

def test_a_file_is_itself(tmp_path):
    path = write(tmp_path / "a.txt")
    assert expand_paths([str(path)]) == [path]


def test_a_folder_takes_every_visible_file_below_it_sorted(tmp_path):
    for name in ["b.txt", "a.jsonl", "sub/c.gz", "sub/deeper/d", ".hidden", ".git/config",
                 "sub/.cache/e.txt"]:
        write(tmp_path / "data" / name)
    found = expand_paths([str(tmp_path / "data")])
    relative = [path.relative_to(tmp_path / "data").as_posix() for path in found]
    assert relative == ["a.jsonl", "b.txt", "sub/c.gz", "sub/deeper/d"]


def test_globs_match_files_and_double_star_recurses(tmp_path):
    for name in ["a.txt", "b.csv", "sub/c.txt", "sub/deeper/d.txt"]:
        write(tmp_path / name)
    assert [p.name for p in expand_paths([str(tmp_path / "*.txt")])] == ["a.txt"]
    assert [p.name for p in expand_paths([str(tmp_path / "**" / "*.txt")])] == [
        "a.txt", "c.txt", "d.txt"]
    assert [p.name for p in expand_paths([str(tmp_path / "?.csv")])] == ["b.csv"]


def test_result_is_sorted_and_free_of_duplicates(tmp_path):
    a, b = write(tmp_path / "a.txt"), write(tmp_path / "b.txt")
    found = expand_paths([str(b), str(tmp_path / "*.txt"), str(a), str(tmp_path)])
    assert found == [a, b]


def test_relative_paths_are_taken_from_the_current_directory(tmp_path, monkeypatch):
    write(tmp_path / "data" / "a.txt")
    monkeypatch.chdir(tmp_path)
    assert expand_paths(["data/a.txt", "data/*.txt", "data"]) == [Path("data/a.txt")]


@pytest.mark.parametrize("entry, expected", [
    ("missing.txt", "no such file or folder"),
    ("*.nothing", "matches no files"),
    ("empty_folder", "found none"),
    ("only_folders/*", "matches no files"),
])
def test_an_entry_matching_nothing_is_an_error_naming_it(tmp_path, monkeypatch, entry, expected):
    (tmp_path / "empty_folder").mkdir()
    (tmp_path / "only_folders" / "sub").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match=expected) as caught:
        expand_paths([entry])
    assert entry in str(caught.value)


def test_an_empty_path_is_an_error():
    with pytest.raises(DataError, match="empty path"):
        expand_paths([" "])


# read_lines

def test_lines_are_numbered_from_one_without_their_endings(tmp_path):
    lines = list(read_lines(write(tmp_path / "a.txt", "first\n\nthird\n")))
    assert lines == [Line(1, "first"), Line(2, ""), Line(3, "third")]


def test_crlf_and_lone_cr_end_lines(tmp_path):
    path = write(tmp_path / "a.txt", b"dos\r\nmac\runix\n\r\nlast")
    assert texts(path) == ["dos", "mac", "unix", "", "last"]


def test_a_bom_at_the_start_is_dropped(tmp_path):
    path = write(tmp_path / "a.txt", b"\xef\xbb\xbfhello\r\nworld\r\n")
    assert list(read_lines(path)) == [Line(1, "hello"), Line(2, "world")]


def test_the_last_line_says_whether_it_had_a_line_ending(tmp_path):
    assert [line.newline for line in read_lines(write(tmp_path / "a", "a\nb"))] == [True, False]
    assert [line.newline for line in read_lines(write(tmp_path / "b", "a\nb\n"))] == [True, True]


def test_an_empty_file_has_no_lines(tmp_path):
    assert list(read_lines(write(tmp_path / "a.txt", b""))) == []


def test_invalid_utf8_is_a_problem_of_that_line_only(tmp_path):
    path = write(tmp_path / "a.txt", b"ok\n" + "né \xff".encode("latin-1") + b"\nafter\n")
    first, bad, after = read_lines(path)
    assert (first.text, after.text, after.number) == ("ok", "after", 3)
    assert bad.number == 2 and bad.text == "" and bad.problem.reason == "invalid_utf8"
    # "n\xe9" is bad at its second byte: column 2, byte 2
    assert "column 2" in bad.problem.message and "byte 2 " in bad.problem.message


def test_the_column_of_invalid_utf8_counts_characters_not_bytes(tmp_path):
    path = write(tmp_path / "a.txt", "é€x".encode() + b"\xc3(\n")
    (bad,) = read_lines(path)
    assert "column 4" in bad.problem.message and "byte 7 " in bad.problem.message


def test_a_line_longer_than_the_cap_is_a_problem_and_reading_goes_on(tmp_path):
    path = write(tmp_path / "a.txt", "short\n" + "x" * 11 + "\n" + "y" * 10 + "\nend")
    lines = list(read_lines(path, max_line_bytes=10))
    assert [line.text for line in lines] == ["short", "", "y" * 10, "end"]
    too_long = lines[1].problem
    assert too_long.reason == "line_too_long"
    assert "max_line_bytes=10" in too_long.message and "found 11" in too_long.message


def test_line_endings_and_characters_split_between_blocks_are_joined(tmp_path):
    crlf_split = "a" * (_BLOCK_BYTES - 1) + "\r\nnext\n"
    euro_split = "b" * (_BLOCK_BYTES - 1) + "€\n"
    path = write(tmp_path / "a.txt", crlf_split + euro_split)
    assert texts(path) == ["a" * (_BLOCK_BYTES - 1), "next", "b" * (_BLOCK_BYTES - 1) + "€"]


def test_gzip_files_are_decompressed(tmp_path):
    path = write(tmp_path / "a.txt.gz", gzip.compress(b"\xef\xbb\xbfone\r\ntwo\n"))
    assert texts(path) == ["one", "two"]


def test_a_truncated_gzip_file_is_an_error_naming_it(tmp_path):
    data = gzip.compress(("line\n" * 10_000).encode())
    path = write(tmp_path / "cut.txt.gz", data[: len(data) // 2])
    with pytest.raises(DataError, match="corrupt or truncated") as caught:
        list(read_lines(path))
    assert str(path) in str(caught.value)


def test_a_file_named_gz_that_is_not_gzip_is_an_error_naming_it(tmp_path):
    path = write(tmp_path / "plain.gz", b"not compressed\n")
    with pytest.raises(DataError, match="gzip") as caught:
        list(read_lines(path))
    assert f"{path}:1" in str(caught.value)


def test_a_missing_file_is_an_error_naming_it(tmp_path):
    with pytest.raises(DataError, match="cannot read") as caught:
        list(read_lines(tmp_path / "gone.txt"))
    assert "gone.txt" in str(caught.value)


def test_memory_stays_bounded_on_a_huge_line(tmp_path):
    path = tmp_path / "one_line.txt"
    with open(path, "wb") as stream:
        for _ in range(20):
            stream.write(b"z" * (1 << 20))
        stream.write(b"\nsmall\n")
    tracemalloc.start()
    try:
        lines = list(read_lines(path, max_line_bytes=1 << 20))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert [line.problem.reason if line.problem else line.text for line in lines] == [
        "line_too_long", "small"]
    assert "found 20971520" in lines[0].problem.message
    assert peak < 3 * (1 << 20), f"peak {peak} bytes reading a 20 MiB line"


# hash_files

def test_the_hash_changes_with_content_name_and_order(tmp_path):
    a, b = write(tmp_path / "a.txt", "one\n"), write(tmp_path / "b.txt", "two\n")
    original = hash_files([a, b])
    assert hash_files([a, b]) == original and len(original) == 64
    assert hash_files([b, a]) != original
    renamed = a.rename(tmp_path / "c.txt")
    assert hash_files([renamed, b]) != original
    write(renamed, "one!\n")
    write(a, "one\n")
    assert hash_files([a, b]) == original
    write(b, "two!\n")
    assert hash_files([a, b]) != original


def test_hashing_a_missing_file_is_an_error_naming_it(tmp_path):
    with pytest.raises(DataError, match="gone.txt"):
        hash_files([tmp_path / "gone.txt"])
