"""The batched torch simulator against slow references (dense numpy, gate-by-gate torch,
PennyLane), and parameter-shift against autodiff."""

import math

import numpy as np
import pytest
import torch

from privkit.attacks.quantum import simulator as sim
from privkit.attacks.quantum.circuits import ANSATZE, build_circuit, run_circuit, run_circuit_gatewise
from privkit.attacks.quantum.models import VQNN
from privkit.attacks.quantum.reference import dense_expval_z, dense_gate, run_dense


def random_state(n, batch, seed):
    gen = torch.Generator().manual_seed(seed)
    state = torch.randn((batch,) + (2,) * n, generator=gen, dtype=torch.complex128)
    return state / state.reshape(batch, -1).norm(dim=1).reshape((-1,) + (1,) * n)


@pytest.mark.parametrize("n", [1, 2, 3, 4])
@pytest.mark.parametrize("gate", ["RX", "RY", "RZ", "H", "CNOT", "CZ", "ZZ"])
def test_single_gate_matches_dense_kronecker_matrix(n, gate):
    needs_two = gate in ("CNOT", "CZ", "ZZ")
    if needs_two and n < 2:
        pytest.skip("two-qubit gate")
    rng = np.random.default_rng(n)
    state = random_state(n, 3, seed=n)
    wires = tuple(int(w) for w in rng.choice(n, size=2 if needs_two else 1, replace=False))
    angles = torch.as_tensor(rng.uniform(-math.pi, math.pi, 3))
    fn = sim.GATES[gate]
    out = fn(state, angles, *wires) if gate in sim.PARAMETRIC_GATES else fn(state, *wires)
    for b in range(3):
        angle = float(angles[b]) if gate in sim.PARAMETRIC_GATES else None
        expected = dense_gate(gate, wires, angle, n) @ state[b].reshape(-1).numpy()
        np.testing.assert_allclose(out[b].reshape(-1).numpy(), expected, atol=1e-12)


def test_general_matrix_batched_einsum_matches_dense():
    state = random_state(3, 2, seed=7)
    gen = torch.Generator().manual_seed(3)
    mats = torch.randn(2, 2, 2, generator=gen, dtype=torch.complex128)
    out = sim.apply_matrix(state, mats, 1)
    from privkit.attacks.quantum.reference import embed
    for b in range(2):
        expected = embed({1: mats[b].numpy()}, 3) @ state[b].reshape(-1).numpy()
        np.testing.assert_allclose(out[b].reshape(-1).numpy(), expected, atol=1e-12)


@pytest.mark.parametrize("ansatz", sorted(ANSATZE))
@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_circuit_matches_dense_reference_and_gatewise_torch(ansatz, n):
    spec = build_circuit(ansatz, n, 2)
    rng = np.random.default_rng(10 * n)
    x = rng.uniform(0, math.pi, size=(4, n))
    theta = rng.uniform(0, 2 * math.pi, size=spec.n_params)
    fast = run_circuit(spec, torch.as_tensor(x), torch.as_tensor(theta)).reshape(4, -1).numpy()
    gatewise = run_circuit_gatewise(spec, torch.as_tensor(x), torch.as_tensor(theta)).reshape(4, -1).numpy()
    dense = run_dense(spec, x, theta)
    np.testing.assert_allclose(fast, dense, atol=1e-12)
    np.testing.assert_allclose(gatewise, dense, atol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(fast, axis=1), 1.0, atol=1e-12)
    z = sim.expval_z_all(torch.as_tensor(fast).reshape((4,) + (2,) * n)).numpy()
    for w in range(n):
        np.testing.assert_allclose(z[:, w], dense_expval_z(dense, w, n), atol=1e-12)


def test_batched_over_parameter_sets_equals_one_by_one():
    model = VQNN(3, "complex", 2)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(5, 3, generator=gen, dtype=torch.float64)
    thetas = torch.rand(5, model.n_params, generator=gen, dtype=torch.float64) * 6
    batched = model.forward(x, thetas)
    single = torch.stack([model.forward(x[i:i + 1], thetas[i]) for i in range(5)]).reshape(-1)
    torch.testing.assert_close(batched, single, atol=1e-13, rtol=0)


@pytest.mark.parametrize("ansatz", sorted(ANSATZE))
def test_parameter_shift_equals_autodiff_wrt_theta(ansatz):
    model = VQNN(3, ansatz, 2)
    theta = model.init_params(4)
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(4, 3, generator=gen, dtype=torch.float64) * math.pi
    y = torch.rand(4, generator=gen, dtype=torch.float64) * 2 - 1
    shift = model.per_sample_gradients(x, y, theta, method="parameter-shift")
    auto = model.per_sample_gradients(x, y, theta, method="autodiff")
    torch.testing.assert_close(shift, auto, atol=1e-12, rtol=0)
    assert shift.abs().max() > 1e-3  # a non-trivial gradient was compared


@pytest.mark.parametrize("ansatz", ["simple", "simple-entangled", "complex"])
def test_parameter_shift_equals_autodiff_wrt_angle_encoded_input(ansatz):
    model = VQNN(3, ansatz, 2)
    theta = model.init_params(2)
    x = torch.rand(4, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float64) * math.pi
    torch.testing.assert_close(model.input_gradient(x, theta, method="parameter-shift"),
                               model.input_gradient(x, theta, method="autodiff"), atol=1e-12, rtol=0)


def test_zz_feature_map_refuses_input_parameter_shift():
    model = VQNN(2, "zz-efficientsu2", 1)
    with pytest.raises(ValueError, match="angle encoding"):
        model.input_gradient(torch.zeros(1, 2, dtype=torch.float64), model.init_params(0))


def test_training_reduces_loss_on_cos_task():
    from privkit.attacks.quantum.tasks import load_task

    data = load_task("cos", 2, seed=0)
    model = VQNN(2, "simple-entangled", 2).fit(data.X[:64], data.y[:64], epochs=10, lr=0.1)
    assert model.loss_curve_[-1] < 0.5 * model.loss_curve_[0]
    assert np.mean((model.predict(data.X[:64]) - data.y[:64]) ** 2) == pytest.approx(model.loss_curve_[-1], rel=0.5)


# --- PennyLane default.qubit ---------------------------------------------------------------------

def _pennylane_circuit(qml, spec, x, theta):
    for op in spec.ops:
        angle = None if op.source is None else float(op.angle(x[None, :], theta[None, :])[0])
        {
            "RX": lambda: qml.RX(angle, wires=op.wires[0]),
            "RY": lambda: qml.RY(angle, wires=op.wires[0]),
            "RZ": lambda: qml.RZ(angle, wires=op.wires[0]),
            "ZZ": lambda: qml.IsingZZ(angle, wires=list(op.wires)),
            "H": lambda: qml.Hadamard(wires=op.wires[0]),
            "CNOT": lambda: qml.CNOT(wires=list(op.wires)),
            "CZ": lambda: qml.CZ(wires=list(op.wires)),
        }[op.gate]()


@pytest.mark.parametrize("ansatz", sorted(ANSATZE))
def test_matches_pennylane_default_qubit(ansatz):
    qml = pytest.importorskip("pennylane")
    n = 3
    spec = build_circuit(ansatz, n, 2)
    rng = np.random.default_rng(3)
    x = rng.uniform(0, math.pi, size=n)
    theta = rng.uniform(0, 2 * math.pi, size=spec.n_params)
    dev = qml.device("default.qubit", wires=n)

    @qml.qnode(dev)
    def circuit():
        _pennylane_circuit(qml, spec, x, theta)
        return qml.state()

    @qml.qnode(dev)
    def expectations():
        _pennylane_circuit(qml, spec, x, theta)
        return [qml.expval(qml.PauliZ(w)) for w in range(n)]

    ours = run_circuit(spec, torch.as_tensor(x[None]), torch.as_tensor(theta)).reshape(-1).numpy()
    np.testing.assert_allclose(ours, np.asarray(circuit()), atol=1e-12)
    z = sim.expval_z_all(torch.as_tensor(ours).reshape((1,) + (2,) * n))[0].numpy()
    np.testing.assert_allclose(z, np.asarray(expectations(), dtype=float), atol=1e-12)


def test_parameter_shift_matches_pennylane_gradient():
    qml = pytest.importorskip("pennylane")
    from pennylane import numpy as pnp

    n = 2
    model = VQNN(n, "complex", 1, readout="z0")
    spec = model.spec
    theta = model.init_params(8).numpy()
    x = np.array([0.4, 2.1])
    dev = qml.device("default.qubit", wires=n)

    @qml.qnode(dev, diff_method="parameter-shift")
    def f(params):
        for op in spec.ops:
            if op.source == "theta":
                getattr(qml, op.gate)(params[op.index[0]], wires=op.wires[0])
            elif op.source == "x":
                qml.RX(x[op.index[0]], wires=op.wires[0])
            else:
                qml.CNOT(wires=list(op.wires))
        return qml.expval(qml.PauliZ(0))

    expected = qml.grad(f)(pnp.array(theta, requires_grad=True))
    # L = (f - y)^2 with y = f - 1/2  ->  dL/dtheta = df/dtheta
    f_value = float(model.forward(torch.as_tensor(x[None]), torch.as_tensor(theta))[0])
    ours = model.per_sample_gradients(torch.as_tensor(x[None]), torch.tensor([f_value - 0.5]), torch.as_tensor(theta))
    np.testing.assert_allclose(ours[0].numpy(), np.asarray(expected), atol=1e-10)
