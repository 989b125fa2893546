"""`privkit audit residual` end to end: the worked example of docs/audit.md, --fix, bad input."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from privkit.cli.main import app

runner = CliRunner()
DOC = Path(__file__).resolve().parents[2] / "docs" / "audit.md"


def invoke(args, cwd: Path):
    import os

    old = os.getcwd()
    os.chdir(cwd)
    try:
        return runner.invoke(app, args)
    finally:
        os.chdir(old)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Base model, a fine-tuned 'unlearned' model and a retrained reference on digits (forget class 3)."""
    root = tmp_path_factory.mktemp("audit")
    for args in (["train", "--data", "digits", "--target", "digit", "--epochs", "5", "--out", "runs/base"],
                 ["unlearn", "--model", "runs/base", "--data", "digits", "--forget", "class=3", "--method", "finetune",
                  "--out", "runs/ft"],
                 ["unlearn", "--model", "runs/base", "--data", "digits", "--forget", "class=3", "--method", "retrain",
                  "--out", "runs/retrain"]):
        r = invoke(args, root)
        assert r.exit_code == 0, r.output
    return root


def test_worked_example_of_the_docs_runs(runs):
    commands = [line.strip()[len("privkit "):] for line in DOC.read_text().splitlines()
                if line.strip().startswith("privkit audit residual")]
    assert commands, "docs/audit.md has no `privkit audit residual` example"
    for i, cmd in enumerate(commands):
        args = cmd.split()
        if "--out" in args:
            args[args.index("--out") + 1] = f"runs/doc-audit-{i}"
        r = invoke(args + ["--samples", "16"], runs)
        assert r.exit_code == 0, (cmd, r.output)


def test_audit_report_keys_and_fix_flow(runs):
    r = invoke(["audit", "residual", "--model", "runs/ft", "--reference", "runs/retrain", "--data", "digits",
                "--forget", "class=3", "--samples", "16", "--tau", "0.02,0.05", "--out", "runs/a1"], runs)
    assert r.exit_code == 0, r.output
    m = json.loads((runs / "runs/a1/metrics.json").read_text())
    for k in ("mean_r_tau", "ci_low", "ci_high", "frac_above_1"):
        assert k in m
    assert m["ci_low"] <= m["mean_r_tau"] <= m["ci_high"]
    # fine-tuning alone leaves residual knowledge of class 3 compared with retraining
    assert m["mean_r_tau"] > 1.0
    html = (runs / "runs/a1/report.html").read_text()
    assert "data:image/png;base64" in html and "r_tau" in html
    r = invoke(["audit", "residual", "--model", "runs/ft", "--reference", "runs/retrain", "--data", "digits",
                "--forget", "class=3", "--samples", "16", "--tau", "0.02,0.05", "--fix", "--fix-epochs", "2",
                "--out", "runs/a2"], runs)
    assert r.exit_code == 0, r.output
    m = json.loads((runs / "runs/a2/metrics.json").read_text())
    assert set(m["before"]) >= {"mean_r_tau", "ci_low", "ci_high", "frac_above_1"}
    assert set(m["after"]) >= {"mean_r_tau", "ci_low", "ci_high", "frac_above_1"}
    assert m["after"]["mean_r_tau"] < m["before"]["mean_r_tau"]
    assert (runs / "runs/a2/fixed-model/weights.safetensors").exists()


def test_fix_leaves_a_model_without_residual_knowledge_unchanged(runs):
    # the retrained model audited against itself: r_tau = 1 for every sample, nothing to fix
    args = ["audit", "residual", "--model", "runs/retrain", "--reference", "runs/retrain", "--data", "digits",
            "--forget", "class=3", "--samples", "8", "--tau", "0.05"]
    r = invoke(args + ["--fix", "--fix-epochs", "1", "--out", "runs/a4"], runs)
    assert r.exit_code == 0, r.output
    assert "RURK not needed" in r.output
    m = json.loads((runs / "runs/a4/metrics.json").read_text())
    assert m["fix_applied"] is False and m["fix_seconds"] == 0.0
    assert m["before"]["frac_above_1"] == 0.0 and m["after"] == m["before"] and m["TA_after"] == m["TA_before"]
    from privkit.models import load_model

    audited, _ = load_model(runs / "runs/retrain")
    kept, _ = load_model(runs / "runs/a4/fixed-model")
    assert all(torch.equal(a, b) for a, b in zip(audited.state_dict().values(), kept.state_dict().values()))
    r = invoke(args + ["--fix-always", "--fix-epochs", "1", "--out", "runs/a5"], runs)
    assert r.exit_code == 0, r.output
    assert json.loads((runs / "runs/a5/metrics.json").read_text())["fix_applied"] is True


def test_heldout_tier_without_reference(runs):
    # the held-out tier compares with held-out samples of the same class, so it cannot audit a whole class
    r = invoke(["audit", "residual", "--model", "runs/base", "--data", "digits", "--forget", "random=0.05",
                "--samples", "8", "--tau", "0.03", "--out", "runs/a3"], runs)
    assert r.exit_code == 0, r.output
    assert json.loads((runs / "runs/a3/metrics.json").read_text())["tier"] == "heldout"
    assert "WEAKER" in (runs / "runs/a3/report.html").read_text()


@pytest.mark.parametrize("extra,fragment", [
    (["--tau", "0"], "--tau 0"),
    (["--tau", "-0.1"], "--tau"),
    (["--forget", "class=99"], "99"),
    (["--reference", "runs/nowhere"], "nowhere"),
    (["--sampler", "magic"], "magic"),
])
def test_bad_input(runs, extra, fragment):
    args = ["audit", "residual", "--model", "runs/ft", "--data", "digits", "--forget", "class=3", "--out", "runs/bad"]
    for i in range(0, len(extra), 2):
        if extra[i] in args:
            args[args.index(extra[i]) + 1] = extra[i + 1]
        else:
            args += extra[i:i + 2]
    r = invoke(args, runs)
    assert r.exit_code == 2, r.output
    assert len(r.output.strip().splitlines()) == 1 and fragment in r.output
    assert not (runs / "runs/bad").exists()


def test_reference_of_another_schema_is_refused(runs, tmp_path):
    r = invoke(["train", "--data", "synthetic-faces", "--size", "200", "--target", "glasses", "--epochs", "1",
                "--out", "runs/faces"], runs)
    assert r.exit_code == 0, r.output
    r = invoke(["audit", "residual", "--model", "runs/ft", "--reference", "runs/faces", "--data", "digits",
                "--forget", "class=3", "--out", "runs/bad2"], runs)
    assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1, r.output
    assert not (runs / "runs/bad2").exists()
