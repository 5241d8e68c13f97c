"""mdlm.io: atomic writes leave either the old file or the new one, never a partial one; readers fail in one line."""

import json
import stat

import pytest

from mdlm.errors import UserError
from mdlm.io import atomic_path, atomic_write_json, atomic_write_jsonl, check_writable, read_json, read_jsonl


def test_atomic_write_replaces_whole_file_and_leaves_no_temp(tmp_path):
    out = tmp_path / "sub" / "a.json"
    atomic_write_json(out, {"x": 1})
    atomic_write_json(out, {"x": 2})
    assert json.loads(out.read_text()) == {"x": 2}
    assert [p.name for p in out.parent.iterdir()] == ["a.json"]
    assert stat.S_IMODE(out.stat().st_mode) == 0o644


def test_failed_block_keeps_the_old_file(tmp_path):
    out = tmp_path / "a.txt"
    out.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(out) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed midway")
    assert out.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_read_jsonl_round_trip_skips_blank_lines_with_line_numbers(tmp_path):
    out = tmp_path / "rows.jsonl"
    atomic_write_jsonl(out, [{"a": 1}, {"a": 2}])
    out.write_text(out.read_text() + "\n\n" + '{"a": 3}\n')
    assert list(read_jsonl(out)) == [(1, {"a": 1}), (2, {"a": 2}), (5, {"a": 3})]


@pytest.mark.parametrize("text, message", [
    ('{"a": 1}\n{oops\n', r"rows.jsonl:2: not JSON"),
    ('{"a": 1}\n[1, 2]\n', r"rows.jsonl:2: expected a JSON object per line"),
])
def test_read_jsonl_bad_lines(tmp_path, text, message):
    out = tmp_path / "rows.jsonl"
    out.write_text(text)
    with pytest.raises(UserError, match=message):
        list(read_jsonl(out))


def test_missing_files_name_what_is_missing(tmp_path):
    with pytest.raises(UserError, match=r"nope.jsonl: samples file not found"):
        list(read_jsonl(tmp_path / "nope.jsonl", "samples file"))
    with pytest.raises(UserError, match=r"nope.json: not found \(run the stage\)"):
        read_json(tmp_path / "nope.json", "run the stage")
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(UserError, match=r"bad.json: malformed JSON"):
        read_json(bad)


def test_check_writable_leaves_no_folder_behind(tmp_path):
    """A missing output folder is checked through its nearest existing ancestor and not created: a command
    that fails later (a model that will not load) leaves nothing; an existing folder gets no probe file left."""
    out = tmp_path / "a" / "b" / "out.json"
    check_writable(out)
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "here").mkdir()
    check_writable(tmp_path / "here" / "out.json")
    assert list((tmp_path / "here").iterdir()) == []


def test_check_writable_under_a_file_is_a_one_line_error(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match=r"out\.json: cannot write the output there .*not a folder"):
        check_writable(tmp_path / "file" / "sub" / "out.json")
