"""`privkit i2i train` / `privkit i2i unlearn` end to end, the docs' worked example, and bad input."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

REPO = Path(__file__).resolve().parents[2]


def make_app() -> typer.Typer:
    """The real CLI if it already mounts `i2i`, else a CLI holding only this module's commands."""
    from privkit.cli import commands_i2i
    from privkit.cli.main import app as main_app

    if any(g.name == "i2i" for g in main_app.registered_groups):
        return main_app
    app = typer.Typer()
    commands_i2i.register(app, typer.Typer(), typer.Typer())
    return app


def invoke(args, cwd: Path):
    import os

    old = os.getcwd()
    os.chdir(cwd)
    try:
        return CliRunner().invoke(make_app(), [str(a) for a in args])
    finally:
        os.chdir(old)


def doc_commands() -> list[list[str]]:
    text = (REPO / "docs" / "i2i.md").read_text()
    commands = []
    for block in re.findall(r"```(?:\w+)?\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.strip()
            if line.startswith("privkit i2i "):
                commands.append(shlex.split(line[len("privkit "):]))
    return commands


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """Runs the worked example of docs/i2i.md once; other tests reuse its model."""
    wd = tmp_path_factory.mktemp("i2i")
    commands = doc_commands()
    assert [c[:2] for c in commands][:2] == [["i2i", "train"], ["i2i", "unlearn"]], commands
    for args in commands:
        r = invoke(args, wd)
        assert r.exit_code == 0, (args, r.output)
    return wd, commands


def test_docs_worked_example_runs_and_writes_the_metrics(workdir):
    wd, commands = workdir
    train_out = wd / commands[0][commands[0].index("--out") + 1]
    unlearn_out = wd / commands[1][commands[1].index("--out") + 1]
    meta = json.loads((train_out / "meta.json").read_text())
    assert meta["kind"] == "i2i" and (train_out / "complete").exists()
    m = json.loads((unlearn_out / "metrics.json").read_text())
    for key in ("forget_fd_ratio", "retain_fd_ratio", "forget_fd", "forget_fd_original", "forget_is", "forget_cosine",
                "forget_accuracy", "forget_chance", "forget_psnr", "forget_ssim", "retain_psnr", "retain_ssim",
                "unlearn_seconds", "retrain_seconds", "forget_truth_accuracy", "retain_truth_accuracy"):
        assert m.get(key) is not None, key
    assert m["forget_fd_ratio"] == pytest.approx(m["forget_fd"] / m["forget_fd_original"])
    assert m["forget_chance"] == pytest.approx(0.1, abs=0.03)  # one digit class of ten
    html = (unlearn_out / "report.html").read_text()
    assert "encoder embeddings (PCA)" in html and "forget (left) and retain (right)" in html
    assert json.loads((unlearn_out / "meta.json").read_text())["unlearned_by"] == "li2024"


def test_unlearned_model_is_a_loadable_i2i_model_and_proxy_retain_runs(workdir, tmp_path):
    from privkit.data.datasets import ArrayDataset
    from privkit.generative.run import i2i_unlearn_run
    from privkit.generative.train import load_i2i

    wd, commands = workdir
    model_dir = wd / commands[0][commands[0].index("--out") + 1]
    load_i2i(wd / commands[1][commands[1].index("--out") + 1])
    # a proxy retain set: other 8x8 images (random strokes), no labels needed by the method
    from privkit.data.schema import Attribute, Schema

    rng = np.random.default_rng(0)
    proxy = ArrayDataset(Schema("image", (Attribute("k", ("a",)),), (1, 8, 8)),
                         rng.uniform(0, 1, size=(200, 1, 8, 8)).astype(np.float32), np.zeros((200, 1)))
    out = i2i_unlearn_run(model_dir, "digits", "class=3", "li2024", tmp_path / "proxy", proxy_retain="strokes",
                          proxy_dataset=proxy, epochs=1, eval_epochs=2, eval_on_completions=True, progress=False)
    m = json.loads((out / "metrics.json").read_text())
    assert m["forget_fd_ratio"] is not None
    assert 0 <= m["forget_truth_accuracy"] <= 1 and 0 <= m["retain_truth_accuracy"] <= 1
    config = json.loads((out / "config.json").read_text())
    assert config["n_retain"] == 200 and config["eval_on_completions"] is True
    assert "original model completions" in (out / "report.html").read_text()


def one_line_error(r):
    lines = [ln for ln in r.output.strip().splitlines() if ln.strip()]
    return r.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error:")


def test_bad_input_exits_2_with_one_line_and_writes_nothing(workdir, tmp_path):
    from privkit.classify import train_run

    wd, commands = workdir
    model_dir = wd / commands[0][commands[0].index("--out") + 1]
    clf = train_run("digits", "digit", tmp_path / "clf", model_name="mlp", epochs=1, progress=False)
    cases = [
        ["i2i", "unlearn", "--model", clf, "--data", "digits", "--forget", "class=3", "--out", tmp_path / "a"],
        ["i2i", "train", "--data", "digits", "--mask", "12", "--epochs", "1", "--out", tmp_path / "b"],
        ["i2i", "unlearn", "--model", model_dir, "--data", "digits", "--forget", "class=3", "--alpha", "-0.1",
         "--out", tmp_path / "c"],
        ["i2i", "unlearn", "--model", model_dir, "--data", "digits", "--forget", "class=3", "--method", "forgetit",
         "--out", tmp_path / "d"],
        ["i2i", "train", "--data", "digits", "--model", "gan", "--out", tmp_path / "e"],
        ["i2i", "unlearn", "--model", model_dir, "--data", "digits", "--forget", "class=33", "--out", tmp_path / "f"],
        ["i2i", "unlearn", "--model", model_dir, "--data", "synthetic-faces", "--size", "40", "--forget", "class=3",
         "--out", tmp_path / "g"],
    ]
    for args in cases:
        r = invoke(args, tmp_path)
        assert one_line_error(r), (args, r.output)
        assert not Path(args[-1]).exists(), args
    r = invoke(cases[0], tmp_path)
    assert "not an image-to-image model" in r.output
    assert "larger than the 8x8 image" in invoke(cases[1], tmp_path).output


def test_cli_passes_eval_on_completions_through(workdir, tmp_path):
    wd, commands = workdir
    model_dir = wd / commands[0][commands[0].index("--out") + 1]
    r = invoke(["i2i", "unlearn", "--model", model_dir, "--data", "digits", "--forget", "class=3", "--epochs", "1",
                "--eval-epochs", "1", "--eval-on-completions", "--out", tmp_path / "c"], wd)
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "c" / "config.json").read_text())["eval_on_completions"] is True


def test_cli_passes_frozen_stages_through_and_refuses_freezing_everything(workdir, tmp_path):
    wd, commands = workdir
    model_dir = wd / commands[0][commands[0].index("--out") + 1]
    base = ["i2i", "unlearn", "--model", model_dir, "--data", "digits", "--forget", "class=3", "--epochs", "1",
            "--eval-epochs", "1"]
    r = invoke(base + ["--frozen-stages", "1", "--out", tmp_path / "f"], wd)
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "f" / "config.json").read_text())["method_options"]["frozen_stages"] == 1
    r = invoke(base + ["--frozen-stages", "99", "--out", tmp_path / "g"], wd)
    assert one_line_error(r) and "--frozen-stages 99" in r.output, r.output
    assert not (tmp_path / "g").exists()
