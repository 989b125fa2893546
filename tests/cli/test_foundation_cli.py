"""The CLI of the foundation: datasets, train, evaluate, audit attributes, and bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from privkit.cli.main import app

runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def assert_bad_input(result, *fragments: str):
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert "Traceback" not in result.output
    for f in fragments:
        assert f in result.output, result.output


def test_help_is_a_real_subprocess_and_does_not_import_torch():
    out = subprocess.run([sys.executable, "-c", "import sys; from privkit.cli.main import app; "
                          "assert 'torch' not in sys.modules, 'torch imported at start-up'"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    exe = Path(sys.executable).parent / "privkit"
    res = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and "suppress" in res.stdout and "unlearn" in res.stdout


def test_datasets_list_info_make(tmp_path):
    r = run("datasets", "list")
    assert r.exit_code == 0 and "synthetic-faces" in r.output and "digits" in r.output
    r = run("datasets", "info", "digits")
    assert r.exit_code == 0 and "1797 samples" in r.output and "chance" in r.output
    r = run("datasets", "make", "synthetic-faces", "--out", tmp_path / "faces", "--size", "200", "--seed", "1")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "faces" / "attributes.csv").exists()
    r = run("datasets", "info", tmp_path / "faces", "--json")
    info = json.loads(r.output)
    assert info["num_samples"] == 200 and info["identity_attribute"] == "identity"
    assert {a["name"] for a in info["attributes"]} >= {"identity", "gender", "age", "glasses", "expression"}


def test_train_evaluate_and_audit_on_digits(tmp_path):
    r = run("train", "--data", "digits", "--target", "digit", "--epochs", "3", "--out", tmp_path / "m")
    assert r.exit_code == 0, r.output
    m = json.loads((tmp_path / "m" / "metrics.json").read_text())
    assert m["accuracy"] > 0.8 > m["chance"]
    assert (tmp_path / "m" / "complete").exists() and not (tmp_path / "m" / "checkpoints").exists()
    meta = json.loads((tmp_path / "m" / "meta.json").read_text())
    assert meta["target"] == "digit" and len(meta["data_fingerprint"]) == 64
    r = run("evaluate", "--model", tmp_path / "m", "--data", "digits", "--out", tmp_path / "ev")
    assert r.exit_code == 0 and "accuracy" in r.output
    assert "data:image/png;base64" in (tmp_path / "ev" / "report.html").read_text()
    r = run("audit", "attributes", "--data", "digits", "--attackers", "linear", "--out", tmp_path / "audit")
    assert r.exit_code == 0, r.output
    a = json.loads((tmp_path / "audit" / "metrics.json").read_text())["attributes"]["digit"]
    assert a["linear"] > 0.8 and a["chance"] < 0.2


def _image_folder(root: Path, n: int = 6) -> Path:
    root.mkdir()
    rows = ["path,identity,glasses"]
    for i in range(n):
        Image.fromarray((np.random.default_rng(i).random((16, 16)) * 255).astype(np.uint8)).save(root / f"{i}.png")
        rows.append(f"{i}.png,p{i % 3},{'yes' if i % 2 else 'no'}")
    (root / "attributes.csv").write_text("\n".join(rows) + "\n")
    return root


def test_bad_inputs_give_one_line_exit_2_and_write_nothing(tmp_path):
    out = tmp_path / "out"
    cases = []
    cases.append((("train", "--data", "no-such-dataset", "--target", "x"), ("no-such-dataset", "digits")))
    cases.append((("train", "--data", "digits", "--target", "gender"), ("gender", "digit")))
    cases.append((("train", "--data", tmp_path / "missing", "--target", "x"), ("missing",)))
    (tmp_path / "empty").mkdir()
    cases.append((("train", "--data", tmp_path / "empty", "--target", "x"), ("empty",)))
    corrupt = _image_folder(tmp_path / "corrupt")
    (corrupt / "3.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    cases.append((("train", "--data", corrupt, "--target", "glasses"), ("3.png",)))
    missing_file = _image_folder(tmp_path / "missingfile")
    (missing_file / "2.png").unlink()
    cases.append((("train", "--data", missing_file, "--target", "glasses"), ("2.png",)))
    cases.append((("train", "--data", "digits", "--target", "digit", "--model", "audio-cnn"), ("audio-cnn", "image")))
    cases.append((("train", "--data", "digits", "--target", "digit", "--model", "nope"), ("nope", "known models")))
    cases.append((("train", "--data", "digits", "--target", "digit", "--epochs", "0"), ("--epochs 0",)))
    cases.append((("evaluate", "--model", tmp_path / "nomodel", "--data", "digits"), ("nomodel",)))
    cases.append((("datasets", "info", "nope-data"), ("nope-data",)))
    for args, fragments in cases:
        r = run(*args, *(["--out", out] if args[0] == "train" else []))
        assert_bad_input(r, *fragments)
        assert not out.exists(), args
