"""`privkit attack qnn --step-rule/--start-candidates` reach the attack and are recorded in the run."""

import json

from typer.testing import CliRunner

from privkit.cli.main import app


def test_step_rule_and_start_candidates_pass_through(tmp_path):
    out = tmp_path / "q"
    r = CliRunner().invoke(app, ["attack", "qnn", "--task", "cos", "--qubits", "2", "--ansatz", "simple",
                                 "--restarts", "1", "--iterations", "2", "--step-rule", "sgd",
                                 "--start-candidates", "1", "--out", str(out)])
    assert r.exit_code == 0, r.output
    config = json.loads((out / "config.json").read_text())
    assert config["step_rule"] == "sgd" and config["start_candidates"] == 1
    assert "success_rate" in json.loads((out / "metrics.json").read_text())
