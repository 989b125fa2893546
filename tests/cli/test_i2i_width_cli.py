"""`privkit i2i train --width`: the U-Net's channel width reaches the saved model; bad widths are refused."""

from __future__ import annotations

import json
import os

import pytest
from typer.testing import CliRunner


def invoke(args, cwd):
    from privkit.cli.main import app

    old = os.getcwd()
    os.chdir(cwd)
    try:
        return CliRunner().invoke(app, [str(a) for a in args])
    finally:
        os.chdir(old)


def test_width_is_saved_with_the_model_and_the_model_loads_at_that_width(tmp_path):
    from privkit.generative.train import load_i2i

    r = invoke(["i2i", "train", "--data", "digits", "--out", "run", "--width", "4", "--epochs", "1",
                "--size", "120", "--mask", "0.625"], tmp_path)
    assert r.exit_code == 0, r.output
    meta = json.loads((tmp_path / "run" / "meta.json").read_text())
    assert meta["architecture"] == "unet" and meta["kwargs"]["width"] == 4
    model, _, _ = load_i2i(tmp_path / "run")
    first_conv = next(m for m in model.modules() if m.__class__.__name__ == "Conv2d")
    assert first_conv.out_channels == 4


@pytest.mark.parametrize("extra, needle", [(["--width", "4", "--model", "mae-tiny"], "--width 4 applies to the U-Net"),
                                           (["--width", "0"], "--width 0 must be at least 1")])
def test_bad_width_is_one_line_exit_2_and_writes_nothing(tmp_path, extra, needle):
    r = invoke(["i2i", "train", "--data", "digits", "--out", "run", "--epochs", "1", *extra], tmp_path)
    lines = [ln for ln in r.output.strip().splitlines() if ln.strip()]
    assert r.exit_code == 2 and len(lines) == 1 and needle in lines[0], r.output
    assert not (tmp_path / "run").exists()
