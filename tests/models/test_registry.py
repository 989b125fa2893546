import pytest
import torch

from privkit.data.schema import Attribute, Schema
from privkit.errors import ConfigError, SchemaError
from privkit.models import create, list_models
from privkit.models.registry import model_entry

SHAPES = {"image": (1, 28, 28), "audio": (1, 4000), "motion": (6, 64), "features": (12,)}


@pytest.mark.parametrize("name", list_models())
def test_every_registered_model_builds_and_runs_on_its_modalities(name):
    for modality in model_entry(name).modalities:
        schema = Schema(modality, (Attribute("y", ("a", "b", "c")),), SHAPES[modality], sample_rate=8000)
        model = create(name, schema, 3)
        model.eval()
        out = model(torch.rand(2, *SHAPES[modality]))
        assert out.shape == (2, 3)
        assert isinstance(model.head, torch.nn.Linear)
        out.sum().backward()
        assert all(p.grad is not None for p in model.head.parameters())


def test_unknown_model_and_wrong_modality():
    with pytest.raises(ConfigError, match="known models"):
        create("nope", Schema("features", (Attribute("y", ("a", "b")),), (3,)), 2)
    with pytest.raises(SchemaError, match="takes image"):
        create("cnn", Schema("features", (Attribute("y", ("a", "b")),), (3,)), 2)


def test_group_norm_variant_has_no_batchnorm():
    s = Schema("image", (Attribute("y", ("a", "b")),), (1, 16, 16))
    m = create("cnn", s, 2, norm="group")
    assert not any(isinstance(x, torch.nn.BatchNorm2d) for x in m.modules())
