"""The commands the user is told to type: a run's recorded config file, read safely."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from thinktree.hints import hint_config, recorded_config, resume_command


def test_a_runs_recorded_config_names_it_in_the_resume_command(tmp_path: Path) -> None:
    run = tmp_path / "run 1"
    run.mkdir()
    config = tmp_path / "lab.toml"
    config.write_text("")
    (run / "run.json").write_text(json.dumps({"run_id": "r", "config_file": str(config)}))
    assert recorded_config(run) == config
    assert resume_command(run, hint_config(run)) == (
        f"thinktree run --resume '{run}' --config {config}"
    )
    config.unlink()
    assert recorded_config(run) is None
    for manifest in ({"run_id": "r"}, {"config_file": 3}, {"config_file": ""}):
        (run / "run.json").write_text(json.dumps(manifest))
        assert recorded_config(run) is None and hint_config(run) is None


@pytest.mark.parametrize("damage", ["garbage", "list", "folder", "fifo", "missing"])
def test_a_manifest_that_cannot_be_read_says_so(tmp_path: Path, damage: str) -> None:
    manifest = tmp_path / "run.json"
    if damage == "garbage":
        manifest.write_bytes(b"\xff{")
    elif damage == "list":
        manifest.write_text("[]")
    elif damage == "folder":
        manifest.mkdir()
    elif damage == "fifo":
        os.mkfifo(manifest)  # read, it would wait for a writer for ever
    with pytest.raises(ValueError, match=r"run\.json"):
        recorded_config(tmp_path)
    assert hint_config(tmp_path) is None
