"""The files thinktree writes: whole or not at all, and a log file that stays bounded."""

from __future__ import annotations

from pathlib import Path

import pytest

from thinktree._files import atomic_file, atomic_write


def test_atomic_write_replaces_the_file_and_leaves_nothing_beside_it(tmp_path: Path) -> None:
    path = tmp_path / "results.json"
    path.write_text("old")
    atomic_write(path, "néw")
    assert path.read_text(encoding="utf-8") == "néw"
    atomic_write(path, b"bytes")
    assert path.read_bytes() == b"bytes"
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


def test_a_failure_while_writing_keeps_the_old_file_and_leaves_no_part(tmp_path: Path) -> None:
    path = tmp_path / "results.json"
    path.write_text("complete")
    with pytest.raises(RuntimeError, match="disk gone"), atomic_file(path) as f:
        f.write(b'{"half": ')
        raise RuntimeError("disk gone")
    assert path.read_text() == "complete"
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


def test_a_failure_before_the_first_write_creates_no_file(tmp_path: Path) -> None:
    path = tmp_path / "manifest.json"
    with pytest.raises(ValueError), atomic_file(path):
        raise ValueError
    assert list(tmp_path.iterdir()) == []


def test_the_log_file_starts_afresh_past_its_limit_and_keeps_one_old_one(tmp_path: Path) -> None:
    from thinktree.logging_setup import _rotate

    log = tmp_path / "thinktree.jsonl"
    _rotate(log, limit=10)  # no log yet: nothing to do
    log.write_text("small\n")
    _rotate(log, limit=10)
    assert log.read_text() == "small\n"
    log.write_text("x" * 11)
    (tmp_path / "thinktree.jsonl.1").write_text("older")
    _rotate(log, limit=10)
    assert not log.exists()
    assert (tmp_path / "thinktree.jsonl.1").read_text() == "x" * 11
