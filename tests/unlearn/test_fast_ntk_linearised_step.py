"""fast-ntk step="linearised-ce" end to end.

The kept-state request (no network pass: one step + subspace Newton, or exact Newton-CG) must land
far closer to the one-shot exact minimiser of the linearised cross-entropy than the one-step update
does; a kept state is refused for other training data; bad options are ConfigErrors.
"""

from __future__ import annotations

import json

import pytest
import torch

from privkit.errors import ArtifactError, ConfigError
from privkit.unlearn import get_unlearner
from privkit.unlearn.ntk_linearized import LINEARISED_STATE_FILE
from privkit.unlearn.run import prepare_request, run_method

SIZE = 300


@pytest.fixture(scope="module")
def peft_run(tmp_path_factory):
    from privkit.data import load_dataset
    from privkit.unlearn.peft import train_peft_run

    root = tmp_path_factory.mktemp("linearised")
    ds = load_dataset("digits", size=SIZE)
    train_peft_run(ds, "digits", "digit", root / "peft", peft="bn", epochs=2, lr=1e-2, seed=0, size=SIZE,
                   progress=False, keep_linearised_state=True)
    return root / "peft", ds


def _run(folder, ds, forget, **options):
    req = prepare_request(folder, "digits", forget, size=SIZE, dataset=ds)
    method = get_unlearner("fast-ntk", **options)
    method.check(req.start_model, req.context)
    return run_method(method, req)


def _flat(model):
    return torch.cat([p.detach().reshape(-1).double() for p in model.parameters()])


def test_kept_linearised_request_matches_the_one_shot_exact_minimiser(peft_run):
    folder, ds = peft_run
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["ntk_linearised_file"] == LINEARISED_STATE_FILE and meta["ntk_linearised_sha256"]
    kept, _, info = _run(folder, ds, "class=3", step="linearised-ce")
    shot, _, shot_info = _run(folder, ds, "class=3", step="linearised-ce", kept_state="off")
    newton, _, _ = _run(folder, ds, "class=3")
    assert info["ntk"]["path"] == "kept-state" and shot_info["ntk"]["path"] == "one-shot"
    assert info["ntk"]["converged"] and shot_info["ntk"]["converged"]
    move = float((_flat(shot) - _flat(newton)).norm())
    # the subspace request approximates the exact one far closer than the one step does
    assert float((_flat(kept) - _flat(shot)).norm()) < 0.05 * move


def test_linearised_step_refuses_the_trapezium_scale(peft_run):
    folder, ds = peft_run
    with pytest.raises(ConfigError, match="numeric scale"):
        _run(folder, ds, "class=3", step="linearised-ce", scale="trapezium")
    with pytest.raises(ConfigError, match="step='bogus'"):
        _run(folder, ds, "class=3", step="bogus")


def test_kept_linearised_state_is_refused_for_other_training_data(peft_run):
    folder, ds = peft_run
    req = prepare_request(folder, "digits", "class=3", size=SIZE, dataset=ds)
    # prepare_request already refuses other --data/--size; a context that names other training samples
    # (an API caller's) must be refused by the linearised state's own check, which solver="cholesky"
    # reaches without loading the kept NTK state
    req.context.train_fingerprint = "0" * 64
    method = get_unlearner("fast-ntk", step="linearised-ce", solver="cholesky")
    with pytest.raises(ArtifactError, match="other samples than the training data"):
        method.check(req.start_model, req.context)
        run_method(method, req)


def test_a_linearised_state_that_would_not_fit_is_refused_before_training(tmp_path, monkeypatch):
    import privkit.unlearn.ntk as ntk_module
    from privkit.data import load_dataset
    from privkit.errors import ResourceError
    from privkit.models import create
    from privkit.unlearn.peft import linearised_state_memory_problem, peft_parameter_names, train_peft_run

    ds = load_dataset("digits", size=SIZE)
    model = create("cnn", ds.schema, 10)
    names = peft_parameter_names(model, "bn")
    n_params = sum(p.numel() for n, p in model.named_parameters() if n in names)
    need = 3 * 1000 * 10 * n_params * 4  # every selected parameter's Jacobian, not only the body's
    monkeypatch.setattr(ntk_module, "available_memory_bytes", lambda: int(need / 0.8) + 1)
    assert linearised_state_memory_problem(model, names, 1000, 10) is None
    monkeypatch.setattr(ntk_module, "available_memory_bytes", lambda: int(need / 0.8) - 1)
    message = linearised_state_memory_problem(model, names, 1000, 10)
    assert f"x {n_params} parameters" in message and "without keep_linearised_state" in message
    # through training: refused before the run folder exists (the NTK state taken to fit, so the
    # linearised state's own check is what refuses)
    import privkit.unlearn.peft as peft_module

    monkeypatch.setattr(peft_module, "_ntk_state_memory_problem", lambda *args: None)
    monkeypatch.setattr(ntk_module, "available_memory_bytes", lambda: 2 ** 20)
    with pytest.raises(ResourceError, match="linearised state would need"):
        train_peft_run(ds, "digits", "digit", tmp_path / "run", peft="bn", epochs=1, lr=1e-2, size=SIZE,
                       progress=False, keep_linearised_state=True)
    assert not (tmp_path / "run").exists()
