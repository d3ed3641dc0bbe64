"""A plugin package installed from a temporary folder is used by name.

The plugin is the complete minimal one in docs/plugins.md (its files are read from the
page), installed with ``pip install --target`` into an empty folder; thinktree then runs
in a subprocess with that folder on its path, against a scripted server on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from thinktree.testing.fake_server import FakeBehaviour, fake_server_in_thread

DOC = Path(__file__).resolve().parents[1] / "docs" / "plugins.md"
BLOCK = re.compile(r"```(?:toml|python)\n# file: (?P<name>\S+)\n(?P<body>.*?)```", re.DOTALL)


@pytest.fixture(scope="module")
def plugin_path(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("plugin")
    source = root / "thinktree-shortest"
    source.mkdir()
    files = {m["name"]: m["body"] for m in BLOCK.finditer(DOC.read_text(encoding="utf-8"))}
    assert set(files) == {"pyproject.toml", "thinktree_shortest.py"}
    for name, body in files.items():
        (source / name).write_text(body, encoding="utf-8")
    target = root / "site"
    proc = subprocess.run(
        [
            sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
            "--no-build-isolation", "--no-index", "--target", str(target), str(source),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    yield target


def thinktree(plugin: Path | None, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    paths = [str(plugin)] if plugin else []
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return subprocess.run(
        [sys.executable, "-m", "thinktree.cli", *args],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
        cwd=cwd,
    )


def test_the_plugin_is_listed_only_when_installed(plugin_path: Path, tmp_path: Path) -> None:
    listed = thinktree(plugin_path, "verifier", "list", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert re.search(r"^shortest +plugin$", listed.stdout, re.MULTILINE), listed.stdout
    assert re.search(r"^quick +strategy plugin", listed.stdout, re.MULTILINE)
    without = thinktree(None, "verifier", "list", cwd=tmp_path)
    assert "shortest" not in without.stdout


def test_a_run_uses_the_plugins_verifier_and_strategy_by_name(
    plugin_path: Path, tmp_path: Path
) -> None:
    data = tmp_path / "data.jsonl"
    data.write_text(
        json.dumps(
            {
                "id": "q1",
                "question": "Which?",
                "answer_type": "choice",
                "options": {"A": "a", "B": "b"},
                "answer": "B",
            }
        )
        + "\n"
    )

    def reply(body: dict[str, object], index: int) -> str:
        # long reasoning for A, short for B: the plugin's verifier prefers B
        return "Answer: B" if index % 2 else "Let me think at great length here. Answer: A"

    with fake_server_in_thread(FakeBehaviour(reply=reply)) as server:
        common = ("--endpoint", server.base_url, "--model", "fake-model")
        proc = thinktree(
            plugin_path,
            "run", str(data), *common, "--mode", "parallel", "--n", "2", "--budget", "32",
            "--verifier", "shortest:10", "--aggregate", "best-of-n", "--out", "r1",
            cwd=tmp_path,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        results = json.loads((tmp_path / "r1" / "results.json").read_text())
        problem = results["problems"][0]
        verdicts = [n for n in problem["nodes"] if n["kind"] == "verdict"]
        assert [n["label"] for n in verdicts] == ["shortest:10", "shortest:10"]
        assert verdicts[1]["score"] > verdicts[0]["score"]
        assert problem["answer"] == "B" and problem["vote"]["rule"] == "best-of-n"

        quick = thinktree(plugin_path, "run", str(data), *common, "--mode", "quick", "--out", "r2",
                          cwd=tmp_path)  # fmt: skip
        assert quick.returncode == 0, quick.stderr
        settings = json.loads((tmp_path / "r2" / "results.json").read_text())["settings"]
        assert settings["mode"] == "quick"

        bad = thinktree(plugin_path, "run", str(data), *common, "--verifier", "shortest:-1",
                        "--out", "r3", cwd=tmp_path)  # fmt: skip
        assert bad.returncode == 2 and "shortest:SCALE must be positive" in bad.stderr
        assert not (tmp_path / "r3").exists()
        nan = thinktree(plugin_path, "run", str(data), *common, "--verifier", "shortest:nan",
                        "--out", "r4", cwd=tmp_path)  # fmt: skip
        assert nan.returncode == 2 and "shortest:SCALE must be positive" in nan.stderr
        assert not (tmp_path / "r4").exists()
        unknown = thinktree(None, "run", str(data), *common, "--mode", "quick", cwd=tmp_path)
        assert unknown.returncode == 2 and "unknown mode 'quick'" in unknown.stderr
