"""``privkit suppress`` / ``privkit transform`` end to end, bad input, and the docs' worked example."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from privkit.cli.main import app

runner = CliRunner()
DOCS = Path(__file__).resolve().parents[2] / "docs" / "suppress.md"
FAST = ["--epochs", "2", "--attackers", "linear", "--batch-size", "64"]


def invoke(args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "sup"
    res = invoke(["suppress", "--data", "digits", "--size", "300", "--attrs", "digit", "--out", out, *FAST])
    assert res.exit_code == 0, res.output
    return out


def test_suppress_writes_artifact_and_report(digits_run):
    for name in ("meta.json", "weights.safetensors", "metrics.json", "report.html", "complete", "config.json"):
        assert (digits_run / name).is_file(), name
    assert not (digits_run / "checkpoints").exists()
    m = json.loads((digits_run / "metrics.json").read_text())
    row = m["attributes"]["digit"]
    assert row["role"] == "suppressed"
    for key in ("chance", "original", "released"):
        assert 0.0 <= row[key] <= 1.0
    assert row["original"] > row["chance"] + 0.3  # digits are recognisable in the original data
    assert m["suppressed_max_gap_to_chance"] == pytest.approx(row["released"] - row["chance"])
    assert m["preserved_max_drop"] is None
    assert set(m["fidelity"]) >= {"mse"}
    assert json.loads((digits_run / "meta.json").read_text())["kind"] == "mass"


def test_transform_writes_data_in_input_format(digits_run, tmp_path):
    from privkit.data import load_dataset
    from privkit.suppress import MaSS

    out = tmp_path / "released"
    res = invoke(["transform", "--transform", digits_run, "--data", "digits", "--size", "300", "--out", out,
                  "--batch-size", "64"])
    assert res.exit_code == 0, res.output
    original = load_dataset("digits", size=300)
    released = load_dataset(out)
    assert released.schema == original.schema
    assert np.array_equal(released.labels, original.labels)
    # streamed batches (64) give the same samples as one in-memory batch through the same transform
    x_rel, _ = released.materialize(np.arange(64))
    expected = MaSS.load(digits_run).transform(original.materialize(np.arange(64))[0])
    assert np.allclose(x_rel.numpy(), expected.numpy(), atol=1e-5)


@pytest.mark.parametrize("args, message", [
    (["--attrs", "nope"], "unknown attribute 'nope'"),
    (["--attrs", "gender", "--preserve", "gender"], "both suppressed and preserved"),
    (["--attrs", "gender", "--preserve", "activity", "--budget", "gender=-1"], "infeasible"),
    (["--attrs", "gender", "--preserve", "activity", "--budget", "activity=9"], "infeasible"),
    (["--attrs", "gender", "--budget", "gender"], "cannot parse --budget"),
])
def test_bad_suppress_input_exit_2_nothing_written(tmp_path, args, message):
    out = tmp_path / "run"
    res = invoke(["suppress", "--data", "synthetic-motion", "--size", "300", "--out", out, *FAST, *args])
    assert res.exit_code == 2, res.output
    lines = [l for l in res.output.strip().splitlines() if l.strip()]
    assert len(lines) == 1 and message in lines[0], res.output
    assert not out.exists()


def test_transform_on_other_modality_or_schema_exit_2(digits_run, tmp_path):
    for data in ("synthetic-motion", "synthetic-faces"):
        out = tmp_path / f"rel-{data}"
        res = invoke(["transform", "--transform", digits_run, "--data", data, "--size", "300", "--out", out])
        assert res.exit_code == 2, res.output
        assert len(res.output.strip().splitlines()) == 1 and "transform" in res.output
        assert not out.exists()
    # a finished run that is not a transform, and a folder that is no run at all
    res = invoke(["transform", "--transform", tmp_path, "--data", "digits", "--size", "300", "--out", tmp_path / "x"])
    assert res.exit_code == 2 and not (tmp_path / "x").exists()


def _doc_commands() -> list[list[str]]:
    text = DOCS.read_text()
    cmds = re.findall(r"^\$ privkit (.+)$", text, flags=re.M)
    return [c.split() for c in cmds]


def test_docs_example_commands_are_the_documented_ones():
    cmds = [" ".join(c) for c in _doc_commands()]
    assert ("suppress --data synthetic-faces --size 400 --attrs gender --preserve expression --epochs 3 "
            "--out runs/suppress-faces") in cmds
    assert "transform --transform runs/suppress-faces --data synthetic-faces --size 400 --out released-faces" in cmds


@pytest.mark.slow
def test_docs_worked_example_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for cmd in _doc_commands():
        res = invoke(cmd)
        assert res.exit_code == 0, (cmd, res.output)
    m = json.loads((tmp_path / "runs" / "suppress-faces" / "metrics.json").read_text())
    assert m["attributes"]["gender"]["role"] == "suppressed"
    assert m["attributes"]["expression"]["role"] == "preserved"
    assert {"psnr_db", "ssim"} <= set(m["fidelity"])
    from privkit.data import load_dataset

    assert load_dataset(tmp_path / "released-faces").schema == load_dataset("synthetic-faces", size=400).schema
