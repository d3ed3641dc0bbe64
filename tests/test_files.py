"""Files written whole or not at all (results, manifests, a trained verifier, server state)."""

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
