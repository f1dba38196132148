"""Bad local data through `detoxflow dataset`: exit 2, one line naming the culprit, no output written."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from detoxflow.cli import main
from detoxflow.errors import DetoxflowError
from detoxflow.io import read_jsonl

LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ [A-Z]+ ")

GOOD = {"text": "fine", "label": 1}


def _jsonl(*lines: str) -> bytes:
    return "".join(line + "\n" for line in lines).encode()


# name -> (file name, file bytes, recipe beyond format/local.path, message regex; FILE is the file's path)
CASES = {
    "empty-csv": ("e.csv", b"", {"format": "csv"}, r"dataset recipe 'x': FILE: empty file \(no header, no rows\)"),
    "header-only-csv": ("h.csv", b"text,label\n", {"format": "csv"},
                        r"dataset recipe 'x': FILE: no rows, only a header \(text, label\)"),
    "broken-jsonl-line": ("b.jsonl", _jsonl(json.dumps(GOOD), "", '{"text": "x" "label": 2}', json.dumps(GOOD)),
                          {"format": "jsonl"},
                          r"dataset recipe 'x': FILE, line 3, column 14: not valid JSON \(Expecting ',' delimiter\)$"),
    "jsonl-line-not-an-object": ("l.jsonl", _jsonl(json.dumps(GOOD), "[1, 2]"), {"format": "jsonl"},
                                 r"dataset recipe 'x': FILE, line 2: expected a JSON object, got list"),
    "jsonl-not-utf8": ("u.jsonl", _jsonl(json.dumps(GOOD)) + b'{"text": "\xff"}\n', {"format": "jsonl"},
                       r"dataset recipe 'x': FILE, line 2: not UTF-8 text \(invalid start byte at byte 10\)"),
    "broken-json": ("j.json", b'[\n {"text": "a"},\n {"text": }\n]\n', {"format": "json"},
                    r"dataset recipe 'x': FILE, line 3, column 11: not valid JSON \(Expecting value\)"),
    "missing-text-column": ("m.csv", b"comment,label\nhi,1\n", {"format": "jigsaw"},
                            r"dataset recipe 'x': FILE: record 0 has no text column 'comment_text' "
                            r"\(columns: comment, label\); set the recipe's text_field"),
    "missing-where-column": ("w.csv", b"text,label\nhi,1\n",
                             {"format": "csv", "where": [{"column": "toxic", "op": "==", "value": 1}]},
                             r"dataset recipe 'x' \(FILE\): no column 'toxic' to filter on \(columns: label, text\)"),
    "string-value-int-column": ("s.csv", b"text,toxic\nhi,1\nho,0\n",
                                {"format": "csv", "where": [{"column": "toxic", "op": "!=", "value": "1"}]},
                                r"dataset recipe 'x' \(FILE\): where toxic != '1': column 'toxic' holds integers "
                                r"\(int\) but the value '1' is a string \(str\); write 1 without quotes"),
    "unsupported-type": ("t.xlsx", b"PK", {"format": "csv"},
                         r"dataset recipe 'x': FILE: unsupported file type '.xlsx'"),
}


def _run_in_process(tmp_path, capfd, name):
    filename, content, recipe, message = CASES[name]
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / filename).write_bytes(content)
    out = tmp_path / "out" / "x.jsonl"
    recipe = {**recipe, "local": {"path": filename}}
    code = main(["dataset", "--name", "x", "--recipe", json.dumps(recipe), "--data-root", str(tmp_path / "data"),
                 "--out", str(out)])
    err = capfd.readouterr().err
    return code, err, out, message.replace("FILE", re.escape(str(tmp_path / "data" / filename)))


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip() and not LOG_LINE.match(line)]


@pytest.mark.parametrize("name", list(CASES))
def test_bad_local_data_is_one_line_exit_2_and_no_output(tmp_path, capfd, name):
    code, err, out, message = _run_in_process(tmp_path, capfd, name)
    assert code == 2
    lines = _error_lines(err)
    assert len(lines) == 1, err
    assert re.fullmatch(r"detoxflow dataset: error: " + message + r".*", lines[0]), lines[0]
    assert "Traceback" not in err
    assert not out.exists() and not (out.parent.exists() and any(out.parent.iterdir()))


@pytest.mark.parametrize("name", ["empty-csv", "broken-jsonl-line"])
def test_the_console_command_gives_the_same_line(tmp_path, name):
    filename, content, recipe, message = CASES[name]
    (tmp_path / filename).write_bytes(content)
    out = tmp_path / "out" / "x.jsonl"
    proc = subprocess.run(
        [sys.executable, "-m", "detoxflow", "dataset", "--name", "x", "--data-root", str(tmp_path),
         "--recipe", json.dumps({**recipe, "local": {"path": filename}}), "--out", str(out)],
        capture_output=True, text=True)
    assert proc.returncode == 2
    lines = _error_lines(proc.stderr)
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert re.fullmatch(r"detoxflow dataset: error: " + message.replace("FILE", re.escape(str(tmp_path / filename))),
                        lines[0])
    assert not out.parent.exists()


def test_read_jsonl_reports_the_files_line_not_the_records(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text('{"a": 1}\n\n\n{"a": 2, "b" 3}\n')
    with pytest.raises(DetoxflowError) as info:
        read_jsonl(path)
    assert str(info.value) == f"{path}, line 4, column 14: not valid JSON (Expecting ':' delimiter)"
    path.write_text('{"a": 1}\r\n{"a": 2}\r\n\r\n')
    assert read_jsonl(path) == [{"a": 1}, {"a": 2}]
