"""The bad-input matrix: malformed inputs across the commands.

Every case must give exit code 2, exactly one line of output (no traceback) and write nothing
to ``--out``. Each case builds its input in a temporary folder and returns the CLI arguments.
"""

from __future__ import annotations

import io
import json
import pickle
import shutil
import wave
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from privkit.cli.main import app

runner = CliRunner()
CASES: dict[str, Callable[[Path, Path], list]] = {}


def case(name: str):
    def deco(fn):
        CASES[name] = fn
        return fn

    return deco


# -- builders of valid data (each case then breaks one thing) ---------------------------------------

def image_folder(root: Path, n: int = 8, fmt: str = "png") -> Path:
    root.mkdir(parents=True)
    rows = ["path,identity,glasses"]
    for i in range(n):
        arr = (np.random.default_rng(i).random((16, 16)) * 255).astype(np.uint8)
        Image.fromarray(arr).save(root / f"{i}.{fmt}")
        rows.append(f"{i}.{fmt},p{i % 4},{'yes' if i % 2 else 'no'}")
    (root / "attributes.csv").write_text("\n".join(rows) + "\n")
    return root


def wav_bytes(seconds: float = 0.3, rate: int = 8000, seed: int = 0) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((np.random.default_rng(seed).normal(0, 3000, int(seconds * rate))).astype("<i2").tobytes())
    return buf.getvalue()


def fsdd_folder(root: Path) -> Path:
    (root / "recordings").mkdir(parents=True)
    for d in range(2):
        for s in ("ann", "bob"):
            for k in range(3):
                (root / "recordings" / f"{d}_{s}_{k}.wav").write_bytes(wav_bytes(seed=d * 10 + k))
    (root / "speakers.csv").write_text("speaker,gender,accent\nann,female,x\nbob,male,y\n")
    return root


def npz_file(path: Path, **overrides) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    arrays = {"x": rng.random((20, 5)).astype(np.float32), "label": np.array(["a", "b"] * 10)}
    arrays.update(overrides)
    np.savez(path, **arrays)
    return path


def motion_folder(root: Path) -> Path:
    header = (",attitude.roll,attitude.pitch,attitude.yaw,gravity.x,gravity.y,gravity.z,rotationRate.x,"
              "rotationRate.y,rotationRate.z,userAcceleration.x,userAcceleration.y,userAcceleration.z")
    rng = np.random.default_rng(0)
    for act in ("wlk_7", "sit_5"):
        d = root / "A_DeviceMotion_data" / act
        d.mkdir(parents=True)
        for k in (1, 2):
            rows = [header] + [f"{i}," + ",".join(f"{v:.4f}" for v in rng.normal(size=12)) for i in range(300)]
            (d / f"sub_{k}.csv").write_text("\n".join(rows) + "\n")
    (root / "data_subjects_info.csv").write_text("code,weight,height,age,gender\n1,70,180,30,1\n2,55,160,25,0\n")
    return root


def train_args(data, target="glasses") -> list:
    return ["train", "--data", data, "--target", target, "--epochs", "1"]


def info_args(data) -> list:
    return ["datasets", "info", data]


# -- corrupt images ---------------------------------------------------------------------------------

@case("png-truncated")
def _(t, out):
    root = image_folder(t / "d")
    blob = (root / "3.png").read_bytes()
    (root / "3.png").write_bytes(blob[: len(blob) // 2])
    return train_args(root)


@case("png-garbage")
def _(t, out):
    root = image_folder(t / "d")
    (root / "2.png").write_bytes(b"\x89PNG\r\n\x1a\nthis is not an image")
    return train_args(root)


@case("png-empty-file")
def _(t, out):
    root = image_folder(t / "d")
    (root / "1.png").write_bytes(b"")
    return train_args(root)


@case("pgm-truncated")
def _(t, out):
    root = image_folder(t / "d", fmt="pgm")
    blob = (root / "4.pgm").read_bytes()
    (root / "4.pgm").write_bytes(blob[:40])
    return train_args(root)


@case("pgm-bad-header")
def _(t, out):
    root = image_folder(t / "d", fmt="pgm")
    (root / "0.pgm").write_bytes(b"P5\n-3 abc\n255\n" + b"\0" * 10)
    return train_args(root)


# -- CSV problems -----------------------------------------------------------------------------------

@case("csv-row-missing-file")
def _(t, out):
    root = image_folder(t / "d")
    (root / "5.png").unlink()
    return train_args(root)


@case("csv-dotdot-path")
def _(t, out):
    root = image_folder(t / "d")
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(t / "outside.png")
    text = (root / "attributes.csv").read_text().replace("0.png", "../outside.png")
    (root / "attributes.csv").write_text(text)
    return train_args(root)


@case("csv-absolute-path")
def _(t, out):
    root = image_folder(t / "d")
    text = (root / "attributes.csv").read_text().replace("0.png", str((root / "1.png").resolve()))
    (root / "attributes.csv").write_text(text)
    return train_args(root)


@case("csv-symlink-out-of-root")
def _(t, out):
    root = image_folder(t / "d")
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(t / "secret.png")
    (root / "0.png").unlink()
    (root / "0.png").symlink_to(t / "secret.png")
    return train_args(root)


@case("csv-header-only")
def _(t, out):
    root = image_folder(t / "d")
    (root / "attributes.csv").write_text("path,identity,glasses\n")
    return train_args(root)


@case("csv-no-path-column")
def _(t, out):
    root = image_folder(t / "d")
    text = (root / "attributes.csv").read_text().replace("path,", "file,", 1)
    (root / "attributes.csv").write_text(text)
    return train_args(root)


@case("csv-empty-cell")
def _(t, out):
    root = image_folder(t / "d")
    lines = (root / "attributes.csv").read_text().splitlines()
    lines[3] = lines[3].rsplit(",", 1)[0] + ","
    (root / "attributes.csv").write_text("\n".join(lines) + "\n")
    return train_args(root)


@case("csv-binary-garbage")
def _(t, out):
    root = image_folder(t / "d")
    (root / "attributes.csv").write_bytes(bytes(range(256)) * 4)
    return train_args(root)


@case("attribute-named-script")
def _(t, out):
    return train_args("digits", target="<script>alert(1)</script>")


# -- audio ------------------------------------------------------------------------------------------

@case("wav-truncated")
def _(t, out):
    root = fsdd_folder(t / "d")
    p = root / "recordings" / "1_bob_2.wav"
    p.write_bytes(p.read_bytes()[:30])
    return train_args(root, target="digit")


@case("wav-garbage")
def _(t, out):
    root = fsdd_folder(t / "d")
    (root / "recordings" / "0_ann_1.wav").write_bytes(b"RIFF....WAVEfmt garbage garbage")
    return train_args(root, target="digit")


@case("fsdd-speakers-csv-missing")
def _(t, out):
    root = fsdd_folder(t / "d")
    (root / "speakers.csv").unlink()
    return train_args(root, target="digit")


@case("fsdd-bad-file-name")
def _(t, out):
    root = fsdd_folder(t / "d")
    (root / "recordings" / "0_ann_1.wav").rename(root / "recordings" / "zero-ann.wav")
    return train_args(root, target="digit")


# -- arrays -----------------------------------------------------------------------------------------

@case("npz-nan")
def _(t, out):
    x = np.random.default_rng(0).random((20, 5)).astype(np.float32)
    x[3, 2] = np.nan
    return train_args(npz_file(t / "a.npz", x=x), target="label")


@case("npz-inf")
def _(t, out):
    x = np.random.default_rng(0).random((20, 5)).astype(np.float32)
    x[0, 0] = np.inf
    return train_args(npz_file(t / "a.npz", x=x), target="label")


@case("npz-mismatched-lengths")
def _(t, out):
    return train_args(npz_file(t / "a.npz", label=np.array(["a", "b"] * 7)), target="label")


@case("npz-truncated")
def _(t, out):
    p = npz_file(t / "a.npz")
    p.write_bytes(p.read_bytes()[:100])
    return train_args(p, target="label")


@case("npz-not-a-zip")
def _(t, out):
    p = t / "a.npz"
    p.write_bytes(b"definitely not a zip file")
    return train_args(p, target="label")


@case("npz-pickled-object-array")
def _(t, out):
    p = t / "a.npz"
    np.savez(p, x=np.random.default_rng(0).random((4, 3)), label=np.array([{"a": 1}, {}, {}, {}], dtype=object))
    return train_args(p, target="label")


@case("npz-without-x")
def _(t, out):
    p = t / "a.npz"
    np.savez(p, label=np.array(["a", "b"]))
    return train_args(p, target="label")


# -- motion -----------------------------------------------------------------------------------------

@case("motion-nan")
def _(t, out):
    root = motion_folder(t / "d")
    p = root / "A_DeviceMotion_data" / "wlk_7" / "sub_1.csv"
    lines = p.read_text().splitlines()
    lines[10] = "9," + ",".join(["nan"] * 12)
    p.write_text("\n".join(lines) + "\n")
    return train_args(root, target="activity")


@case("motion-garbage-csv")
def _(t, out):
    root = motion_folder(t / "d")
    (root / "A_DeviceMotion_data" / "sit_5" / "sub_2.csv").write_text("a,b\nx,y\n")
    return train_args(root, target="activity")


@case("motion-subjects-info-missing")
def _(t, out):
    root = motion_folder(t / "d")
    (root / "data_subjects_info.csv").unlink()
    return train_args(root, target="activity")


# -- folders and names ------------------------------------------------------------------------------

@case("empty-folder")
def _(t, out):
    (t / "empty").mkdir()
    return info_args(t / "empty")


@case("missing-folder")
def _(t, out):
    return info_args(t / "nope")


@case("unknown-builtin-name")
def _(t, out):
    return train_args("synthetic-unicorns", target="x")


# -- artifacts --------------------------------------------------------------------------------------

def _model(t: Path, trained_model: Path) -> Path:
    dst = t / "model"
    shutil.copytree(trained_model, dst)
    return dst


class _Evil:
    def __reduce__(self):
        return (print, ("pickle executed",))


@case("pickle-renamed-weights")
def _(t, out, model=None):
    m = _model(t, model)
    (m / "weights.safetensors").write_bytes(pickle.dumps({"w": _Evil()}))
    return ["evaluate", "--model", m, "--data", "digits"]


@case("run-without-complete-marker")
def _(t, out, model=None):
    m = _model(t, model)
    (m / "complete").unlink()
    return ["evaluate", "--model", m, "--data", "digits"]


@case("meta-json-corrupt")
def _(t, out, model=None):
    m = _model(t, model)
    (m / "meta.json").write_text("{not json")
    return ["evaluate", "--model", m, "--data", "digits"]


@case("schema-mismatch-model-vs-data")
def _(t, out, model=None):
    return ["evaluate", "--model", _model(t, model), "--data", image_folder(t / "img")]


@case("model-on-wrong-modality")
def _(t, out, model=None):
    return ["evaluate", "--model", _model(t, model), "--data", npz_file(t / "feat.npz")]


@case("fast-ntk-unknown-step")
def _(t, out, model=None):
    return ["unlearn", "--model", _model(t, model), "--data", "digits", "--forget", "class=3", "--method", "fast-ntk",
            "--option", "step=newton-raphson", "--out", out]


# -- quantum attack ---------------------------------------------------------------------------------

@case("qnn-zero-qubits")
def _(t, out):
    return ["attack", "qnn", "--qubits", "0"]


@case("qnn-unknown-ansatz")
def _(t, out):
    return ["attack", "qnn", "--ansatz", "<script>"]


@case("qnn-batch-larger-than-data")
def _(t, out):
    return ["attack", "qnn", "--qubits", "2", "--batch", "100000"]


@case("qnn-zero-learning-rate")
def _(t, out):
    return ["attack", "qnn", "--qubits", "2", "--learning-rate", "0"]


@case("qnn-unknown-step-rule")
def _(t, out):
    return ["attack", "qnn", "--qubits", "2", "--step-rule", "newton-raphson"]


@case("qnn-zero-start-candidates")
def _(t, out):
    return ["attack", "qnn", "--qubits", "2", "--start-candidates", "0"]


# -- options ----------------------------------------------------------------------------------------

@case("negative-learning-rate")
def _(t, out):
    return ["train", "--data", "digits", "--target", "digit", "--lr", "-1"]


@case("nan-learning-rate")
def _(t, out):
    return ["train", "--data", "digits", "--target", "digit", "--lr", "nan"]


@case("dp-with-peft")
def _(t, out):
    return ["train", "--data", "digits", "--target", "digit", "--dp", "--peft", "bn"]


@case("dp-epsilon-unreachable")
def _(t, out):
    return ["train", "--data", "digits", "--target", "digit", "--dp", "--target-epsilon", "0.0001", "--epochs", "30"]


@case("i2i-with-classifier-only-options")
def _(t, out):
    return ["train", "--task", "i2i", "--data", "digits", "--dp"]


@case("no-attackers")
def _(t, out):
    return ["audit", "attributes", "--data", "digits", "--attackers", ","]


# -- the test ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained_model(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("m") / "digits-model"
    r = runner.invoke(app, ["train", "--data", "digits", "--target", "digit", "--epochs", "1", "--out", str(out)])
    assert r.exit_code == 0, r.output
    return out


def test_matrix_has_at_least_30_cases():
    assert len(CASES) >= 30


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input(name, tmp_path, trained_model):
    out = tmp_path / "out"
    builder = CASES[name]
    args = builder(tmp_path, out, model=trained_model) if "model" in builder.__code__.co_varnames else builder(tmp_path, out)
    if args[0] not in ("datasets",):
        args = args + ["--out", out]
    result = runner.invoke(app, [str(a) for a in args])
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert result.exit_code == 2, f"{name}: exit {result.exit_code}\n{result.output}\n{result.exception!r}"
    assert len(lines) == 1 and lines[0].startswith("error:"), f"{name}: {result.output}"
    assert "Traceback" not in result.output and "pickle executed" not in result.output
    assert not out.exists(), f"{name}: wrote {out}"
