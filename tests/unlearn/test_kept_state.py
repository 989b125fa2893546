"""The NTK state kept with a PEFT model: fast-ntk requests need only the forget set's Jacobians.

Reference for every check is the one-shot fast-ntk step (Jacobians over all of D, two solves),
which the kept-state path must reproduce; sequential requests must equal one request for their
union (the state is downdated and carried by the unlearned run).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from privkit.cli.main import app
from privkit.errors import ArtifactError
from privkit.unlearn import get_unlearner
from privkit.unlearn.metrics import METRIC_KEYS
from privkit.unlearn.peft import NTK_STATE_FILE, load_ntk_state
from privkit.unlearn.run import prepare_request, run_method, unlearn_run

SIZE = 300
TOL = 1e-5


@pytest.fixture(scope="module")
def peft_run(tmp_path_factory):
    from privkit.data import load_dataset
    from privkit.unlearn.peft import train_peft_run

    root = tmp_path_factory.mktemp("kept-state")
    ds = load_dataset("digits", size=SIZE)
    train_peft_run(ds, "digits", "digit", root / "peft", peft="bn", epochs=2, lr=1e-2, seed=0, size=SIZE,
                   progress=False, keep_replay_state=False)  # the Newton step's kept state is what is tested
    return root, ds


def _request(folder: Path, ds, forget: str):
    return prepare_request(folder, "digits", forget, size=SIZE, dataset=ds)


def _max_diff(a: torch.nn.Module, b: torch.nn.Module) -> float:
    return max(float((pa - pb).detach().abs().max()) for pa, pb in zip(a.parameters(), b.parameters()))


def _ids_file(folder: Path, name: str, ids) -> str:
    path = folder / name
    path.write_text("".join(f"{int(i)}\n" for i in ids))
    return f"ids={path}"


def test_state_is_kept_and_verifies(peft_run):
    root, ds = peft_run
    meta = json.loads((root / "peft" / "meta.json").read_text())
    path = root / "peft" / NTK_STATE_FILE
    # the checksum covers the file's header, which lists the SHA-256 of every tensor's bytes
    raw = path.read_bytes()
    header_length = int.from_bytes(raw[:8], "little")
    assert hashlib.sha256(raw[:8 + header_length]).hexdigest() == meta["ntk_state_sha256"]
    header = json.loads(raw[8:8 + header_length])
    digests = json.loads(header["__metadata__"]["privkit_ntk_state"])["tensor_sha256"]
    assert set(digests) == set(header) - {"__metadata__"}
    for name, digest in digests.items():
        begin, end = header[name]["data_offsets"]
        assert hashlib.sha256(raw[8 + header_length + begin:8 + header_length + end]).hexdigest() == digest
    assert meta["ntk_state_data_fingerprint"] == meta["data_fingerprint"]  # fitted on the fine-tuning data
    assert meta["ntk_state_fit_seconds"] > 0
    assert json.loads((root / "peft" / "metrics.json").read_text())["ntk_state_fit_seconds"] == \
        pytest.approx(meta["ntk_state_fit_seconds"])
    state = load_ntk_state(root / "peft", meta, data_fingerprint=meta["data_fingerprint"])
    req = _request(root / "peft", ds, "random=0.1")
    assert state.n_samples_ == len(req.retain) + len(req.forget)
    assert state.param_names_ == meta["peft_parameters"]
    assert state.weight_decay == pytest.approx(meta["config"]["optim"]["anchor_penalty"])


@pytest.mark.parametrize("scale", [1.0, "trapezium"])
def test_kept_state_equals_one_shot(peft_run, scale):
    root, ds = peft_run
    req = _request(root / "peft", ds, "random=0.1")
    kept, _, kept_info = run_method(get_unlearner("fast-ntk", scale=scale), req)
    assert req.context.ntk_state_out is not None
    shot, _, shot_info = run_method(get_unlearner("fast-ntk", scale=scale, kept_state="off"), req)
    assert req.context.ntk_state_out is None
    assert kept_info["ntk"]["path"] == "kept-state" and shot_info["ntk"]["path"] == "one-shot"
    assert kept_info["ntk"]["one_off_seconds"] > 0 and shot_info["ntk"]["one_off_seconds"] == 0
    assert kept_info["ntk"]["per_request_seconds"] > 0
    assert _max_diff(kept, req.model) > 1e-3  # the step did move the weights
    assert _max_diff(kept, shot) < TOL
    assert kept_info["ntk"]["scale"] == pytest.approx(shot_info["ntk"]["scale"], rel=1e-6)


def test_other_recipe_falls_back_to_one_shot(peft_run):
    root, ds = peft_run
    req = _request(root / "peft", ds, "class=3")
    _, _, info = run_method(get_unlearner("fast-ntk", weight_decay=2e-3), req)
    assert info["ntk"]["path"] == "one-shot" and "weight_decay" in info["ntk"]["path_reason"]
    assert req.context.ntk_state_out is None
    # the state is linearised at the trained weights with the Gauss-Newton weighting (the defaults);
    # asking for the paper's recipe (w0, identity) or another weighting runs one-shot and says why
    _, _, info = run_method(get_unlearner("fast-ntk", linearise="pretrained"), req)
    assert info["ntk"]["path"] == "one-shot" and "linearise='pretrained'" in info["ntk"]["path_reason"]
    assert info["ntk"]["linearisation_point"] == "pretrained PEFT values w0"
    _, _, info = run_method(get_unlearner("fast-ntk", weighting="identity"), req)
    assert info["ntk"]["path"] == "one-shot" and "weighting='identity'" in info["ntk"]["path_reason"]
    _, _, info = run_method(get_unlearner("fast-ntk"), req)
    assert info["ntk"]["path"] == "kept-state" and info["ntk"]["weighting"] == "ggn"
    assert info["ntk"]["linearisation_point"].startswith("trained weights w*")


def test_unlearn_run_keeps_downdated_state_and_chains(peft_run, tmp_path, monkeypatch):
    """Two sequential requests (the second against the unlearned run) equal one request for their union."""
    import privkit.unlearn.peft as peft

    root, ds = peft_run
    reads = []
    real_load = peft.load_ntk_state
    monkeypatch.setattr(peft, "load_ntk_state", lambda *a, **k: reads.append(a[0]) or real_load(*a, **k))
    held = _request(root / "peft", ds, "random=0.1")
    train_ids = np.sort(np.concatenate([held.retain.base_indices, held.forget.base_indices]))
    rng = np.random.default_rng(0)
    picked = rng.choice(train_ids, size=14, replace=False)
    first, second = np.sort(picked[:8]), np.sort(picked[8:])

    unlearn_run(root / "peft", "digits", _ids_file(tmp_path, "f1.txt", first), "fast-ntk", tmp_path / "r1",
                size=SIZE, dataset=ds, progress=False)
    meta1 = json.loads((tmp_path / "r1" / "meta.json").read_text())
    assert reads == [root / "peft"]  # check() verifies the state once and hands it to the request
    assert meta1["ntk_costs"]["path"] == "kept-state" and meta1["ntk_costs"]["upkeep_seconds"] > 0
    assert 0 < meta1["ntk_costs"]["per_request_seconds"] <= meta1["ntk_costs"]["RTE"]
    assert meta1["ntk_costs"]["one_off_seconds"] == pytest.approx(
        json.loads((root / "peft" / "meta.json").read_text())["ntk_state_fit_seconds"])
    assert json.loads((tmp_path / "r1" / "receipt.json").read_text())["ntk_costs"] == meta1["ntk_costs"]
    assert set(json.loads((tmp_path / "r1" / "metrics.json").read_text())) == set(METRIC_KEYS)
    assert meta1["forgotten_ids"] == [int(i) for i in first]
    state1 = load_ntk_state(tmp_path / "r1", meta1, data_fingerprint=meta1["retain_fingerprint"])
    assert state1.n_samples_ == len(train_ids) - len(first) and state1.n_requests_ == 1

    unlearn_run(tmp_path / "r1", "digits", _ids_file(tmp_path, "f2.txt", second), "fast-ntk", tmp_path / "r2",
                size=SIZE, dataset=ds, progress=False)
    meta2 = json.loads((tmp_path / "r2" / "meta.json").read_text())
    assert meta2["ntk_costs"]["path"] == "kept-state"
    assert meta2["forgotten_ids"] == sorted(int(i) for i in picked)
    assert meta2["unlearn"]["n_forget"] == len(second)
    assert meta2["unlearn"]["n_retain"] == len(train_ids) - len(picked)

    from privkit.models import load_model

    chained, _ = load_model(tmp_path / "r2")
    union = _request(root / "peft", ds, _ids_file(tmp_path, "union.txt", picked))
    at_once, _, info = run_method(get_unlearner("fast-ntk", kept_state="off"), union)
    assert info["ntk"]["path"] == "one-shot"
    assert _max_diff(chained, union.model) > 1e-3
    assert _max_diff(chained, at_once) < TOL


def _copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize("tensor", ["eigvecs", "gram"])
def test_a_tampered_factor_read_inside_the_request_is_refused_by_the_cli(peft_run, tmp_path, tensor):
    """The request reads Q (and the upkeep G) after the pre-flight check: still one line, exit 2, nothing kept."""
    from privkit.unlearn.ntk import read_safetensors_header

    root, _ = peft_run
    bad = _copy_run(root / "peft", tmp_path / "flipped")
    path = bad / NTK_STATE_FILE
    raw_header, header = read_safetensors_header(path)
    blob = bytearray(path.read_bytes())
    blob[len(raw_header) + header[tensor]["data_offsets"][0] + 11] ^= 0x01
    path.write_bytes(bytes(blob))
    result = CliRunner().invoke(app, ["unlearn", "--model", str(bad), "--data", "digits", "--size", str(SIZE),
                                      "--forget", "random=0.1", "--method", "fast-ntk",
                                      "--out", str(tmp_path / "out")])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and f"tensor '{tensor}'" in lines[0], result.output
    assert not (tmp_path / "out").exists()


def test_corrupted_or_mismatched_state_is_refused(peft_run, tmp_path):
    root, ds = peft_run
    # flipped bytes: checksum mismatch, refused by the CLI with one line, exit 2, nothing written
    bad = _copy_run(root / "peft", tmp_path / "flipped")
    blob = bytearray((bad / NTK_STATE_FILE).read_bytes())
    blob[-5] ^= 0xFF
    (bad / NTK_STATE_FILE).write_bytes(bytes(blob))
    result = CliRunner().invoke(app, ["unlearn", "--model", str(bad), "--data", "digits", "--size", str(SIZE),
                                      "--forget", "random=0.1", "--method", "fast-ntk",
                                      "--out", str(tmp_path / "out")])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and "checksum" in lines[0], result.output
    assert not (tmp_path / "out").exists()

    # a state fitted on other samples, its checksum updated: refused by the sample count
    from privkit.unlearn.peft import fit_ntk_state, save_ntk_state

    other = _copy_run(root / "peft", tmp_path / "other")
    req = _request(other, ds, "random=0.1")
    state, _ = fit_ntk_state(req.model, req.context.w0, req.retain, ds.schema.index("digit"), "bn",
                             req.context.recipe.ntk_weight_decay)
    meta = json.loads((other / "meta.json").read_text())
    meta["ntk_state_sha256"] = save_ntk_state(other, state)
    (other / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match="covers"):
        unlearn_run(other, "digits", "random=0.1", "fast-ntk", tmp_path / "out2", size=SIZE, dataset=ds,
                    progress=False)
    assert not (tmp_path / "out2").exists()

    # meta.json says the state covers other samples
    meta["ntk_state_data_fingerprint"] = "0" * 64
    (other / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match="other samples"):
        unlearn_run(other, "digits", "random=0.1", "fast-ntk", tmp_path / "out3", size=SIZE, dataset=ds,
                    progress=False)
