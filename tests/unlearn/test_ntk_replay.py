"""Fast-NTK step="replay": the training recipe replayed on the linearised network (privkit.unlearn.ntk_replay).

References are independent: torch.optim (Adam, SGD) with autograd on the same linearised loss,
the full Jacobian of privkit.unlearn.jacobian for the head-factored rows, and the real training
loop (privkit.train.run_training) for the claim that on a model linear in its parameters the step
*is* retraining.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from privkit.data.datasets import ArrayDataset
from privkit.data.schema import Attribute, Schema
from privkit.distributed import DistInfo
from privkit.errors import ArtifactError, ConfigError
from privkit.train import ClassifierConfig, ClassifierTask, LoopConfig, epoch_batches, run_training
from privkit.unlearn.jacobian import flatten_parameters, parameter_jacobian, select_parameters
from privkit.unlearn.ntk_replay import (LinearisedNet, ReplayRecipe, ReplayState, linearise_for_replay,
                                        replay_forget_delta, trajectory_points,
                                        load_replay_state, replay_recipe, save_replay_state)
from bn_cnn import bn_cnn

F64 = torch.float64


def _random_net(seed=0, n=40, c=3, d_in=5, p_body=7) -> LinearisedNet:
    g = torch.Generator().manual_seed(seed)
    names = ["body.a", "body.b", "head.weight", "head.bias"]
    shapes = [[3], [p_body - 3], [c, d_in], [c]]
    total = sum(math.prod(s) for s in shapes)
    return LinearisedNet(names, shapes, ["body.a", "body.b"], ("head.weight", "head.bias"),
                         torch.randn(n, c, generator=g, dtype=F64), torch.randint(0, c, (n,), generator=g),
                         torch.randn(n, c, p_body, generator=g, dtype=F64), torch.randn(n, d_in, generator=g, dtype=F64),
                         0.3 * torch.randn(total, generator=g, dtype=F64))


def _torch_optim_replay(net: LinearisedNet, recipe: ReplayRecipe, pieces=None, path=None) -> torch.Tensor:
    """The same recipe with torch.optim and autograd, one tensor per parameter (the reference).

    ``pieces``: several linearisations; each step uses piece floor(K <delta, path> / |path|^2), clipped.
    """
    delta = {n: torch.zeros(math.prod(s), dtype=F64, requires_grad=True) for n, s in zip(net.names, net.shapes)}
    params = list(delta.values())
    opt = (torch.optim.Adam(params, lr=recipe.lr) if recipe.optimizer == "adam"
           else torch.optim.SGD(params, lr=recipe.lr, momentum=recipe.momentum))
    for epoch in range(recipe.epochs):
        for batch in epoch_batches(len(net.labels), recipe.batch_size, recipe.seed, epoch, DistInfo()):
            rows = torch.tensor(batch)
            opt.zero_grad()
            use = net
            if pieces:
                t = float(net.join({k: v.detach() for k, v in delta.items()}) @ path / (path @ path))
                use = pieces[min(len(pieces) - 1, max(0, int(t * len(pieces))))]
            loss = F.cross_entropy(use.outputs(rows, delta), net.labels[rows])
            loss = loss + 0.5 * recipe.anchor_penalty * sum((d * d).sum() for d in params)
            loss.backward()
            opt.step()
    return net.join({k: v.detach() for k, v in delta.items()})


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_replay_equals_torch_optim_on_the_linearised_loss(optimizer):
    net = _random_net()
    recipe = ReplayRecipe(epochs=3, batch_size=8, lr=0.05, optimizer=optimizer, anchor_penalty=0.01, seed=2)
    reference = _torch_optim_replay(net, recipe)
    assert reference.abs().max() > 0.05  # the replay moved
    torch.testing.assert_close(replay_recipe(net, recipe, dtype=F64), reference, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(replay_recipe(net, recipe), reference, rtol=1e-4, atol=1e-5)  # float32


def test_piecewise_replay_switches_linearisation_along_the_path():
    pieces = [_random_net(seed=s) for s in (0, 1, 2)]
    for piece in pieces[1:]:
        piece.labels = pieces[0].labels
    recipe = ReplayRecipe(epochs=4, batch_size=8, lr=0.05, anchor_penalty=0.01, seed=0)
    path = _torch_optim_replay(pieces[0], recipe)  # a direction the iterates actually travel along
    reference = _torch_optim_replay(pieces[0], recipe, pieces, path)
    torch.testing.assert_close(replay_recipe(pieces, recipe, path, dtype=F64), reference, rtol=1e-10, atol=1e-12)
    # the switch mattered: one linearisation alone lands elsewhere
    assert float((replay_recipe(pieces[0], recipe, dtype=F64) - reference).abs().max()) > 1e-3
    with pytest.raises(ConfigError, match="path"):
        replay_recipe(pieces, recipe)


def test_head_factored_rows_equal_the_full_jacobian():
    model, w0_all, x, y = bn_cnn(seed=3, n_classes=4, n=20)
    selected = select_parameters(model, "bn")
    w0 = {n: w0_all[n] for n in selected}
    point = {n: 0.5 * (w0[n] + p.detach()) for n, p in selected.items()}
    net = linearise_for_replay(model, w0, point, x, y)
    assert net.head is not None and net.features is not None
    assert net.jac_body.shape[-1] < sum(p.numel() for p in selected.values())  # only the BN rows are stored
    at_point = {n: point[n] for n in selected}
    jac, logits = parameter_jacobian(model, x, at_point, 8, return_logits=True)
    delta = 0.2 * torch.randn(jac.shape[-1], dtype=F64)
    rows = torch.arange(len(y))
    expected = logits.double() + jac.double().reshape(len(y), -1, jac.shape[-1]) @ (delta - net.shift)
    torch.testing.assert_close(net.outputs(rows, net.split(delta)), expected, rtol=1e-5, atol=1e-5)


def _linear_problem(seed=0, n=48, d=6, c=3):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, c, n)
    x = rng.normal(0, 1, (n, d)) + 1.5 * np.eye(c, d)[y]
    schema = Schema("features", (Attribute("label", tuple("abc")),), (d,), layout="npz")
    ds = ArrayDataset(schema, x.astype(np.float32), y.reshape(-1, 1).astype(np.int64))
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(d, c))
    return ds, model


def _train(model, ds, recipe: ReplayRecipe, w0):
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(w0[name])
    cfg = ClassifierConfig(lr=recipe.lr, weight_decay=recipe.anchor_penalty, anchor_penalty=recipe.anchor_penalty)
    run_training(ClassifierTask(model, 0, cfg), ds, LoopConfig(epochs=recipe.epochs, batch_size=recipe.batch_size,
                                                               seed=recipe.seed, progress=False))
    return flatten_parameters(dict(model.named_parameters()), F64)


def test_on_a_model_linear_in_its_parameters_the_replay_step_is_retraining():
    ds, model = _linear_problem()
    recipe = ReplayRecipe(epochs=4, batch_size=10, lr=0.05, anchor_penalty=0.01, seed=1)
    w0 = {n: p.detach().clone() for n, p in model.named_parameters()}
    trained = _train(model, ds, recipe, w0)
    x, attrs = ds.materialize()
    state = ReplayState.fit(model, w0, x, attrs[:, 0], ds.base_indices, recipe, "all")
    assert state.net.head is not None and not state.net.body  # a pure linear head: nothing but features stored
    # linearisation is exact: replaying over D from w0 reproduces the trained weights
    torch.testing.assert_close(flatten_parameters(w0, F64) + state.delta_full, trained, rtol=1e-4, atol=1e-5)
    forget = np.array([3, 7, 8, 20, 31])
    update, info = state.forget(forget)
    retain = ds.subset(np.setdiff1d(np.arange(len(ds)), forget))
    retrained = _train(nn.Sequential(nn.Linear(6, 3)), retain, recipe, w0)
    torch.testing.assert_close(trained + update, retrained, rtol=1e-4, atol=1e-5)
    assert float((trained - retrained).abs().max()) > 1e-2  # forgetting changed the weights
    assert info["delta_full"] == "kept" and info["replay_path_error"] < 1e-4


def test_state_round_trip_and_tampering(tmp_path):
    ds, model = _linear_problem(seed=2)
    recipe = ReplayRecipe(epochs=2, batch_size=16, lr=0.05, anchor_penalty=0.01, seed=0)
    w0 = {n: p.detach().clone() for n, p in model.named_parameters()}
    _train(model, ds, recipe, w0)
    x, attrs = ds.materialize()
    state = ReplayState.fit(model, w0, x, attrs[:, 0], ds.base_indices, recipe, "all")
    meta = save_replay_state(tmp_path, state, ds.fingerprint())
    loaded = load_replay_state(tmp_path, meta)
    torch.testing.assert_close(loaded.forget([1, 2])[0], state.forget([1, 2])[0])
    with pytest.raises(ConfigError, match="not among the samples"):
        state.forget([len(ds) + 5])
    with pytest.raises(ConfigError, match="every sample"):
        state.forget(np.arange(len(ds)))
    path = tmp_path / meta["ntk_replay_file"]
    raw = bytearray(path.read_bytes())
    raw[-3] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(ArtifactError, match="checksum"):
        load_replay_state(tmp_path, meta)
    with pytest.raises(ArtifactError, match="not a replay state"):
        ReplayState.from_bytes(b"\x08" + b"\x00" * 7 + b"garbage!", "x")


def test_recipe_checks():
    with pytest.raises(ConfigError, match="adam or sgd"):
        ReplayRecipe(epochs=1, batch_size=4, lr=0.1, optimizer="lbfgs").check()
    with pytest.raises(ConfigError, match="non-negative lr, got nan"):
        ReplayRecipe(epochs=1, batch_size=4, lr=float("nan")).check()
    with pytest.raises(ConfigError, match="positive learning rate"):
        ReplayRecipe(epochs=1, batch_size=4, lr=0.0).check()
    with pytest.raises(ConfigError, match="whole-number epochs"):
        ReplayRecipe(epochs=2.5, batch_size=4, lr=0.1).check()


def test_a_path_of_length_zero_uses_one_linearisation():
    net = _random_net()
    recipe = ReplayRecipe(epochs=2, batch_size=8, lr=0.05, seed=0)
    torch.testing.assert_close(replay_recipe([net, _random_net(seed=1)], recipe, torch.zeros(len(net.shift))),
                               replay_recipe(net, recipe))


def test_replay_state_memory_guard_counts_the_body_jacobian_only(monkeypatch):
    import privkit.unlearn.ntk as ntk_module
    from privkit.unlearn.peft import replay_state_memory_problem

    model, _, _, _ = bn_cnn(seed=0, n_classes=4, n=4)
    names = list(select_parameters(model, "bn"))
    body = sum(p.numel() for n, p in model.named_parameters() if n in names and not n.startswith("4."))
    need = 2 * 3 * 1000 * 4 * body * 4
    monkeypatch.setattr(ntk_module, "available_memory_bytes", lambda: int(need / 0.8) + 1)
    assert replay_state_memory_problem(model, names, 1000, 4, 3) is None
    monkeypatch.setattr(ntk_module, "available_memory_bytes", lambda: int(need / 0.8) - 1)
    message = replay_state_memory_problem(model, names, 1000, 4, 3)
    assert f"x {body} parameters" in message and "--no-replay-state" in message


def test_a_diverging_replay_is_a_config_error():
    net = _random_net()
    with pytest.raises(ConfigError, match="diverged"):
        replay_recipe(net, ReplayRecipe(epochs=50, batch_size=8, lr=1e10, optimizer="sgd", anchor_penalty=0.5, seed=0))


def test_replay_over_rows_equals_the_replay_over_their_subset():
    """A request replays over its retain rows in place (no copy of the stored Jacobians): the same bits."""
    nets = [_random_net(seed=0, n=60), _random_net(seed=1, n=60)]
    for second in nets[1:]:
        second.labels = nets[0].labels
    rows = torch.tensor([i for i in range(60) if i % 7 not in (2, 5)])
    path = torch.randn(len(nets[0].shift), dtype=torch.float64)
    for optimizer in ("adam", "sgd"):
        recipe = ReplayRecipe(epochs=3, batch_size=8, lr=0.05, optimizer=optimizer, anchor_penalty=0.1, seed=3)
        assert torch.equal(replay_recipe(nets, recipe, path, rows=rows),
                           replay_recipe([nt.subset(rows) for nt in nets], recipe, path))


def _bilinear_net(seed=0, n=40, c=3, d_in=5, p_body=7) -> LinearisedNet:
    """A random bilinear net: jac_body is the head input's Jacobian (n, d_in, p_body), head_weight W_m."""
    net = _random_net(seed, n, c, d_in, p_body)
    g = torch.Generator().manual_seed(seed + 100)
    net.jac_body = torch.randn(n, d_in, p_body, generator=g, dtype=F64)
    net.head_weight = torch.randn(c, d_in, generator=g, dtype=F64)
    return net


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_bilinear_replay_equals_torch_optim_on_the_bilinear_loss(optimizer):
    """The hand-written cross-term gradients against autograd through LinearisedNet.outputs."""
    net = _bilinear_net()
    recipe = ReplayRecipe(epochs=3, batch_size=8, lr=0.05, optimizer=optimizer, anchor_penalty=0.01, seed=2)
    reference = _torch_optim_replay(net, recipe)
    torch.testing.assert_close(replay_recipe(net, recipe, dtype=F64), reference, rtol=1e-10, atol=1e-12)
    # the cross term mattered: the same net read as the logits model lands elsewhere
    logits_model = _random_net()
    logits_model.jac_body = torch.einsum("ci,nip->ncp", net.head_weight, net.jac_body)
    assert float((replay_recipe(logits_model, recipe, dtype=F64) - reference).abs().max()) > 1e-3


def test_bilinear_model_is_the_logits_model_plus_the_head_body_cross_term():
    """Stored: the head input's Jacobian A; W_m A equals the logits' Jacobian, and the outputs carry dW A dtheta."""
    model, w0_all, x, y = bn_cnn(seed=3, n_classes=4, n=20)
    selected = select_parameters(model, "bn")
    w0 = {n: w0_all[n] for n in selected}
    point = {n: 0.5 * (w0[n] + p.detach()) for n, p in selected.items()}
    logits_net = linearise_for_replay(model, w0, point, x, y, replay_model="logits")
    bilinear = linearise_for_replay(model, w0, point, x, y, replay_model="bilinear")
    assert bilinear.bilinear and not logits_net.bilinear
    assert bilinear.jac_body.shape[1] == bilinear.features.shape[1]  # rows: the head's inputs
    torch.testing.assert_close(torch.einsum("ci,nip->ncp", bilinear.head_weight.float(), bilinear.jac_body),
                               logits_net.jac_body, rtol=1e-4, atol=1e-5)
    g = torch.Generator().manual_seed(0)
    delta = logits_net.shift + 0.3 * torch.randn(len(logits_net.shift), generator=g, dtype=F64)
    rows = torch.arange(len(y))
    parts = bilinear.split(delta - bilinear.shift)
    w, _ = bilinear.head
    body = torch.cat([parts[n].reshape(-1) for n in bilinear.body])
    cross = (bilinear.jac_body.double() @ body) @ parts[w].reshape(4, -1).T
    torch.testing.assert_close(bilinear.outputs(rows, bilinear.split(delta)),
                               logits_net.outputs(rows, logits_net.split(delta)) + cross, rtol=1e-4, atol=1e-4)
    assert float(cross.abs().max()) > 1e-3


def test_trajectory_points_are_the_training_iterates_and_replay_reproduces_training():
    ds, model = _linear_problem(seed=4)
    recipe = ReplayRecipe(epochs=3, batch_size=10, lr=0.05, anchor_penalty=0.01, seed=5)
    w0 = {n: p.detach().clone() for n, p in model.named_parameters()}
    trained = _train(model, ds, recipe, w0)
    x, attrs = ds.materialize()
    points, error = trajectory_points(model, w0, x, attrs[:, 0], recipe, 3)
    assert error < 1e-6 and len(points) == 3
    # 15 steps (5 per epoch): the iterates after round(2.5), round(7.5), round(12.5) = 2, 8, 12 steps
    for k, steps in enumerate((2, 8, 12)):
        short = ReplayRecipe(epochs=recipe.epochs, batch_size=10, lr=0.05, anchor_penalty=0.01, seed=5)
        expected = _train_steps(nn.Sequential(nn.Linear(6, 3)), ds, short, w0, steps)
        torch.testing.assert_close(flatten_parameters(points[k], F64), expected, rtol=1e-6, atol=1e-7)
    state = ReplayState.fit(model, w0, x, attrs[:, 0], ds.base_indices, recipe, "all")
    assert state.schedule == "steps" and state.trajectory_error < 1e-6
    torch.testing.assert_close(flatten_parameters(w0, F64) + state.delta_full, trained, rtol=1e-4, atol=1e-5)
    # weights the recipe does not reproduce (here: nudged) fall back to the straight path's points
    with torch.no_grad():
        model[0].bias.add_(0.05)
    fallback = ReplayState.fit(model, w0, x, attrs[:, 0], ds.base_indices, recipe, "all")
    assert fallback.schedule == "path" and fallback.trajectory_error > 1e-3


def _train_steps(model, ds, recipe: ReplayRecipe, w0, steps: int):
    """The training loop stopped after ``steps`` steps (the reference for a trajectory snapshot)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(w0[name])
    cfg = ClassifierConfig(lr=recipe.lr, weight_decay=recipe.anchor_penalty, anchor_penalty=recipe.anchor_penalty)
    task = ClassifierTask(model, 0, cfg)
    step, count = task.step, [0]

    def limited(batch, epoch, index):
        if count[0] >= steps:
            return {}
        count[0] += 1
        return step(batch, epoch, index)

    task.step = limited
    run_training(task, ds, LoopConfig(epochs=recipe.epochs, batch_size=recipe.batch_size, seed=recipe.seed,
                                      progress=False))
    return flatten_parameters(dict(model.named_parameters()), F64)


def test_direct_and_difference_forms():
    """direct: w* + update = w0 + delta_Dr; difference: update = delta_Dr - delta_D."""
    nets = [_random_net(seed=0, n=50), _random_net(seed=1, n=50)]
    nets[1].labels = nets[0].labels
    recipe = ReplayRecipe(epochs=2, batch_size=8, lr=0.05, anchor_penalty=0.01, seed=1)
    path = torch.randn(len(nets[0].shift), dtype=F64)
    rows = torch.arange(0, 50, 2)
    retained = replay_recipe(nets, recipe, path, rows=rows, schedule="steps")
    full = replay_recipe(nets, recipe, path, schedule="steps")
    direct, info = replay_forget_delta(nets, rows, recipe, path=path, schedule="steps", form="direct")
    difference, _ = replay_forget_delta(nets, rows, recipe, path=path, schedule="steps", form="difference")
    torch.testing.assert_close(direct, retained - path)
    torch.testing.assert_close(difference, retained - full)
    assert info["replay_form"] == "direct" and info["replay_schedule"] == "steps"
    with pytest.raises(ConfigError, match="replay_form='both'"):
        replay_forget_delta(nets, rows, recipe, path=path, form="both")
    with pytest.raises(ConfigError, match="schedule='time'"):
        replay_recipe(nets, recipe, path, schedule="time")


def test_bilinear_state_round_trip_and_a_format_1_state_still_loads(tmp_path):
    from safetensors.torch import save_file

    model, w0_all, x, y = bn_cnn(seed=1, n_classes=4, n=24)
    selected = select_parameters(model, "bn")
    w0 = {n: w0_all[n] for n in selected}
    recipe = ReplayRecipe(epochs=2, batch_size=8, lr=0.01, anchor_penalty=0.01, seed=0)
    state = ReplayState.fit(model, w0, x, y, torch.arange(len(y)), recipe, "bn", points=2, replay_model="bilinear",
                            schedule="path")
    assert state.model == "bilinear" and state.schedule == "path"
    meta = save_replay_state(tmp_path, state, "fp")
    assert meta["ntk_replay_model"] == "bilinear" and meta["ntk_replay_schedule"] == "path"
    loaded = load_replay_state(tmp_path, meta)
    assert loaded.model == "bilinear"
    torch.testing.assert_close(loaded.forget([1, 2])[0], state.forget([1, 2])[0])
    # a format-1 file (before schedules and models): straight-path points, logits model
    old = ReplayState.fit(model, w0, x, y, torch.arange(len(y)), recipe, "bn", points=2, replay_model="logits",
                          schedule="path")
    old.save(tmp_path / "new.safetensors")
    from safetensors.torch import load_file

    tensors = load_file(str(tmp_path / "new.safetensors"))
    header = json.loads(_metadata_of(tmp_path / "new.safetensors"))
    for key in ("schedule", "model", "trajectory_error"):
        header.pop(key)
    header["format"] = "privkit.ntk_replay_state/1"
    save_file(tensors, str(tmp_path / "old.safetensors"), metadata={ReplayState._METADATA_KEY: json.dumps(header)})
    raw = (tmp_path / "old.safetensors").read_bytes()
    v1 = ReplayState.from_bytes(raw, "old")
    assert v1.schedule == "path" and v1.model == "logits"
    torch.testing.assert_close(v1.forget([1, 2])[0], old.forget([1, 2])[0])
    # a header naming the bilinear model over logits-model tensors is refused
    header["format"], header["model"] = ReplayState.FORMAT, "bilinear"
    save_file(tensors, str(tmp_path / "bad.safetensors"), metadata={ReplayState._METADATA_KEY: json.dumps(header)})
    with pytest.raises(ArtifactError, match="malformed"):
        ReplayState.from_bytes((tmp_path / "bad.safetensors").read_bytes(), "bad")


def _metadata_of(path) -> str:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as handle:
        return handle.metadata()[ReplayState._METADATA_KEY]


def test_trajectory_points_that_share_a_step_and_leave_the_random_streams_alone():
    """K > S: several points fall on one step (round half to even puts two of three on step 2 of 3);
    the re-run seeds the training loop's generators without moving the caller's."""
    import random

    ds, model = _linear_problem(seed=6, n=30)
    recipe = ReplayRecipe(epochs=1, batch_size=10, lr=0.05, anchor_penalty=0.01, seed=2)  # 3 steps
    w0 = {n: p.detach().clone() for n, p in model.named_parameters()}
    _train(model, ds, recipe, w0)
    x, attrs = ds.materialize()
    torch.manual_seed(123), np.random.seed(123), random.seed(123)
    expected = (torch.rand(1), np.random.rand(), random.random())
    torch.manual_seed(123), np.random.seed(123), random.seed(123)
    points, error = trajectory_points(model, w0, x, attrs[:, 0], recipe, 3)
    assert (torch.rand(1), np.random.rand(), random.random()) == expected
    assert error < 1e-6 and points is not None and len(points) == 3
    torch.testing.assert_close(flatten_parameters(points[1], F64), flatten_parameters(points[2], F64))
    assert not torch.equal(flatten_parameters(points[0], F64), flatten_parameters(points[1], F64))


def test_replay_over_rows_of_a_bilinear_net_on_the_steps_schedule_equals_its_subset():
    nets = [_bilinear_net(seed=0, n=50), _bilinear_net(seed=1, n=50)]
    nets[1].labels = nets[0].labels
    rows = torch.arange(1, 50, 3)
    recipe = ReplayRecipe(epochs=2, batch_size=8, lr=0.05, anchor_penalty=0.01, seed=4)
    assert torch.equal(replay_recipe(nets, recipe, rows=rows, schedule="steps"),
                       replay_recipe([nt.subset(rows) for nt in nets], recipe, schedule="steps"))


@pytest.mark.parametrize("field,value", [("trajectory_error", True), ("trajectory_error", "nan"),
                                         ("schedule", "time"), ("model", "auto"), ("points", 1e400)])
def test_a_tampered_format_2_header_is_refused(tmp_path, field, value):
    from safetensors.torch import load_file, save_file

    ds, model = _linear_problem(seed=2)
    recipe = ReplayRecipe(epochs=1, batch_size=16, lr=0.05, anchor_penalty=0.01, seed=0)
    w0 = {n: p.detach().clone() for n, p in model.named_parameters()}
    _train(model, ds, recipe, w0)
    x, attrs = ds.materialize()
    ReplayState.fit(model, w0, x, attrs[:, 0], ds.base_indices, recipe, "all").save(tmp_path / "s.safetensors")
    header = json.loads(_metadata_of(tmp_path / "s.safetensors"))
    header[field] = float(value) if value in ("nan", 1e400) else value
    save_file(load_file(str(tmp_path / "s.safetensors")), str(tmp_path / "t.safetensors"),
              metadata={ReplayState._METADATA_KEY: json.dumps(header)})
    with pytest.raises(ArtifactError, match="malformed"):
        ReplayState.from_bytes((tmp_path / "t.safetensors").read_bytes(), "t")
