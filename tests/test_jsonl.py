"""The JSONL metrics log after a kill: a partial last line goes, a corrupt inner line stops."""

from __future__ import annotations

import pathlib

import pytest

from jnet2net.train import progress, read_jsonl
from jnet2net.train.progress import repair_jsonl

LINES = ['{"epoch": 1, "step": 10}\n', '{"epoch": 2, "step": 20}\n', '{"epoch": 3, "step": 30}\n']


def test_a_partial_last_line_is_dropped_and_returned(tmp_path: pathlib.Path) -> None:
    log = tmp_path / "metrics.jsonl"
    log.write_text("".join(LINES[:2]) + '{"epoch": 3, "st')
    assert repair_jsonl(log) == '{"epoch": 3, "st'
    assert log.read_text() == "".join(LINES[:2])
    assert repair_jsonl(log) is None  # nothing more to drop


def test_a_complete_last_line_without_newline_is_kept(tmp_path: pathlib.Path) -> None:
    log = tmp_path / "metrics.jsonl"
    log.write_text("".join(LINES)[:-1])
    assert repair_jsonl(log) is None
    assert [r["epoch"] for r in read_jsonl(log)] == [1, 2, 3]


@pytest.mark.parametrize("bad", ['{"epoch": 2, "st\n', "[1, 2]\n", "\x00\x00garbage\n"])
def test_an_unreadable_inner_line_is_an_error_naming_file_and_line(
    tmp_path: pathlib.Path, bad: str
) -> None:
    log = tmp_path / "metrics.jsonl"
    text = LINES[0] + bad + LINES[2]
    log.write_text(text)
    with pytest.raises(ValueError, match=rf"^{log} line 2 is not a JSON object"):
        repair_jsonl(log)
    with pytest.raises(ValueError, match=rf"^{log} line 2 is not a JSON object"):
        progress.filter_jsonl(log, lambda record: True)
    assert log.read_text() == text  # no epoch lost


def test_filter_jsonl_warns_when_it_drops_a_partial_line(tmp_path: pathlib.Path) -> None:
    log = tmp_path / "metrics.jsonl"
    log.write_text("".join(LINES[:2]) + '{"epo')
    with pytest.warns(UserWarning, match="dropped the partial last line"):
        progress.filter_jsonl(log, lambda record: record["step"] < 20)
    assert log.read_text() == LINES[0]
