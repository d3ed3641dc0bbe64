"""A run killed while creating its run store resumes (the half-made store is discarded)."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

from thinktree.testing.fake_server import FakeBehaviour, fake_server_in_thread


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    return subprocess.run(
        [sys.executable, "-m", "thinktree.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


# a rollback journal's header, as SQLite writes it before any page: its magic, no pages,
# a nonce, the database's size before (0 pages), the sector size and the page size
HOT_JOURNAL = (
    bytes.fromhex("d9d505f920a163d7")
    + (0).to_bytes(4, "big")
    + bytes.fromhex("5f89f739")
    + (0).to_bytes(4, "big")
    + (512).to_bytes(4, "big")
    + (4096).to_bytes(4, "big")
).ljust(512, b"\0")


def test_resume_discards_a_store_cut_off_at_creation_but_not_a_foreign_file(
    tmp_path: Path,
) -> None:
    data = tmp_path / "d.jsonl"
    data.write_text(
        json.dumps({"id": "q", "question": "Q?", "answer_type": "yesno", "answer": "yes"}) + "\n"
    )
    with fake_server_in_thread(FakeBehaviour(reply="Answer: yes")) as server:
        first = cli("run", str(data), "--endpoint", server.base_url, "--out", "r", cwd=tmp_path)
        assert first.returncode == 0, first.stderr
        folder = tmp_path / "r"
        store = folder / "run.sqlite"
        for cut in ("empty", "no tables", "journal mode half changed"):
            (folder / "results.json").unlink()
            store.unlink()
            if cut == "empty":
                store.write_bytes(b"")
            elif cut == "no tables":
                sqlite3.connect(store).execute("PRAGMA journal_mode=WAL").close()
            else:  # killed as it switched to WAL: a hot rollback journal beside page 1
                with sqlite3.connect(store) as conn:
                    conn.execute("VACUUM")
                conn.close()
                Path(f"{store}-journal").write_bytes(HOT_JOURNAL)
            resumed = cli("run", "--resume", "r", cwd=tmp_path)
            assert resumed.returncode == 0, (cut, resumed.stderr)
            assert json.loads((folder / "results.json").read_text())["problems"][0]["correct"]
        (folder / "results.json").unlink()
        store.write_text("my notes, not a run store")
        refused = cli("run", "--resume", "r", cwd=tmp_path)
    assert refused.returncode == 2 and "not a SQLite database" in refused.stderr
    assert store.read_text() == "my notes, not a run store"
