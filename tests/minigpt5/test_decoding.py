"""Decoding presets: one resolver behind `minigpt5 generate`, `minigpt5 eval` and the evaluation callback."""

from __future__ import annotations

import dataclasses

import pytest

from callbacks.evaluation import EvaluationCallback
from evaluation.items import PROTOCOLS, decoding_preset
from lit_models import eval_cli, generate_cli
from minigpt5.decoding import resolve_decoding


def test_official_preset_is_the_authors_sampling():
    official = resolve_decoding("official")
    assert (official.temperature, official.top_p, official.repetition_penalty) == (1.0, 0.9, 2.0)
    assert official.penalty_scope == "generated" and not official.greedy
    assert (official.min_new_tokens, official.max_new_tokens) == (1, 256)
    assert (official.guidance_scale, official.num_inference_steps) == (7.5, 50)
    assert official.sampler is None  # the sampler is the model's (guidance.sampler)


def test_world_preset_is_greedy_without_penalty_and_keeps_the_models_guidance():
    world = resolve_decoding("world")
    assert world.greedy and world.repetition_penalty == 1.0 and world.max_new_tokens == 32
    assert world.guidance_scale is None and world.num_inference_steps is None
    assert [decoding_preset(p) for p in PROTOCOLS] == ["official", "official", "official", "world", "world"]


def test_overrides_win_none_keeps_the_preset_and_bad_names_raise():
    cfg = resolve_decoding("official", top_p=0.5, repetition_penalty=None, penalty_scope="context")
    assert (cfg.top_p, cfg.repetition_penalty, cfg.penalty_scope) == (0.5, 2.0, "context")
    with pytest.raises(ValueError, match="decoding preset must be one of official, world"):
        resolve_decoding("paper")
    with pytest.raises(TypeError, match="topp"):
        resolve_decoding("official", topp=0.9)
    with pytest.raises(ValueError, match="top_p"):
        resolve_decoding("official", top_p=0.0)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_generate_eval_and_the_callback_decode_alike(protocol):
    """With no decoding flag set, the three callers resolve to the same GenerationConfig."""
    from_eval = eval_cli.decoding_config(
        eval_cli.build_parser().parse_args(["--ckpt", "x.ckpt", "--protocol", protocol, "--shards", "x.tar"]))
    from_callback = EvaluationCallback(extractors="tiny").generation_config(protocol)
    from_generate = generate_cli.generation_config(generate_cli.build_parser().parse_args(
        ["--tiny", "--prompt", "hi", "--decoding", decoding_preset(protocol)]))
    assert from_eval == from_callback == from_generate == resolve_decoding(decoding_preset(protocol))


def test_flags_and_callback_arguments_reach_the_config():
    args = eval_cli.build_parser().parse_args(
        ["--ckpt", "x.ckpt", "--protocol", "vist", "--shards", "x.tar", "--top-p", "0.7",
         "--penalty-scope", "context", "--sampler", "dpm++", "--steps", "9"])
    expected = dataclasses.replace(resolve_decoding("official"), top_p=0.7, penalty_scope="context",
                                   sampler="dpm++", num_inference_steps=9)
    assert eval_cli.decoding_config(args) == expected
    callback = EvaluationCallback(extractors="tiny", top_p=0.7, penalty_scope="context", num_inference_steps=9)
    assert callback.generation_config("vist") == dataclasses.replace(expected, sampler=None)
    gen = generate_cli.generation_config(generate_cli.build_parser().parse_args(
        ["--tiny", "--prompt", "hi", "--top-p", "0.7", "--force-image", "--greedy", "--sampler", "pndm"]))
    assert gen.top_p == 0.7 and gen.force_image and gen.greedy and gen.sampler == "pndm"
    with pytest.raises(ValueError, match="top_p"):
        EvaluationCallback(extractors="tiny", top_p=1.5)

