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


def _per_sample_reference(mapper: FeatureMapper, features: torch.Tensor) -> torch.Tensor:
    """The mapper as ``nn.Transformer`` runs it: the queries' self-attention once per sample."""
    queries = mapper.queries.unsqueeze(0).expand(features.shape[0], -1, -1)  # (N, Q, W)
    return mapper.out(mapper.transformer(src=mapper.mlp(features), tgt=queries))


def _output_and_grads(mapper: FeatureMapper, forward, features: torch.Tensor):
    mapper.zero_grad()
    x = features.clone().requires_grad_(True)
    out = forward(x)
    out.pow(2).mean().backward()
    return out.detach(), x.grad, {n: p.grad.clone() for n, p in mapper.named_parameters()}


def test_shared_query_attention_equals_the_per_sample_computation_and_its_grads():
    mapper = _mapper(num_encoder_layers=2, num_decoder_layers=2, num_queries=13).train()
    features = torch.randn(5, 8, 24, generator=torch.Generator().manual_seed(2))
    out, x_grad, grads = _output_and_grads(mapper, mapper, features)
    ref_out, ref_x_grad, ref_grads = _output_and_grads(mapper, lambda x: _per_sample_reference(mapper, x), features)
    torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(x_grad, ref_x_grad, rtol=1e-5, atol=1e-7)
    assert grads.keys() == ref_grads.keys()
    for name, grad in grads.items():
        # Summed over the batch in one row's backward instead of N rows': equal up to rounding.
        torch.testing.assert_close(grad, ref_grads[name], rtol=1e-4, atol=1e-6 * float(grad.abs().max()), msg=name)
    with torch.no_grad():
        torch.testing.assert_close(mapper.eval()(features), _per_sample_reference(mapper, features), rtol=1e-5, atol=1e-6)


def test_query_self_attention_runs_once_per_batch_unless_dropout_draws_per_sample():
    rows = []

    def count(module, args, output):
        rows.append(args[0].shape[0])

    mapper = _mapper(num_decoder_layers=2)
    mapper.transformer.decoder.layers[0].self_attn.register_forward_hook(count)
    mapper(torch.randn(6, 8, 24))
    assert rows == [1]  # the second layer's self-attention reads per-sample states
    dropping = _mapper(dropout=0.3).train()
    dropping.transformer.decoder.layers[0].self_attn.register_forward_hook(count)
    features = torch.randn(6, 8, 24)
    torch.manual_seed(3)
    out = dropping(features)
    assert rows == [1, 6]
    torch.manual_seed(3)  # the same dropout masks as nn.Transformer draws, in the same order
    torch.testing.assert_close(out, _per_sample_reference(dropping, features), rtol=1e-5, atol=1e-6)
