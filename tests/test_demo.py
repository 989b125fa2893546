"""`privkit demo` (the README's main job) end to end. Slow: every step is covered by a cheaper test
of its own module; this one checks they run together and the summary report links them."""

import json

import pytest
from typer.testing import CliRunner

from privkit.cli.main import app


@pytest.mark.slow
def test_demo_runs_every_step(tmp_path):
    r = CliRunner().invoke(app, ["demo", "--out", str(tmp_path / "demo")])
    assert r.exit_code == 0, r.output
    assert "demo report:" in r.output
    m = json.loads((tmp_path / "demo" / "metrics.json").read_text())
    assert set(m) >= {"train", "audit", "suppress", "anonymize", "unlearn", "residual", "attack"}
    assert m["train"]["accuracy"] > m["train"]["chance"]


def test_demo_refuses_a_non_empty_folder(tmp_path):
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / "x").write_text("keep me")
    r = CliRunner().invoke(app, ["demo", "--out", str(tmp_path / "demo")])
    assert r.exit_code == 2 and "--overwrite" in r.output
    assert (tmp_path / "demo" / "x").read_text() == "keep me"
