"""Artifacts never unpickle, refuse impostors, and round-trip exactly; run folders are atomic."""

from __future__ import annotations

import os
import pickle
import stat

import pytest
import torch

from privkit.data.schema import Attribute, Schema
from privkit.errors import ArtifactError, ConfigError, ResourceError
from privkit.io import RunDir, load_artifact, require_complete, save_artifact, verify_safetensors_file
from privkit.models import create, load_model, model_meta, save_model

SCHEMA = Schema("features", (Attribute("y", ("a", "b")),), (5,))


def _model_run(tmp_path):
    torch.manual_seed(0)
    m = create("mlp", SCHEMA, 2, hidden=8)
    with RunDir(tmp_path / "run", "train", {}) as run:
        save_model(run.path, m, model_meta(m, SCHEMA, target="y", config={}, metrics={}, data_fingerprint="x"))
        run.finish()
    return m, tmp_path / "run"


def test_saved_then_loaded_model_gives_identical_outputs(tmp_path):
    m, run = _model_run(tmp_path)
    loaded, meta = load_model(run)
    x = torch.randn(7, 5)
    m.eval()
    assert torch.equal(m(x), loaded(x))
    assert meta["architecture"] == "mlp" and meta["schema"]["modality"] == "features"
    assert meta["privkit_version"] and len(meta["weights_sha256"]) == 64


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch PWNED_BY_PICKLE",))


def test_pickle_renamed_weights_is_refused_without_executing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _, run = _model_run(tmp_path)
    (run / "weights.safetensors").write_bytes(pickle.dumps({"w": _Evil()}))
    with pytest.raises(ArtifactError, match="pickle"):
        load_model(run)
    assert not (tmp_path / "PWNED_BY_PICKLE").exists()


def test_torch_save_file_is_refused(tmp_path):
    _, run = _model_run(tmp_path)
    torch.save({"w": torch.zeros(3)}, run / "weights.safetensors")
    with pytest.raises(ArtifactError):
        load_model(run)


def test_truncated_and_tampered_weights_are_refused(tmp_path):
    _, run = _model_run(tmp_path)
    w = run / "weights.safetensors"
    good = w.read_bytes()
    w.write_bytes(good[:-10])
    with pytest.raises(ArtifactError, match="truncated"):
        verify_safetensors_file(w)
    flipped = bytearray(good)
    flipped[-1] ^= 0xFF
    w.write_bytes(bytes(flipped))
    with pytest.raises(ArtifactError, match="checksum"):
        load_model(run)


def test_incomplete_run_is_never_loaded(tmp_path):
    _, run = _model_run(tmp_path)
    (run / "complete").unlink()
    with pytest.raises(ArtifactError, match="complete"):
        load_model(run)
    with pytest.raises(ArtifactError, match="does not exist"):
        require_complete(tmp_path / "nope")


def test_meta_json_must_be_privkit(tmp_path):
    save_artifact(tmp_path / "a", {"w": torch.zeros(2)}, {"kind": "x"})
    (tmp_path / "a" / "meta.json").write_text('{"format": "other"}')
    with pytest.raises(ArtifactError, match="not a privkit artifact"):
        load_artifact(tmp_path / "a")


def test_rundir_refuses_existing_finished_run_and_cleans_up_on_error(tmp_path):
    _, run = _model_run(tmp_path)
    with pytest.raises(ConfigError, match="finished run"):
        RunDir(run, "train", {})
    with pytest.raises(ConfigError):
        with RunDir(tmp_path / "fresh", "train", {}):
            raise ConfigError("bad input discovered late")
    assert not (tmp_path / "fresh").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write to read-only folders")
def test_unwritable_output_folder_is_a_clear_error(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(stat.S_IRUSR | stat.S_IXUSR)
    with pytest.raises(ResourceError, match="permission denied"):
        RunDir(ro / "run", "train", {})


def test_disk_full_is_a_clear_error_and_keeps_earlier_files(tmp_path, monkeypatch):
    import errno

    from privkit.io import atomic_write_bytes

    target = tmp_path / "metrics.json"
    target.write_text("old")

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(ResourceError, match="no space left"):
        atomic_write_bytes(target, b"new")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]
