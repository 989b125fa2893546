"""benchmarks/bench_i2i.py: option checks that refuse bad input before any training."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_i2i", REPO / "benchmarks" / "bench_i2i.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_size_is_refused_for_a_fixed_dataset_before_any_work(capsys, monkeypatch):
    bench = load_bench()
    trained = []
    monkeypatch.setattr(bench, "run_scenario", lambda *a, **k: trained.append(a) or [])
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["--quick", "--size", "1200", "--methods", "none"])
    assert exit_info.value.code == 2
    assert "--size 1200" in capsys.readouterr().err and not trained
    # a faces scenario listed first must not train before the digits one is refused
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["--scenarios", "faces-age,digits-class", "--models", "unet", "--size", "1200", "--methods", "none"])
    assert exit_info.value.code == 2 and not trained
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["--scenarios", "faces-young", "--methods", "none"])
    assert exit_info.value.code == 2 and "faces-young" in capsys.readouterr().err and not trained


def test_size_replaces_the_generated_dataset_size_of_the_faces_scenario(monkeypatch):
    bench = load_bench()
    seen = []
    monkeypatch.setattr(bench, "run_scenario", lambda name, sc, *a, **k: seen.append((name, sc["size"])) or [])
    bench.main(["--scenarios", "faces-age", "--models", "unet", "--size", "1200", "--methods", "none"])
    assert seen == [("faces-age", 1200)]
    assert bench.SCENARIOS["faces-age"]["size"] == 400  # the scenario table itself is unchanged


def test_unet_width_reaches_the_unet_only_and_bad_width_is_refused(capsys, monkeypatch):
    bench = load_bench()
    seen = []
    monkeypatch.setattr(bench, "run_scenario",
                        lambda name, sc, model, *a, **k: seen.append((model, k["model_kwargs"])) or [])
    bench.main(["--scenarios", "digits-class", "--models", "unet,mae-tiny", "--unet-width", "24", "--methods", "none"])
    assert seen == [("unet", {"width": 24}), ("mae-tiny", None)]
    seen.clear()
    bench.main(["--quick", "--methods", "none"])
    assert seen == [("unet", None)]  # the model's own default width
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["--quick", "--unet-width", "0"])
    assert exit_info.value.code == 2 and "--unet-width 0" in capsys.readouterr().err
