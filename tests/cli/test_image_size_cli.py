"""``--image-size``: training at a smaller resolution, recorded so later commands on the run reuse it."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from privkit.cli.main import app

runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def test_image_size_is_recorded_and_reused_by_unlearn_and_evaluate(tmp_path):
    model = tmp_path / "m"
    res = run("train", "--data", "synthetic-faces", "--size", "120", "--target", "gender", "--image-size", "20,16",
              "--epochs", "1", "--out", model)
    assert res.exit_code == 0, res.output
    config = json.loads((model / "config.json").read_text())
    assert config["data_options"]["image_size"] == [20, 16]
    meta = json.loads((model / "meta.json").read_text())
    assert list(meta["schema"]["input_shape"])[-2:] == [20, 16]
    # without the recorded size these would feed 64x64 images to a 20x16 model and fail
    res = run("evaluate", "--model", model, "--data", "synthetic-faces", "--size", "120")
    assert res.exit_code == 0, res.output
    res = run("unlearn", "--model", model, "--data", "synthetic-faces", "--size", "120", "--forget", "random=0.1",
              "--method", "finetune", "--out", tmp_path / "u")
    assert res.exit_code == 0, res.output


@pytest.mark.parametrize("value", ["0,3", "x", "1,2,3"])
def test_bad_image_size_is_one_line_exit_2(tmp_path, value):
    res = run("train", "--data", "digits", "--target", "digit", "--image-size", value, "--out", tmp_path / "m")
    assert res.exit_code == 2, res.output
    assert f"--image-size {value!r}" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "m").exists()


def test_image_size_on_non_image_data_names_the_modality(tmp_path):
    res = run("train", "--data", "synthetic-motion", "--size", "100", "--target", "activity", "--image-size", "8",
              "--out", tmp_path / "m")
    assert res.exit_code == 2 and "motion data" in res.output, res.output
