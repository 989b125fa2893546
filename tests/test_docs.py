"""The commands shown in the docs run as written (module pages with their own tests are excluded:
unlearn.md, audit.md, suppress.md and anonymize.md are run by their modules' CLI tests)."""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path

import pytest
from typer.testing import CliRunner

from privkit.cli.main import app

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"


def doc_commands(name: str) -> list[list[str]]:
    text = (REPO / "docs" / name).read_text()
    commands = []
    for block in re.findall(r"```(?:\w+)?\n(.*?)```", text, flags=re.S):
        joined = block.replace("\\\n", " ")
        for line in joined.splitlines():
            line = line.strip()
            for prefix in (".venv/bin/privkit ", "privkit "):
                if line.startswith(prefix):
                    commands.append(shlex.split(line[len(prefix):]))
    return commands


def run_in(tmp_path: Path, args: list[str]):
    args = [a.replace("../shared/data", str(SHARED)) for a in args]
    old = os.getcwd()
    os.chdir(tmp_path)
    try:
        return CliRunner().invoke(app, args)
    finally:
        os.chdir(old)


def test_getting_started_commands_run(tmp_path):
    commands = doc_commands("getting-started.md")
    assert len(commands) >= 5
    for args in commands:
        r = run_in(tmp_path, args)
        assert r.exit_code == 0, (args, r.output)


def test_attacks_worked_example_runs(tmp_path):
    commands = [c for c in doc_commands("attacks.md") if c[:2] == ["attack", "qnn"]]
    assert commands
    r = run_in(tmp_path, commands[0])
    assert r.exit_code == 0, (commands[0], r.output)
    assert (tmp_path / commands[0][commands[0].index("--out") + 1] / "metrics.json").exists()


@pytest.mark.shared_data
def test_data_page_examples_run_on_the_real_data(tmp_path):
    commands = doc_commands("data.md")
    assert any("orl_faces" in " ".join(c) for c in commands)
    for args in commands:
        r = run_in(tmp_path, args)
        assert r.exit_code == 0, (args, r.output)
