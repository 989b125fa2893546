"""The ``audit residual --fix`` flow with a reference: RURK's stop rule uses the validation split."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from privkit.audit.run import audit_request, audit_residual_run


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from privkit.classify import train_run
    from privkit.unlearn.run import unlearn_run

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("fixflow")
    train_run("digits", "digit", root / "base", epochs=3, lr=1e-3, seed=0, size=None, progress=False)
    for method in ("finetune", "retrain"):
        unlearn_run(root / "base", "digits", "class=3", method, root / method, seed=0, progress=False)
    return root


def _val_accuracy(model, dataset, target):
    from privkit.classify import evaluate_predictions

    return evaluate_predictions(model, dataset, target)["accuracy"]


def test_fix_flow_stops_on_the_rule_and_its_floor_comes_from_the_validation_split(runs):
    from privkit.models import load_model

    out = audit_residual_run(runs / "finetune", "digits", "class=3", runs / "audit", reference_dir=runs / "retrain",
                             taus=(0.03,), samples=16, seed=0, fix=True,
                             fix_options={"sampler": "uniform", "epochs": 3, "lr": 3e-3, "tau": 0.03})
    m = json.loads((out / "metrics.json").read_text())
    assert m["fix_applied"] and m["before"]["frac_above_1"] > 0
    assert m["fix_stop"] in {"forgotten", "utility", "best check", "epochs"}
    # the whole class 3 is forgotten: the retain distillation leaves it out
    assert m["fix_distill_left_out"] == [3]
    checks = m["fix_checks"]
    # the floor: min(validation accuracy before the fix, the reference's) minus max(1 point, 1 image),
    # recomputed here from the validation split of the request (the test split is never used)
    request = audit_request(runs / "finetune", "digits", "class=3")
    reference, _ = load_model(runs / "retrain")
    # on the validation samples of the classes the retain set still holds: the forgotten 3s are meant to be lost
    column = request.dataset.schema.index(request.context.target)
    labels = request.val.materialize()[1][:, column]
    assert (labels == 3).any()
    val = request.val.subset(np.flatnonzero(labels.numpy() != 3))
    start_val = _val_accuracy(request.model, val, request.context.target)
    ref_val = _val_accuracy(reference, val, request.context.target)
    assert checks[0]["val_accuracy"] == pytest.approx(start_val)
    assert checks[0]["reference_val_accuracy"] == pytest.approx(ref_val)
    assert checks[0]["floor"] == pytest.approx(min(start_val, ref_val) - max(0.01, 1 / len(val)))
    # every accepted check sits on or above the floor, and the saved model is the last accepted one
    fixed, _ = load_model(out / "fixed-model")
    final_val = _val_accuracy(fixed, val, request.context.target)
    assert final_val >= checks[0]["floor"]
    if m["fix_stop"] == "forgotten":
        assert checks[-1]["frac_above_1"] == 0 and checks[-1]["val_accuracy"] == pytest.approx(final_val)
    assert m["after"]["mean_r_tau"] < m["before"]["mean_r_tau"]
    assert m["n_test"] == len(request.test)
