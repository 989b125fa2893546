"""RURK's utility safeguards: retain distillation, frozen BatchNorm statistics, the stop rule."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from privkit.audit.residual import residual_knowledge
from privkit.audit.rurk import StopRule, distillation_kl, rurk_finetune, rurk_loss
from privkit.errors import ConfigError

from digits_mlp import fit as _fit
from digits_mlp import shuffled_digits


@pytest.fixture(scope="module")
def digits():
    x, y, perm = shuffled_digits()
    val, train = perm[:200], perm[200:]
    # a whole class forgotten (the case where RURK runs in the benchmark): the reference never saw a 3
    forget, retain = train[y[train] == 3], train[y[train] != 3]
    y_mem = y
    ref = _fit(x[retain], y[retain], seed=1)
    memorised = _fit(x[train], y[train], seed=4)
    order = torch.randperm(len(retain), generator=torch.Generator().manual_seed(0)).numpy()
    retain_loader = [(x[retain[order[i:i + 128]]], y[retain[order[i:i + 128]]]) for i in range(0, len(retain), 128)]
    forget_loader = [(x[forget], y_mem[forget])]
    return dict(x=x, y=y, y_mem=y_mem, val=val, forget=forget, retain=retain, ref=ref, memorised=memorised,
                retain_loader=retain_loader, forget_loader=forget_loader)


def _acc(model, x, y):
    with torch.no_grad():
        return float((model(x).argmax(-1) == y).float().mean())


def _params(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_distillation_term_matches_the_formula(digits):
    x, y = digits["x"], digits["y"]
    student, teacher = copy.deepcopy(digits["memorised"]), digits["ref"]
    xr, yr = x[:50], y[:50]
    loss, stats = rurk_loss(student, (xr, yr), None, teacher=teacher, distill=0.7, temperature=2.0)
    with torch.no_grad():
        p_t = F.softmax(teacher(xr).double() / 2, -1)
        log_p_s = F.log_softmax(student(xr).double() / 2, -1)
        kl = (p_t * (p_t.log() - log_p_s)).sum(-1).mean() * 4
        ce = F.cross_entropy(student(xr).double(), yr)
    assert stats["distill"] == pytest.approx(float(kl), rel=1e-4)
    assert loss.item() == pytest.approx(float(ce + 0.7 * kl), rel=1e-4)
    # a student identical to its teacher has nothing to distil
    assert distillation_kl(teacher(xr), teacher(xr), 3.0).item() == pytest.approx(0.0, abs=1e-6)


def test_penalty_forward_does_not_touch_batchnorm_statistics():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3)).train()
    retain = (torch.rand(32, 8), torch.randint(0, 3, (32,)))
    forget = (torch.rand(4, 8) * 0.1 + 0.9, torch.zeros(4, dtype=torch.long))  # far from the retain inputs
    only_retain = copy.deepcopy(model)
    only_retain(retain[0])  # reference: the statistics after the retain forward pass alone
    frozen = copy.deepcopy(model)
    _, stats = rurk_loss(frozen, retain, forget, tau=0.05, samples=8, generator=torch.Generator().manual_seed(0))
    bn, bn_ref = frozen[1], only_retain[1]
    assert torch.equal(bn.running_mean, bn_ref.running_mean) and torch.equal(bn.running_var, bn_ref.running_var)
    assert bn.training  # the model's modes are restored
    # the paper's train-mode forward would have moved them towards the forget perturbations
    unfrozen = copy.deepcopy(model)
    rurk_loss(unfrozen, retain, forget, tau=0.05, samples=8, generator=torch.Generator().manual_seed(0),
              freeze_norm_stats=False)
    assert not torch.equal(unfrozen[1].running_mean, bn_ref.running_mean)


def _rule(digits, **kw):
    x, y, y_mem, f, v = (digits[k] for k in ("x", "y", "y_mem", "forget", "val"))
    options = dict(tau=0.1, samples=16, clip=(0.0, 1.0), seed=0, reference=digits["ref"], val_x=x[v], val_y=y[v],
                   check_every=2)
    options.update(kw)
    return StopRule(x[f], y_mem[f], **options)


def test_stop_rule_stops_once_the_residual_knowledge_is_gone(digits):
    x, y, y_mem, f = (digits[k] for k in ("x", "y", "y_mem", "forget"))
    rule = _rule(digits)
    model = rurk_finetune(copy.deepcopy(digits["memorised"]), digits["retain_loader"], digits["forget_loader"],
                          epochs=10, lr=3e-3, lam=1.0, tau=0.1, samples=16, seed=0, stop_rule=rule)
    assert rule.stopped and rule.reason == "forgotten"
    steps_budget = 10 * len(digits["retain_loader"])
    assert rule.checks[-1]["step"] < steps_budget / 2  # stopped early, well within the budget
    last = rule.checks[-1]
    assert last["frac_above_1"] == 0 and last["mean_r_tau"] <= 1.05
    # every check before the last still found residual knowledge (it stopped at the first clean one)
    assert all(c["frac_above_1"] > 0 or c["mean_r_tau"] > 1.05 for c in rule.checks[1:-1])
    # an independent audit (the audit's own seed, more draws) agrees: the residual knowledge is gone ...
    after = residual_knowledge(model, digits["ref"], x[f], y_mem[f], (0.1,), samples=32, seed=1)
    before = residual_knowledge(digits["memorised"], digits["ref"], x[f], y_mem[f], (0.1,), samples=32, seed=1)
    assert before.summary[0]["frac_above_1"] > 0.9
    assert after.summary[0]["frac_above_1"] <= 0.1 and after.summary[0]["mean_r_tau"] < 1.2
    # ... and the validation accuracy stayed above the floor
    v = digits["val"]
    assert _acc(model, x[v], y[v]) >= rule.floor


def test_utility_floor_halves_the_step_and_never_saves_a_model_under_it(digits):
    x, y, v = digits["x"], digits["y"], digits["val"]
    start = copy.deepcopy(digits["memorised"])
    rule = _rule(digits, check_every=1, max_backtracks=2, val_tolerance=0.0)
    # a learning rate this large wrecks the model at the first step, at every halving
    model = rurk_finetune(copy.deepcopy(start), digits["retain_loader"][:3], digits["forget_loader"], epochs=2, lr=20.0,
                          lam=1.0, tau=0.1, samples=4, seed=0, distill=0.0, stop_rule=rule)
    assert rule.reason == "utility" and rule.backtracks == 2
    actions = [c.get("action", "") for c in rule.checks[1:]]
    assert actions[0] == "under the floor: lr halved to 10" and actions[1] == "under the floor: lr halved to 5"
    assert all(a == "under the floor" for a in actions[2:-1]) and actions[-1].startswith("stop")
    assert all(c["val_accuracy"] < rule.floor for c in rule.checks[1:-1])
    # no check was ever accepted: the saved model is the one it started from
    assert torch.equal(_params(model), _params(start))
    assert _acc(model, x[v], y[v]) >= rule.floor


def test_floor_is_min_of_start_and_reference_minus_tolerance(digits):
    x, y, v = digits["x"], digits["y"], digits["val"]
    model = copy.deepcopy(digits["memorised"])
    rule = _rule(digits, val_tolerance=2.0)
    rule.start(model, torch.optim.Adam(model.parameters(), lr=1e-3))
    expected = min(_acc(model, x[v], y[v]), _acc(digits["ref"], x[v], y[v])) - 0.02
    assert rule.floor == pytest.approx(expected)
    # with tolerance 0 the slack is one validation image
    rule = _rule(digits, val_tolerance=0.0, reference=None, heldout_x=x[v], heldout_y=y[v])
    rule.start(model, torch.optim.Adam(model.parameters(), lr=1e-3))
    assert rule.floor == pytest.approx(_acc(model, x[v], y[v]) - 1 / len(v))
    assert rule.can_audit  # the held-out tier: every forget class has validation samples


@pytest.mark.parametrize("kwargs, fragment", [
    (dict(check_every=0), "check_every=0"),
    (dict(val_tolerance=-1.0), "val_tolerance=-1"),
])
def test_bad_stop_rule_is_a_config_error(digits, kwargs, fragment):
    with pytest.raises(ConfigError, match=fragment):
        _rule(digits, **kwargs)


class _FakeAudit:
    def __init__(self, frac, mean):
        self.metrics = {"frac_above_1": frac, "mean_r_tau": mean, "recognition_unlearned": 0.5}

    def to_metrics(self):
        return self.metrics


@pytest.mark.parametrize("sequence, expected_step, reason", [
    ([(0.2, 1.5), (0.5, 3.0)], 1, "best check"),   # recognition rose again late: keep the earlier check
    ([(0.5, 3.0), (0.2, 1.5)], 2, None),           # the end of the budget is the best: keep it
])
def test_end_of_budget_keeps_the_check_with_least_residual_knowledge(digits, monkeypatch, sequence, expected_step,
                                                                     reason):
    import privkit.audit.residual as residual_module

    x, y_mem, f = digits["x"], digits["y_mem"], digits["forget"]
    model = copy.deepcopy(digits["memorised"])
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    rule = StopRule(x[f], y_mem[f], reference=digits["ref"], check_every=1000)
    rule.start(model, opt)
    weights = {}
    for step, (frac, mean) in enumerate(sequence, start=1):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.01 * step)
        weights[step] = _params(model).clone()
        monkeypatch.setattr(residual_module, "residual_knowledge", lambda *a, _m=(frac, mean), **k: _FakeAudit(*_m))
        rule.check(model, opt, step)
    rule.finalize(model, opt)
    assert rule.reason == reason
    assert torch.equal(_params(model), weights[expected_step])
