"""``privkit anonymize`` and ``privkit transform`` with an anonymizer, end to end through the CLI."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from privkit.cli.main import app

runner = CliRunner()
REPO = Path(__file__).resolve().parents[2]
FAST = ["--attackers", "linear", "--curve-attackers", "linear", "--curve-k", "1,3,5"]


def invoke(args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def faces_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("anon")
    run, released = root / "run", root / "released"
    result = invoke(["anonymize", "--data", "synthetic-faces", "--size", 300, "--sensitive", "identity", "--keep", "glasses",
                     "--k", 5, "--weight", 0.5, "--top-features", 0.2, "--out", run, "--release", released, *FAST])
    assert result.exit_code == 0, result.output
    return run, released, result.output


def test_anonymize_writes_artifact_report_and_metrics(faces_run):
    run, _, output = faces_run
    for name in ("complete", "meta.json", "weights.safetensors", "metrics.json", "report.html", "config.json"):
        assert (run / name).is_file(), name
    meta = json.loads((run / "meta.json").read_text())
    assert meta["kind"] == "anonymizer" and meta["config"]["keep"] == "glasses"
    m = json.loads((run / "metrics.json").read_text())
    assert set(m["reidentification"]) >= {"original", "released", "chance"}
    assert set(m["eer"]) == {"original", "released"}
    assert m["achieved_k"]["requested"] == 5 and m["achieved_k"]["min"] == 5
    assert set(m["utility"]) == {"glasses", "gender"}  # kept + first attribute not used for relevance
    for u in m["utility"].values():
        assert set(u) == {"original", "released", "chance"}
    assert [p["k"] for p in m["curve"]] == [1, 3, 5] and all({"k", "reid", "utility"} <= set(p) for p in m["curve"])
    # privacy improves while the kept attribute stays useful
    reid, keep = m["reidentification"], m["utility"]["glasses"]
    assert reid["released"] < reid["original"] - 0.15, reid
    assert reid["released"] > reid["chance"] - 0.05  # sanity: an accuracy, not garbage
    assert keep["released"] >= keep["original"] - 0.10, keep
    assert m["eer"]["released"] > m["eer"]["original"]  # distances say less about who is who
    html = (run / "report.html").read_text()
    assert "Privacy-utility curve" in html and "data:image/png;base64" in html
    assert "re-identification" in output and "report.html" in output


def test_release_is_in_the_input_format_with_the_same_schema(faces_run):
    from privkit.data import load_dataset

    _, released, _ = faces_run
    assert (released / "attributes.csv").is_file() and list(released.rglob("*.png"))
    original = load_dataset("synthetic-faces", size=300)
    again = load_dataset(released)
    assert again.schema.to_dict() == original.schema.to_dict()
    np.testing.assert_array_equal(again.labels, original.labels)
    x_orig, _ = original.materialize(range(20))
    x_rel, _ = again.materialize(range(20))
    assert float((x_orig - x_rel).abs().mean()) > 0.01  # the pixels were changed


def test_transform_applies_saved_anonymizer_to_new_data(faces_run, tmp_path):
    from privkit.data import load_dataset

    run, released, _ = faces_run
    out = tmp_path / "new-released"
    result = invoke(["transform", "--transform", run, "--data", "synthetic-faces", "--size", 120, "--out", out])
    assert result.exit_code == 0, result.output
    new = load_dataset("synthetic-faces", size=120)
    got = load_dataset(out)
    assert got.schema.to_dict() == new.schema.to_dict() and len(got) == len(new)
    np.testing.assert_array_equal(got.labels, new.labels)
    x_new, _ = new.materialize(range(10))
    x_got, _ = got.materialize(range(10))
    assert float((x_new - x_got).abs().mean()) > 0.01
    # deterministic: applying it again gives the same release (PNG-quantised)
    out2 = tmp_path / "again"
    assert invoke(["transform", "--transform", run, "--data", "synthetic-faces", "--size", 120, "--out", out2]).exit_code == 0
    x_again, _ = load_dataset(out2).materialize(range(10))
    assert float((x_got - x_again).abs().max()) == 0.0


def _no_identity_npz(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    path = tmp_path / "noident.npz"
    np.savez(path, x=rng.normal(size=(40, 4)).astype(np.float32), y=np.tile(["a", "b"], 20), g=np.repeat(np.arange(8), 5))
    return path


@pytest.mark.parametrize("extra, fragment", [
    (["--k", 50], "k=50 is larger than"),
    (["--weight", 1.5], "weight=1.5 is outside [0, 1]"),
    (["--weight", -0.2], "outside [0, 1]"),
    (["--keep", "hat"], "identity, gender, age, glasses, expression"),
    (["--sensitive", "glasses"], "both 'glasses'"),
    (["--sensitive", "gender"], "not an identity attribute"),
    (["--curve-k", "1,x"], "--curve-k"),
])
def test_bad_input_one_line_exit_2_nothing_written(tmp_path, extra, fragment):
    out = tmp_path / "run"
    args = ["anonymize", "--data", "synthetic-faces", "--size", 300, "--sensitive", "identity", "--keep", "glasses",
            "--out", out, *FAST]
    for flag, value in zip(extra[::2], extra[1::2]):  # later options override earlier ones
        args += [flag, value]
    result = invoke(args)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    assert fragment in result.output, result.output
    assert not out.exists()


def test_dataset_without_identity_attribute_is_refused(tmp_path):
    out = tmp_path / "run"
    result = invoke(["anonymize", "--data", _no_identity_npz(tmp_path), "--sensitive", "g", "--keep", "y", "--out", out])
    assert result.exit_code == 2, result.output
    assert len(result.output.strip().splitlines()) == 1 and "no identity attribute" in result.output
    assert not out.exists()


def worked_example_commands() -> list[list[str]]:
    """The ``privkit ...`` commands of the worked example in docs/anonymize.md, as argument lists."""
    text = (REPO / "docs" / "anonymize.md").read_text()
    section = text.split("## Worked example", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    commands = [" ".join(c.split()) for c in block.replace("\\\n", " ").splitlines() if c.strip()]
    assert all(c.startswith("privkit ") for c in commands)
    return [c.split()[1:] for c in commands]


@pytest.mark.slow
def test_worked_example_in_docs_runs(tmp_path, monkeypatch):
    from privkit.data import load_dataset

    commands = worked_example_commands()
    assert [c[0] for c in commands] == ["anonymize", "transform"]
    monkeypatch.chdir(tmp_path)
    for args in commands:
        result = invoke(args)
        assert result.exit_code == 0, (args, result.output)
    run = tmp_path / "runs" / "anon-faces"
    assert (run / "complete").is_file()
    m = json.loads((run / "metrics.json").read_text())
    assert m["reidentification"]["released"] < m["reidentification"]["original"]
    released = load_dataset(tmp_path / "released-faces")
    assert released.schema.attribute_names == ["identity", "gender", "age", "glasses", "expression"]
