"""Feature mapper: shapes, per-sample independence, gradients."""

from __future__ import annotations

import torch

from minigpt5.config import MapperConfig
from minigpt5.mapper import FeatureMapper


def _mapper(**kwargs) -> FeatureMapper:
    torch.manual_seed(0)
    return FeatureMapper(MapperConfig(**kwargs), llm_hidden=24, cross_attention_dim=40)


def test_output_shape_and_queries():
    mapper = _mapper(num_queries=13)
    out = mapper(torch.randn(5, 8, 24))
    assert out.shape == (5, 13, 40)
    assert mapper.queries.shape == (13, 64)
    assert torch.isfinite(out).all()
    assert _mapper()(torch.randn(2, 8, 24)).shape == (2, 77, 40)  # SD's sequence length by default


def test_samples_are_independent_and_input_dependent():
    mapper = _mapper().eval()
    x = torch.randn(4, 8, 24, generator=torch.Generator().manual_seed(1))
    full = mapper(x)
    torch.testing.assert_close(mapper(x[2:3]), full[2:3], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(full[0], full[1])
    # Queries differ, so the Q outputs of one sample differ from each other.
    assert not torch.allclose(full[0, 0], full[0, 1])


def test_null_features_give_one_shared_embedding():
    mapper = _mapper().eval()
    out = mapper(torch.zeros(3, 8, 24))
    torch.testing.assert_close(out[0], out[1])
    torch.testing.assert_close(out[0], out[2])


def test_gradients_reach_every_mapper_parameter():
    mapper = _mapper(num_encoder_layers=2, num_decoder_layers=2)
    x = torch.randn(3, 8, 24, requires_grad=True)
    mapper(x).pow(2).mean().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for name, p in mapper.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
