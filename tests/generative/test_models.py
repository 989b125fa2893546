"""I2I operators mask what they say; both model families train; the i2i artifact round-trips."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from privkit.data.datasets import ArrayDataset
from privkit.data.schema import Attribute, Schema
from privkit.errors import ArtifactError, ConfigError
from privkit.generative.models import create_i2i, list_i2i_models
from privkit.generative.tasks import create_operator, list_operators
from privkit.generative.train import I2IConfig, load_i2i, reconstruction_loss, train_i2i
from privkit.train import LoopConfig


def blobs(n=96, seed=0, size=8):
    """Two classes of 8x8 images: a bright square top-left or bottom-right, plus noise."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 0.2, size=(n, 1, size, size)).astype(np.float32)
    y = rng.integers(0, 2, size=n)
    h = size // 2
    for i in range(n):
        if y[i]:
            x[i, 0, h:, h:] += 0.7
        else:
            x[i, 0, :h, :h] += 0.7
    schema = Schema("image", (Attribute("shape", ("tl", "br")),), (1, size, size))
    return ArrayDataset(schema, np.clip(x, 0, 1), y[:, None])


def test_center_crop_hides_exactly_the_centre_square():
    op = create_operator("center-crop", 0.5)
    x = torch.rand(3, 2, 8, 8) + 0.1  # strictly positive: a zero means hidden
    t = op(x)
    assert t.shape == (3, 3, 8, 8)
    hidden = t[:, -1]
    expected = torch.zeros(8, 8)
    expected[2:6, 2:6] = 1
    assert torch.equal(hidden[0], expected) and torch.equal(hidden[2], expected)
    assert torch.all(t[:, :2][:, :, 2:6, 2:6] == 0)
    keep = expected == 0
    assert torch.equal(t[:, :2][..., keep], x[..., keep])


def test_outpaint_keeps_only_the_centre_and_pixel_mask():
    op = create_operator("outpaint", 4)  # 4 px square kept on a 10x10 image
    x = torch.rand(2, 1, 10, 10) + 0.1
    t = op(x)
    visible = t[:, -1] == 0
    assert int(visible[0].sum()) == 16
    assert visible[0, 3:7, 3:7].all()
    assert torch.equal(t[:, 0][visible], x[:, 0][visible])
    assert torch.all(t[:, 0][~visible] == 0)
    # composite keeps the visible pixels of the input and the generated ones elsewhere
    gen = torch.full_like(x, 0.5)
    comp = op.composite(x, gen)
    assert torch.equal(comp[:, 0][visible], x[:, 0][visible]) and torch.all(comp[:, 0][~visible] == 0.5)


@pytest.mark.parametrize("name", ["center-crop", "outpaint"])
@pytest.mark.parametrize("mask", [9, 8, 0, -0.5, 2.5])
def test_bad_masks_are_config_errors(name, mask):
    with pytest.raises(ConfigError):
        create_operator(name, mask).check((1, 8, 8))


def test_mask_larger_than_the_image_names_it():
    with pytest.raises(ConfigError, match="larger than the 8x8 image"):
        create_operator("center-crop", 12).check((1, 8, 8))
    with pytest.raises(ConfigError, match="unknown I2I operator"):
        create_operator("blur", 0.5)
    assert list_operators() == ["center-crop", "outpaint"]


def test_reconstruction_loss_matches_a_direct_computation():
    torch.manual_seed(0)
    out, x = torch.rand(4, 1, 8, 8), torch.rand(4, 1, 8, 8)
    m = create_operator("center-crop", 0.5).mask_for(x)
    hidden = ((out - x)[..., 2:6, 2:6] ** 2).mean()
    whole = ((out - x) ** 2).mean()
    assert torch.allclose(reconstruction_loss(out, x, m, 0.3), hidden + 0.3 * whole)


@pytest.mark.parametrize("name", ["mae-tiny", "unet"])
def test_both_families_expose_encoder_decoder_and_train(name):
    ds = blobs()
    op = create_operator("center-crop", 0.5)
    torch.manual_seed(0)
    model = create_i2i(name, ds.schema.input_shape)
    assert hasattr(model, "encoder") and hasattr(model, "decoder")
    x, _ = ds.materialize()
    out = model(op(x[:5]))
    assert out.shape == (5, 1, 8, 8) and out.min() >= 0 and out.max() <= 1
    assert model.embed(op(x[:5])).shape[0] == 5
    model, history = train_i2i(model, ds, op, I2IConfig(lr=5e-3), LoopConfig(epochs=10, batch_size=32, seed=0,
                                                                            progress=False))
    assert history[-1]["loss"] < 0.6 * history[0]["loss"], history


def test_registry_and_defaults_depend_on_image_size():
    assert set(list_i2i_models()) >= {"mae-tiny", "unet"}
    assert create_i2i("mae-tiny", (1, 8, 8)).privkit_spec["kwargs"]["patch"] == 2
    assert create_i2i("mae-tiny", (1, 64, 64)).privkit_spec["kwargs"]["patch"] == 8
    assert create_i2i("mae-tiny", (1, 112, 92)).privkit_spec["kwargs"]["patch"] == 4  # ORL: must tile both sides
    out = create_i2i("unet", (1, 112, 92))(torch.rand(2, 2, 112, 92))
    assert out.shape == (2, 1, 112, 92)
    with pytest.raises(ConfigError, match="unknown I2I model"):
        create_i2i("vae", (1, 8, 8))
    with pytest.raises(ConfigError, match="patch 3"):
        create_i2i("mae-tiny", (1, 8, 8), patch=3)


def test_i2i_artifact_round_trips_and_refuses_a_classifier(tmp_path):
    from privkit.generative.train import train_i2i_run

    ds = blobs(120)
    run = train_i2i_run("blobs", tmp_path / "m", model_name="unet", epochs=1, batch_size=32, progress=False, dataset=ds)
    model, op, meta = load_i2i(run)
    assert meta["kind"] == "i2i" and meta["operator"] == {"name": "center-crop", "mask": 0.5}
    for key in ("data", "size", "data_seed", "val_fraction", "test_fraction", "operator", "mask", "epochs"):
        assert key in meta["config"]
    x, _ = ds.materialize()
    torch.manual_seed(0)
    again = create_i2i(meta["architecture"], meta["input_shape"], **meta["kwargs"])
    again.load_state_dict(model.state_dict())
    assert torch.equal(again(op(x[:4])), model(op(x[:4])))
    # a classifier run is not an I2I model
    from privkit.classify import train_run

    clf = train_run("blobs", "shape", tmp_path / "clf", model_name="mlp", epochs=1, progress=False, dataset=ds)
    with pytest.raises(ArtifactError, match="not an image-to-image model"):
        load_i2i(clf)
