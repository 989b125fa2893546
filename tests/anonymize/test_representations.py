"""Representations: encode to fixed-length rows and decode back to samples."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from privkit.anonymize import BiometricAnonymizer, available_representations, get_representation, representation_from_dict
from privkit.errors import SchemaError

SAMPLE_RATE, NUM_SAMPLES = 8000, 4000


def tones(batch: int = 3, seed: int = 0) -> torch.Tensor:
    """Harmonic tones with different pitches and a bell-shaped envelope, plus a little noise."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(NUM_SAMPLES) / SAMPLE_RATE
    envelope = torch.exp(-((t - 0.25) ** 2) / 0.01)
    waves = []
    for b in range(batch):
        f0 = 150.0 + 90.0 * b
        wave = sum(torch.sin(2 * math.pi * f0 * h * t) / h for h in (1, 2, 3))
        waves.append(0.3 * envelope * wave + 0.005 * torch.randn(NUM_SAMPLES, generator=g))
    return torch.stack(waves)[:, None, :]


def test_every_modality_is_registered_and_unknown_ones_are_schema_errors():
    assert {"image", "audio", "motion", "features", "flatten"} <= set(available_representations())
    with pytest.raises(SchemaError, match="no representation for modality 'video'"):
        get_representation("video", (3, 8, 8))


def test_image_round_trip_and_clipping():
    rep = get_representation("image", (3, 4, 5))
    x = torch.rand(6, 3, 4, 5, generator=torch.Generator().manual_seed(0))
    z = rep.encode(x)
    assert z.shape == (6, 60) and z.dtype == np.float32
    torch.testing.assert_close(rep.decode(z), x, rtol=0, atol=0)
    z[0, :5] = 2.0
    z[1, :5] = -1.0
    decoded = rep.decode(z)
    assert decoded.max() <= 1.0 and decoded.min() >= 0.0 and decoded.reshape(6, -1)[0, :5].eq(1.0).all()


def test_motion_and_features_round_trips_are_exact():
    motion = get_representation("motion", (6, 32))
    x = torch.randn(4, 6, 32, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(motion.decode(motion.encode(x)), x, rtol=0, atol=0)
    np.testing.assert_array_equal(motion.encode(x)[1], x[1].reshape(-1).numpy())  # channel-major
    features = get_representation("features", (10,))
    f = np.random.default_rng(0).normal(size=(5, 10)).astype(np.float32)
    np.testing.assert_array_equal(features.encode(f), f)
    with pytest.raises(SchemaError, match="1-D"):
        get_representation("features", (2, 5))
    with pytest.raises(SchemaError, match="expects"):
        motion.encode(torch.zeros(2, 6, 31))
    with pytest.raises(SchemaError, match=r"\(B, 192\)"):
        motion.decode(np.zeros((2, 191)))


def test_audio_log_mel_round_trip_keeps_the_spectral_envelope():
    rep = get_representation("audio", (1, NUM_SAMPLES), sample_rate=SAMPLE_RATE)
    x = tones()
    z = rep.encode(x)
    assert z.shape == (3, rep.dim) and rep.dim == rep.n_mels * rep.frames and np.isfinite(z).all()
    audio = rep.decode(z)
    assert audio.shape == x.shape
    z_back = rep.encode(audio)
    for b in range(len(x)):
        assert np.corrcoef(z[b], z_back[b])[0, 1] > 0.8
        # and each inverted clip is closest to its own original, not to another pitch
        own = np.corrcoef(z[b], z_back[b])[0, 1]
        assert all(own > np.corrcoef(z[o], z_back[b])[0, 1] for o in range(len(x)) if o != b)
    torch.testing.assert_close(rep.decode(z), audio)  # deterministic decoding


def test_audio_spec_round_trip_and_sample_rate_required():
    rep = get_representation("audio", (1, NUM_SAMPLES), sample_rate=SAMPLE_RATE, n_mels=32, n_iter=8)
    again = representation_from_dict(rep.to_dict())
    np.testing.assert_array_equal(again.encode(tones(1)), rep.encode(tones(1)))
    with pytest.raises(SchemaError, match="sample_rate"):
        get_representation("audio", (1, NUM_SAMPLES))
    with pytest.raises(SchemaError, match=r"\(1, T\)"):
        get_representation("audio", (2, NUM_SAMPLES), sample_rate=SAMPLE_RATE)


def test_anonymizer_on_audio_releases_waveforms(tmp_path):
    rep = get_representation("audio", (1, NUM_SAMPLES), sample_rate=SAMPLE_RATE, n_mels=32, n_iter=8)
    x = torch.cat([tones(3, seed=s) * (0.5 + 0.1 * s) for s in range(4)])  # 12 clips
    speaker = np.repeat(np.arange(4), 3)
    digit = np.tile(np.arange(3), 4) % 2
    est = BiometricAnonymizer(k=2, representation=rep).fit(x, digit, speaker)
    released = est.transform(x, digit, speaker)
    assert isinstance(released, torch.Tensor) and released.shape == x.shape and torch.isfinite(released).all()
    est.save(tmp_path / "anon")
    loaded = BiometricAnonymizer.load(tmp_path / "anon")
    assert loaded.representation_.to_dict() == rep.to_dict()
    torch.testing.assert_close(loaded.transform(x, digit, speaker), released)
