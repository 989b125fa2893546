"""`privkit unlearn` end to end: the documented worked example, outputs, and bad input (exit 2, nothing written)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from privkit.cli.main import app
from privkit.unlearn.metrics import METRIC_KEYS

REPO = Path(__file__).resolve().parents[2]
runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def ok(result) -> None:
    assert result.exit_code == 0, result.output + repr(result.exception)


def check_unlearn_outputs(run: Path, method: str, with_reference: bool) -> tuple[dict, dict]:
    from privkit.models import load_model
    from privkit.unlearn.receipt import model_sha256

    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics) == set(METRIC_KEYS)
    for k in ("UA", "RA", "TA", "MIA_efficacy"):
        assert 0.0 <= metrics[k] <= 100.0
    assert 0.0 <= metrics["MIA_auc"] <= 1.0 and metrics["RTE"] > 0
    assert (metrics["avg_gap"] is not None) == with_reference
    model, meta = load_model(run)
    assert meta["kind"] == "classifier" and meta["unlearned_by"] == method
    receipt = json.loads((run / "receipt.json").read_text())
    assert receipt["model_after_sha256"] == model_sha256(model) == meta["weights_sha256"]
    assert receipt["model_before_sha256"] != receipt["model_after_sha256"]
    assert re.fullmatch(r"[0-9a-f]{64}", receipt["forget_ids_sha256"])
    assert receipt["metrics"] == metrics and receipt["config"]["method"] == method
    assert (run / "report.html").is_file() and (run / "complete").is_file()
    return metrics, receipt


def test_documented_worked_example(tmp_path, monkeypatch):
    """Runs exactly the commands of docs/unlearn.md's worked example."""
    doc = (REPO / "docs" / "unlearn.md").read_text()
    section = doc.split("## Worked example", 1)[1].split("\n## ", 1)[0]
    example = [line.strip() for line in section.splitlines() if line.strip().startswith("privkit ")]
    assert [c.split()[1] for c in example] == ["train", "unlearn"], example
    monkeypatch.chdir(tmp_path)
    for command in example:
        ok(invoke(*command.split()[1:]))
    metrics, receipt = check_unlearn_outputs(tmp_path / "runs" / "digits-ntk", "fast-ntk", with_reference=True)
    assert receipt["reference_metrics"]["UA"] == pytest.approx(100.0)  # retrain never saw a 3: it cannot predict it
    assert metrics["RA"] > 80.0


@pytest.fixture(scope="module")
def linear_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("unlearn-cli")
    ok(invoke("train", "--data", "digits", "--size", "300", "--target", "digit", "--model", "linear", "--epochs", "2",
              "--lr", "0.05", "--out", root / "base"))
    return root


def test_finetune_ntk_and_reference(linear_run):
    root = linear_run
    common = ["--model", root / "base", "--data", "digits", "--forget", "random=0.1"]
    ok(invoke("unlearn", *common, "--method", "finetune", "--out", root / "ft"))
    check_unlearn_outputs(root / "ft", "finetune", with_reference=False)
    assert "no retrained reference" in json.loads((root / "ft" / "receipt.json").read_text())["verdict"]["text"]
    ok(invoke("unlearn", *common, "--method", "retrain", "--out", root / "rt"))
    ok(invoke("unlearn", *common, "--method", "ntk", "--reference", root / "rt", "--out", root / "ntk"))
    metrics, receipt = check_unlearn_outputs(root / "ntk", "ntk", with_reference=True)
    ref = json.loads((root / "rt" / "metrics.json").read_text())
    gap = sum(abs(metrics[k] - ref[k]) for k in ("UA", "RA", "TA", "MIA_efficacy")) / 4
    assert metrics["avg_gap"] == pytest.approx(gap)
    assert receipt["verdict"]["ok"] in (True, False)
    # same forget selection -> same receipt hash, whichever method ran
    ft_receipt = json.loads((root / "ft" / "receipt.json").read_text())
    assert receipt["forget_ids_sha256"] == ft_receipt["forget_ids_sha256"]
    # RURK as a post-hoc fix of the fine-tuned model: starts from it, not from the original
    ok(invoke("unlearn", *common, "--method", "rurk", "--from", root / "ft", "--epochs", "1", "--out", root / "rurk"))
    _, rurk_receipt = check_unlearn_outputs(root / "rurk", "rurk", with_reference=False)
    assert rurk_receipt["model_before_sha256"] == ft_receipt["model_after_sha256"]
    # --from must have forgotten the same samples
    result = invoke("unlearn", "--model", root / "base", "--data", "digits", "--forget", "class=3", "--method", "rurk",
                    "--from", root / "ft", "--out", root / "rurk2")
    assert result.exit_code == 2 and "another set" in result.output and not (root / "rurk2").exists()


def _bad_inputs(root: Path) -> dict[str, list]:
    from privkit.data import load_dataset
    from privkit.classify import classifier_split

    ds = load_dataset("digits", size=300)
    test_id = int(classifier_split(ds, "digit", 0).test[0])
    (root / "out_of_range.txt").write_text("99999\n")
    (root / "test_sample.txt").write_text(f"{test_id}\n")
    (root / "empty.txt").write_text("# nothing\n")
    base = ["--model", root / "base", "--data", "digits"]
    return {
        "empty forget set": [*base, "--forget", f"ids={root / 'empty.txt'}", "--method", "finetune"],
        "forget = all training data": [*base, "--forget", "random=0.9999", "--method", "finetune"],
        "id out of range": [*base, "--forget", f"ids={root / 'out_of_range.txt'}", "--method", "finetune"],
        "id outside the training split": [*base, "--forget", f"ids={root / 'test_sample.txt'}", "--method", "finetune"],
        "schema mismatch": ["--model", root / "base", "--data", "synthetic-faces", "--size", "40",
                            "--forget", "random=0.1", "--method", "finetune"],
        "fast-ntk without BN or prompts": [*base, "--forget", "class=3", "--method", "fast-ntk"],
        "unknown method": [*base, "--forget", "class=3", "--method", "forgetify"],
        "reference and compare-retrain": [*base, "--forget", "class=3", "--method", "ntk", "--compare-retrain",
                                          "--reference", root / "base"],
        "reference not a retrain run": [*base, "--forget", "class=3", "--method", "ntk", "--reference", root / "base"],
        "--from without rurk": [*base, "--forget", "class=3", "--method", "finetune", "--from", root / "base"],
        "bad forget spec": [*base, "--forget", "everything", "--method", "finetune"],
        "wrong data seed": [*base, "--forget", "class=3", "--method", "finetune", "--data-seed", "3"],
        "--option without =": [*base, "--forget", "class=3", "--method", "finetune", "--option", "epochs"],
        "unknown method option": [*base, "--forget", "class=3", "--method", "finetune", "--option", "bogus=1"],
        "method option of the wrong type": [*base, "--forget", "class=3", "--method", "rurk", "--option",
                                            "early_stop=False"],
    }


def test_bad_input_exits_2_and_writes_nothing(linear_run):
    root = linear_run
    for name, args in _bad_inputs(root).items():
        out = root / "bad" / name.replace(" ", "_")
        result = invoke("unlearn", *args, "--out", out)
        assert result.exit_code == 2, (name, result.output, result.exception)
        assert not out.exists(), name
        assert not (root / "bad").exists(), name
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error:"), (name, result.output)
    unknown = invoke("unlearn", *_bad_inputs(root)["unknown method"], "--out", root / "x").output
    assert "fast-ntk" in unknown and "retrain" in unknown and "rurk" in unknown


def test_method_option_reaches_the_method_and_the_config(linear_run):
    root = linear_run
    ok(invoke("unlearn", "--model", root / "base", "--data", "digits", "--forget", "random=0.1", "--method", "neggrad",
              "--option", "epochs=1", "--option", "lr=0.002", "--out", root / "opt"))
    config = json.loads((root / "opt" / "config.json").read_text())
    assert config["method_options"] == {"epochs": 1, "lr": 0.002}
    # the method really ran with them: the same as the first-class flags, unlike its defaults
    ok(invoke("unlearn", "--model", root / "base", "--data", "digits", "--forget", "random=0.1", "--method", "neggrad",
              "--epochs", "1", "--lr", "0.002", "--out", root / "flags"))
    ok(invoke("unlearn", "--model", root / "base", "--data", "digits", "--forget", "random=0.1", "--method", "neggrad",
              "--out", root / "defaults"))

    def after(name):
        return json.loads((root / name / "receipt.json").read_text())["model_after_sha256"]

    assert after("opt") == after("flags") != after("defaults")


def test_peft_train_and_fast_ntk(tmp_path):
    from privkit.models import load_model
    from privkit.unlearn.peft import W0_FILE, load_w0

    ok(invoke("train", "--data", "digits", "--size", "300", "--target", "digit", "--peft", "bn", "--epochs", "2",
              "--lr", "0.01", "--out", tmp_path / "peft"))
    model, meta = load_model(tmp_path / "peft")
    assert meta["config"]["peft"] == "bn" and meta["config"]["optim"]["anchor_penalty"] > 0
    w0 = load_w0(tmp_path / "peft", meta)
    assert set(w0) == set(meta["peft_parameters"]) and any(n.startswith("head.") for n in w0)
    ok(invoke("unlearn", "--model", tmp_path / "peft", "--data", "digits", "--forget", "random=0.1",
              "--method", "fast-ntk", "--out", tmp_path / "fast"))
    metrics, _ = check_unlearn_outputs(tmp_path / "fast", "fast-ntk", with_reference=False)
    unlearned, _ = load_model(tmp_path / "fast")
    before, after = dict(model.named_parameters()), dict(unlearned.named_parameters())
    changed = {n for n in before if not (before[n] == after[n]).all()}
    assert changed and changed <= set(w0)  # Fast-NTK moves only the PEFT parameters
    assert (tmp_path / "fast" / W0_FILE).read_bytes() == (tmp_path / "peft" / W0_FILE).read_bytes()
