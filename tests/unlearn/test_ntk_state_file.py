"""The kept NTK state file (format 3) and the cheap parts of a request.

References: the file's own bytes (every tensor's SHA-256 in the checksummed header), the dense product
``rows @ Q`` for the structured one (:func:`_rotate_rows`), and the state read whole from bytes for the
one opened lazily (same step). Tampering with any tensor must be refused when that tensor is read.
"""

from __future__ import annotations

import hashlib
import json
import math

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from privkit.errors import ArtifactError
from privkit.unlearn import ntk
from privkit.unlearn.jacobian import flatten_parameters, select_parameters, unflatten_parameters
from privkit.unlearn.ntk import NTKState, _forget_rows, _rank_one_factors, _rotate_rows, read_safetensors_header
from privkit.unlearn.peft import NTK_STATE_FILE, load_ntk_state, save_ntk_state
from bn_cnn import bn_cnn

F64 = torch.float64


def _state(dtype=torch.float32):
    model, w0, x, y = bn_cnn(0, n_classes=5, n=24, dtype=dtype)
    point = {k: v.detach().clone() for k, v in model.named_parameters()}
    state = NTKState(params="bn", weight_decay=0.01, weighting="ggn", chunk_size=7).fit(
        model, w0, x, y, linearise_at=point)
    return state, model, x, y


def _kept(tmp_path, state):
    """A run folder holding ``state`` and the meta.json keys that name it."""
    folder = tmp_path / "run"
    folder.mkdir()
    return folder, {"ntk_state_file": NTK_STATE_FILE, "ntk_state_sha256": save_ntk_state(folder, state)}


def _flip(path, begin: int) -> None:
    blob = bytearray(path.read_bytes())
    blob[begin] ^= 0x01
    path.write_bytes(bytes(blob))


def test_rotated_rows_equal_the_dense_product_with_and_without_a_linear_head():
    state, model, x, y = _state(F64)
    point = unflatten_parameters(state.point_, select_parameters(model, "bn"))
    rows, _, _, dtype = _forget_rows(model, point, x[:6], y[:6], "ce", 4, "auto", "ggn")
    assert dtype == F64 and rows.shape[1] > 1
    basis = state.eigvecs_
    dense = rows.reshape(-1, rows.shape[-1]) @ basis
    # the head (5 x 108) is a linear layer applied once per sample: factored, same product
    head = state.param_shapes_.index([5, 108])
    offset = sum(math.prod(s) for s in state.param_shapes_[:head])
    block = rows[:, :, offset:offset + 540].reshape(rows.shape[0], -1, 108)
    assert _rank_one_factors(block, F64) is not None
    torch.testing.assert_close(_rotate_rows(rows, basis, state.param_shapes_, F64), dense, rtol=1e-12, atol=1e-12)
    # rows without that structure (random) are multiplied densely, also the same product
    noise = torch.randn(rows.shape, dtype=F64, generator=torch.Generator().manual_seed(1))
    assert _rank_one_factors(noise[:, :, offset:offset + 540].reshape(rows.shape[0], -1, 108), F64) is None
    torch.testing.assert_close(_rotate_rows(noise, basis, state.param_shapes_, F64),
                               noise.reshape(-1, noise.shape[-1]) @ basis, rtol=1e-12, atol=1e-12)


def test_rank_one_test_refuses_a_block_off_by_more_than_round_off():
    gen = torch.Generator().manual_seed(2)
    coeff, vec = torch.randn(3, 8, generator=gen, dtype=F64), torch.randn(3, 5, generator=gen, dtype=F64)
    block = coeff.unsqueeze(2) * vec.unsqueeze(1)
    assert _rank_one_factors(block, torch.float32) is not None
    block[1, 4, 2] *= 1 + 1e-4  # far above float32 round-off
    assert _rank_one_factors(block, torch.float32) is None
    block[1, 4, 2] = float("nan")
    assert _rank_one_factors(block, torch.float32) is None


def test_header_checksum_covers_every_tensor_and_the_request_reads_only_what_it_uses(tmp_path, monkeypatch):
    state, model, x, y = _state()
    folder, meta = _kept(tmp_path, state)
    raw_header, header = read_safetensors_header(folder / NTK_STATE_FILE)
    assert hashlib.sha256(raw_header).hexdigest() == meta["ntk_state_sha256"]
    listed = json.loads(header["__metadata__"][NTKState._METADATA_KEY])["tensor_sha256"]
    assert set(listed) == set(header) - {"__metadata__"}

    reads = []
    real_read = ntk._StateFile.read
    monkeypatch.setattr(ntk._StateFile, "read", lambda self, name: reads.append(name) or real_read(self, name))
    opened = load_ntk_state(folder, meta)
    assert sorted(reads) == ["delta", "eigvals", "jtr", "point", "w0"]  # the P-length tensors only
    _, info = opened.forget(model, x[:3], y[:3], commit=False, rank_tol=0.0)
    assert sorted(reads[5:]) == ["eigvecs", "removed_eig"]  # the request: the factor, not G
    assert info["timings"]["per_request"]["load"] > 0
    # the same step as the state in memory
    _, reference = state.forget(model, x[:3], y[:3], commit=False, rank_tol=0.0)
    torch.testing.assert_close(flatten_parameters(info["delta"], F64), flatten_parameters(reference["delta"], F64),
                               rtol=1e-12, atol=1e-14)
    # the upkeep reads G (and the removed rows) as well
    opened.forget(model, x[:3], y[:3], commit=True, rank_tol=0.0)
    assert {"gram", "removed_jacobian"} <= set(reads)


@pytest.mark.parametrize("name", ["w0", "point", "jtr", "eigvals", "delta", "eigvecs", "removed_eig", "gram",
                                  "removed_jacobian"])
def test_a_flipped_byte_in_any_tensor_is_refused_when_it_is_read(tmp_path, name):
    state, model, x, y = _state()
    state.forget(model, x[:2], y[:2], commit=True, rank_tol=0.0)  # removed rows are not empty
    folder, meta = _kept(tmp_path, state)
    path = folder / NTK_STATE_FILE
    raw_header, header = read_safetensors_header(path)
    _flip(path, len(raw_header) + header[name]["data_offsets"][0] + 3)
    with pytest.raises(ArtifactError, match=f"checksum in meta.json \\(tensor '{name}'\\)"):
        opened = load_ntk_state(folder, meta)
        opened.forget(model, x[2:4], y[2:4], commit=False)  # a request
        opened.forget(model, x[2:4], y[2:4], commit=True)   # its upkeep
        opened.save(tmp_path / "next.safetensors")           # and what the next run keeps


def test_a_tensor_is_the_bytes_that_were_checked_and_a_truncated_file_is_an_error(tmp_path):
    state, model, x, y = _state()
    folder, meta = _kept(tmp_path, state)
    path = folder / NTK_STATE_FILE
    raw_header, header = read_safetensors_header(path)
    opened = load_ntk_state(folder, meta)
    basis = opened.eigvecs_.clone()
    # overwrite Q's first bytes in place after it was read and checked: the tensor in use must not change
    with open(path, "r+b") as handle:
        handle.seek(len(raw_header) + header["eigvecs"]["data_offsets"][0])
        handle.write(b"\x00\x00\xf6\x42" * 2)
    assert torch.equal(opened.eigvecs_, basis)
    # a file cut short after it was opened, before a tensor is read: an ArtifactError, not a crash
    with open(path, "r+b") as handle:
        handle.truncate(len(raw_header) + header["gram"]["data_offsets"][0] + 4)
    with pytest.raises(ArtifactError, match="truncated"):
        opened.gram_
    # and opened afresh, the cut file is refused up front
    with pytest.raises(ArtifactError, match="truncated"):
        load_ntk_state(folder, meta)


def test_a_changed_header_or_a_swapped_file_is_refused(tmp_path):
    state, model, x, y = _state()
    folder, meta = _kept(tmp_path, state)
    path = folder / NTK_STATE_FILE
    # a tensor and its listed checksum changed together: the header no longer matches meta.json
    with safe_open(str(path), framework="pt") as handle:
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}
        file_meta = json.loads(handle.metadata()[NTKState._METADATA_KEY])
    tensors["jtr"] = tensors["jtr"] + 1.0
    file_meta["tensor_sha256"]["jtr"] = ntk._tensor_sha256(tensors["jtr"])
    save_file(tensors, str(path), metadata={NTKState._METADATA_KEY: json.dumps(file_meta)})
    with pytest.raises(ArtifactError, match="checksum"):
        load_ntk_state(folder, meta)
    # another genuine state in its place: refused as well
    other, *_ = _state()
    other.forget(model, x[:1], y[:1], commit=True)
    other.save(path)
    with pytest.raises(ArtifactError, match="checksum"):
        load_ntk_state(folder, meta)


def test_a_format_2_state_checksummed_whole_still_serves_requests(tmp_path):
    state, model, x, y = _state(F64)
    state.forget(model, x[:2], y[:2], commit=True, rank_tol=0.0)
    folder, _ = _kept(tmp_path, state)
    # rewrite as the previous format: no removed_eig tensor, no checksum per tensor, meta.json holds the
    # SHA-256 of the whole file
    with safe_open(str(folder / NTK_STATE_FILE), framework="pt") as handle:
        tensors = {k: handle.get_tensor(k) for k in handle.keys() if k != "removed_eig"}
        file_meta = json.loads(handle.metadata()[NTKState._METADATA_KEY])
    file_meta["format"] = "privkit.ntk_state/2"
    del file_meta["tensor_sha256"]
    old = folder / NTK_STATE_FILE
    save_file(tensors, str(old), metadata={NTKState._METADATA_KEY: json.dumps(file_meta)})
    meta = {"ntk_state_file": NTK_STATE_FILE, "ntk_state_sha256": hashlib.sha256(old.read_bytes()).hexdigest()}
    loaded = load_ntk_state(folder, meta)
    _, a = loaded.forget(model, x[2:5], y[2:5], commit=False, rank_tol=0.0)
    _, b = state.forget(model, x[2:5], y[2:5], commit=False, rank_tol=0.0)
    torch.testing.assert_close(flatten_parameters(a["delta"], F64), flatten_parameters(b["delta"], F64),
                               rtol=1e-9, atol=1e-12)
    # its whole-file checksum is still enforced
    _flip(old, old.stat().st_size - 3)
    with pytest.raises(ArtifactError, match="checksum"):
        load_ntk_state(folder, meta)


def test_request_does_not_depend_on_the_forget_chunk_size(monkeypatch):
    state, model, x, y = _state(F64)
    _, big = state.forget(model, x[:6], y[:6], commit=False, rank_tol=0.0)
    monkeypatch.setattr(NTKState, "FORGET_CHUNK_BYTES", 1)  # one sample per chunk
    assert state._forget_chunk_size(model, {}, x) == 1
    _, small = state.forget(model, x[:6], y[:6], commit=False, rank_tol=0.0)
    torch.testing.assert_close(flatten_parameters(small["delta"], F64), flatten_parameters(big["delta"], F64),
                               rtol=1e-12, atol=1e-14)


def test_saved_and_reopened_state_keeps_serving_a_chain_of_requests(tmp_path):
    state, model, x, y = _state(F64)
    _, first = state.forget(model, x[:2], y[:2], commit=True, rank_tol=0.0)
    reopened = NTKState.load(state.save(tmp_path / "s.safetensors"))  # format 3: opened lazily
    assert "_eigvecs_tensor" not in reopened.__dict__
    _, a = reopened.forget(model, x[2:6], y[2:6], commit=False, rank_tol=0.0)
    _, b = state.forget(model, x[2:6], y[2:6], commit=False, rank_tol=0.0)
    torch.testing.assert_close(flatten_parameters(a["delta"], F64), flatten_parameters(b["delta"], F64),
                               rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("method", ["auto", "cg", "woodbury", "cholesky"])
def test_request_with_the_rotated_rows_formed_up_front_equals_the_exact_downdate(monkeypatch, method):
    """Above ``CG_CACHE_BYTES`` a request forms E = UQ once (factored head); below it CG applies Q per
    iteration. Both, after a committed request, must give the Cholesky solve of the downdated system."""
    state, model, x, y = _state(F64)
    state.forget(model, x[:3], y[:3], commit=True, rank_tol=0.0)
    _, reference = state.forget(model, x[3:9], y[3:9], method="cholesky", commit=False, rank_tol=0.0)
    expected = flatten_parameters(reference["delta"], F64)
    for cache_bytes in (NTKState.CG_CACHE_BYTES, 0):
        monkeypatch.setattr(NTKState, "CG_CACHE_BYTES", cache_bytes)
        _, info = state.forget(model, x[3:9], y[3:9], method=method, commit=False, rank_tol=0.0)
        torch.testing.assert_close(flatten_parameters(info["delta"], F64), expected, rtol=1e-9, atol=1e-12)


def test_a_state_naming_the_format_with_malformed_metadata_is_an_artifact_error(tmp_path):
    names = ["w0", "gram", "jtr", "eigvals", "eigvecs", "removed_jacobian", "delta", "point", "removed_eig"]
    metadata = {NTKState._METADATA_KEY: json.dumps({"format": NTKState.FORMAT})}
    save_file({k: torch.zeros(2) for k in names}, str(tmp_path / "s.safetensors"), metadata=metadata)
    with pytest.raises(ArtifactError, match="malformed metadata"):
        NTKState.load(tmp_path / "s.safetensors")


@pytest.mark.parametrize("commit", [False, True])
def test_an_explicit_cholesky_request_does_not_form_the_rotated_rows_it_never_uses(monkeypatch, commit):
    import privkit.unlearn.ntk as ntk_module

    state, model, x, y = _state(F64)
    monkeypatch.setattr(NTKState, "CG_CACHE_BYTES", 0)  # a P for which E = UQ is formed up front
    calls = []
    real = ntk_module._rotate_rows
    monkeypatch.setattr(ntk_module, "_rotate_rows", lambda *a, **k: calls.append(1) or real(*a, **k))
    state.forget(model, x[:3], y[:3], method="auto", commit=False, rank_tol=0.0)
    assert calls  # the default forms it before the solve
    calls.clear()
    state.forget(model, x[:3], y[:3], method="cholesky", commit=commit, rank_tol=0.0)
    assert len(calls) == (1 if commit else 0)  # only a commit needs E (for the eigenbasis rows it keeps)
