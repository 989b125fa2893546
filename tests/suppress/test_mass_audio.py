"""The STFT-domain audio generator and cross-fitted adversaries of MaSS."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from privkit.data.datasets import ArrayDataset
from privkit.data.schema import Attribute, Schema
from privkit.errors import ConfigError
from privkit.suppress import MaSS
from privkit.suppress.generators import SpectralMaskGenerator, WaveformGenerator, create_generator, list_generators
from privkit.suppress.mass import MaSSTask, cross_fit_folds, resolve_budgets

RATE = 8000
AUDIO = Schema("audio", (Attribute("y", ("a", "b")),), (1, 2000), sample_rate=RATE)


def voiced(n: int, f0: float, amplitude: float = 0.3, seed: int = 0) -> torch.Tensor:
    """A few harmonics of ``f0`` plus a little noise: ``(n, 1, 2000)`` waveforms."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(2000) / RATE
    wave = sum(torch.sin(2 * np.pi * k * f0 * t) / k for k in range(1, 6))
    wave = amplitude * wave / wave.abs().max()
    return (wave + 0.01 * torch.randn(n, 2000, generator=g)).view(n, 1, 2000)


def snr_db(ref: torch.Tensor, out: torch.Tensor) -> float:
    return float(10 * torch.log10(ref.pow(2).sum() / (ref - out).pow(2).sum()))


def test_spectral_mask_is_the_audio_default_and_the_old_generator_stays():
    assert isinstance(create_generator(None, AUDIO, 4), SpectralMaskGenerator)
    assert isinstance(create_generator("waveform-resnet", AUDIO, 4), WaveformGenerator)
    assert {"spectral-mask", "waveform-resnet"} <= set(list_generators("audio"))


@torch.no_grad()
def test_spectral_mask_identity_at_zero_residual_and_near_identity_at_init():
    torch.manual_seed(0)
    x = voiced(3, 120.0)
    # no residual and no additive term: the STFT round trip must give the input back exactly
    exact = create_generator(None, AUDIO, 4, init_scale=0.0, additive=0.0)
    assert torch.allclose(exact(x, torch.randn(3, 4)), x, atol=1e-5)
    # default init: close to the input (the first waveform generator ended at -17 dB SNR)
    y = create_generator(None, AUDIO, 4)(x, torch.randn(3, 4))
    assert y.shape == x.shape
    assert 12.0 < snr_db(x, y) < 60.0  # close, but not stuck at the identity


@torch.no_grad()
def test_spectral_mask_gain_is_bounded_and_output_stays_a_waveform():
    torch.manual_seed(0)
    gen = SpectralMaskGenerator(0, max_gain_db=20.0, additive=0.0)
    bins = gen.n_fft // 2 + 1
    gen.net.head.weight.zero_()
    gen.net.head.bias[:bins].fill_(50.0)  # saturate the mask: tanh -> 1, gain -> 10^(20/20) = 10
    quiet = voiced(2, 150.0, amplitude=0.01)
    assert torch.allclose(gen(quiet), 10.0 * quiet, atol=1e-4)
    loud = voiced(2, 150.0, amplitude=0.9)  # 10x would clip: the release is rescaled into (-1, 1)
    out = gen(loud)
    assert float(out.abs().max()) < 1.0
    assert torch.corrcoef(torch.stack([out.flatten(), loud.flatten()]))[0, 1] > 0.99


def test_spectral_mask_rejects_bad_options_and_gradients_reach_the_mask():
    with pytest.raises(ConfigError, match="n_fft"):
        create_generator(None, AUDIO, 4, n_fft=250)
    with pytest.raises(ConfigError, match="max_gain_db"):
        create_generator(None, AUDIO, 4, max_gain_db=0.0)
    gen = create_generator(None, AUDIO, 4)
    gen(voiced(2, 200.0), torch.randn(2, 4)).pow(2).sum().backward()
    assert float(gen.net.head.weight.grad.abs().sum()) > 0
    assert float(gen.net.noise.proj.weight.grad.abs().sum()) > 0  # the noise input is used


def random_label_features(n: int = 96, d: int = 48, seed: int = 0) -> ArrayDataset:
    """Labels independent of the inputs: any above-chance accuracy is memorisation."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    labels = np.stack([rng.permutation(np.arange(n) % 2), rng.integers(0, 3, n)], 1)
    schema = Schema("features", (Attribute("gender", ("f", "m")), Attribute("useful", ("a", "b", "c"))), (d,))
    return ArrayDataset(schema, x, labels)


def test_cross_fit_folds_are_balanced_and_seeded():
    f = cross_fit_folds(101, seed=3)
    assert sorted(np.bincount(f).tolist()) == [50, 51]
    assert np.array_equal(f, cross_fit_folds(101, seed=3)) and not np.array_equal(f, cross_fit_folds(101, seed=4))
    # grouped (people): every person in exactly one fold, both folds used
    people = np.repeat(np.arange(6), 5)
    g = cross_fit_folds(30, seed=0, groups=people)
    assert all(len(set(g[people == p])) == 1 for p in range(6))
    assert sorted(np.bincount(g).tolist()) == [15, 15]


def test_cross_fitted_samples_are_scored_by_the_other_folds_adversary():
    class Const(torch.nn.Module):
        def __init__(self, value):
            super().__init__()
            self.value = value
            self.w = torch.nn.Parameter(torch.zeros(()))

        def forward(self, x):
            return torch.full((len(x), 2), float(self.value)) + self.w

    data = random_label_features()
    budgets = resolve_budgets(data.schema, data.labels, ["gender"], [], {})
    task = MaSSTask(torch.nn.Linear(1, 1), torch.nn.Identity(), {("gender", "linear", 0): Const(0.0),
                                                               ("gender", "linear", 1): Const(1.0)},
                    data.schema, budgets, 0, 1e-3, 1e-3, 0.0)
    fold = torch.tensor([0, 1, 0, 1])
    logits = task._scored_logits(task.groups[("gender", "linear")], torch.zeros(4, 3), fold)
    # fold-0 samples get the fold-1 classifier's output (1.0) and vice versa
    assert logits[:, 0].tolist() == [1.0, 0.0, 1.0, 0.0]


def test_cross_fitting_measures_held_out_not_memorised_leakage():
    # random labels: an MLP adversary memorises its training samples (training accuracy near 1),
    # but a sample scored by the copy that never trained on it sits near chance
    data = random_label_features()
    common = dict(suppress=["gender"], preserve=[], adversaries=["mlp"], epochs=2, pretrain_epochs=30, batch_size=32,
                  lr=1e-9, classifier_lr=1e-3, nce_weight=0.0, noise_dim=0, seed=0)
    plain = MaSS(**common).fit(data)
    crossed = MaSS(cross_fit=True, **common).fit(data)
    assert {"gender-mlp@0", "gender-mlp@1"} == set(crossed.classifiers_)
    assert np.mean([h["acc_gender_mlp"] for h in plain.history_]) > 0.9
    assert abs(np.mean([h["heldout_acc_gender_mlp"] for h in crossed.history_]) - 0.5) < 0.2
    with pytest.raises(ConfigError, match="cross_fit needs"):
        MaSS(cross_fit=True, **common).fit(data.subset(np.arange(3)))


def test_mass_with_spectral_generator_saves_and_loads(tmp_path):
    f0 = np.where(np.arange(16) % 2 == 0, 120.0, 220.0)
    x = torch.cat([voiced(1, f, seed=i) for i, f in enumerate(f0)]).numpy()
    data = ArrayDataset(AUDIO, x, (np.arange(16) % 2)[:, None])
    mass = MaSS(suppress=["y"], adversaries=["linear"], epochs=1, pretrain_epochs=0, batch_size=8, cross_fit=True,
                track_scaler=True, calibrate=True).fit(data)
    out = mass.transform(torch.as_tensor(x[:4]))
    assert out.shape == (4, 1, 2000) and float(out.abs().max()) < 1
    mass.save(tmp_path / "t")
    loaded = MaSS.load(tmp_path / "t")
    assert loaded.generator_.privkit_spec["architecture"] == "spectral-mask"
    assert torch.equal(loaded.transform(torch.as_tensor(x[:4])), out)


@torch.no_grad()
def test_frequency_warp_moves_partials_by_the_factor_and_starts_at_identity():
    t = torch.arange(8000) / RATE
    x = (0.3 * torch.sin(2 * np.pi * 500 * t) + 0.2 * torch.sin(2 * np.pi * 1200 * t)).view(1, 1, 8000)
    gen = SpectralMaskGenerator(4, max_warp=0.5, additive=0.0, init_scale=0.0)
    assert torch.allclose(gen(x, torch.randn(1, 4)), x, atol=1e-5)  # the warp head starts at alpha = 1
    for logit in (10.0, -10.0):  # saturated: alpha = exp(+-0.5)
        gen.net.global_head.bias.fill_(logit)
        spectrum = torch.fft.rfft(gen(x, torch.randn(1, 4))[0, 0]).abs()  # 1 Hz bins (1 s at 8 kHz)
        peaks = sorted(spectrum.topk(2).indices.tolist())
        alpha = float(np.exp(0.5 * np.tanh(logit)))
        assert peaks == pytest.approx([500 * alpha, 1200 * alpha], abs=2)
    with pytest.raises(ConfigError, match="max_warp"):
        SpectralMaskGenerator(4, max_warp=-1.0)


def test_calibrated_cross_entropy_exposes_leakage_of_an_overconfident_adversary():
    from privkit.suppress.mass import calibrated_cross_entropy

    torch.manual_seed(0)
    k = 8
    y = torch.randint(0, k, (256,))
    prior = torch.full((k,), 1.0 / k)
    h = float(np.log(k))
    # right and confident on half the samples, confidently random on the rest: 56 % accuracy against
    # chance 12.5 %, yet the plain cross-entropy is far above H(S), so v = min(CE - H, 0) would be 0
    logits = 10 * torch.randn(256, k)
    logits[torch.arange(128), y[:128]] += 40
    plain = float(nn_ce(logits, y))
    calibrated = float(calibrated_cross_entropy(logits, y, prior))
    assert plain > h and calibrated < h - 0.3
    # no information: the mixture cannot go meaningfully below H(S)
    noise = float(calibrated_cross_entropy(10 * torch.randn(256, k), y, prior))
    assert noise > h - 0.05
    # a calibrated, informative classifier: nothing to fix (lambda = 0 is in the grid)
    soft = torch.log(torch.full((256, k), 0.5 / (k - 1)).scatter(1, y.view(-1, 1), 0.5))
    assert float(calibrated_cross_entropy(soft, y, prior)) == pytest.approx(float(nn_ce(soft, y)), abs=1e-5)
    # the gradient reaches the logits
    leaf = logits.clone().requires_grad_(True)
    calibrated_cross_entropy(leaf, y, prior).backward()
    assert float(leaf.grad.abs().sum()) > 0


def nn_ce(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cross_entropy(logits, y)
