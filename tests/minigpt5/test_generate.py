"""Interleaved generation: forced images, KV cache = recompute, seeds, training positions, outputs, CLI."""

from __future__ import annotations

import dataclasses
import html
import json
from typing import Callable

import numpy as np
import pytest
import torch
from PIL import Image

from minigpt5.config import GuidanceConfig, MiniGPT5Config, PeftSettings, TemplateConfig, VisionConfig
from lit_models.pages import write_outputs
from minigpt5.generate import GenerationConfig, choose_token, encode_prompt, generate, penalised_ids
from minigpt5.images import to_target_tensor
from minigpt5.model import MiniGPT5
from minigpt5.templates import SYSTEM_PROMPTS
from minigpt5.vision import normalise_for_tower

STEPS = 2  # diffusion steps: the image path is exercised, not judged


def _build(**kwargs) -> MiniGPT5:
    torch.manual_seed(0)  # the mapper and projection are initialised from the global RNG
    cfg = MiniGPT5Config(vision=VisionConfig(kind="clip"), guidance=GuidanceConfig(num_inference_steps=STEPS), **kwargs)
    return MiniGPT5(cfg).eval()


@pytest.fixture(scope="module")
def model() -> MiniGPT5:
    """Tiny model with a CLIP tower: generated images are read back as context."""
    return _build()


def force_images(monkeypatch, model: MiniGPT5, at_calls: set[int]) -> Callable[[], None]:
    """Make ``[IMG0]`` the only choice at the given LLM calls (call 0 reads the prompt, and
    before any image call i predicts written token i), by boosting its logit at the last position."""
    original = model.vokens.extend_logits
    calls = {"n": 0}

    def extend_logits(hidden, base_logits):
        logits = original(hidden, base_logits)
        if calls["n"] in at_calls:
            logits[..., -1, model.voken_ids[0]] += 1e4
        calls["n"] += 1
        return logits

    monkeypatch.setattr(model.vokens, "extend_logits", extend_logits)

    def reset():
        calls["n"] = 0

    return reset


def greedy(**kwargs) -> GenerationConfig:
    return GenerationConfig(temperature=0, **{"max_new_tokens": 20, "min_new_tokens": 20, **kwargs})


def full_forward_features(model: MiniGPT5, result) -> torch.Tensor:
    ids = torch.tensor([result.sequence_ids])  # (1, T)
    with torch.no_grad():
        _, hidden = model.llm_forward(ids, torch.ones_like(ids), result.context_pixels)
    return model.voken_features(ids, hidden)  # (N, n, D)


# ---- images in the story ----

def test_forced_voken_draws_an_image_and_text_goes_on(model, monkeypatch):
    k = 3
    force_images(monkeypatch, model, {k})
    result = generate(model, "a red circle", None, greedy())

    ids, vokens = result.token_ids, model.voken_ids
    assert ids[k:k + 8] == vokens  # [IMG0] sampled, the other seven appended
    assert not set(ids[:k]) & set(vokens) and not set(ids[k + 8:]) & set(vokens)
    assert len(ids) == 20 and len(ids[k + 8:]) == 20 - k - 8  # text continues after the block
    res = model.cfg.diffusion.resolution
    assert [type(s) for s in result.segments] == [str, Image.Image, str]
    assert result.images[0].size == (res, res) and result.images[0].mode == "RGB"
    assert len(result.voken_features) == 1 and result.voken_features[0].shape == (8, model.llm.config.hidden_size)
    # The image is read back as context in place of its voken block, as stage-2 training
    # contexts hold earlier images: its <ImageHere> run follows the text before [IMG0].
    p = result.prompt_length + k
    run = model.vision.num_tokens
    assert result.sequence_ids[p:p + run] == [model.image_token_id] * run
    assert not set(result.sequence_ids) & set(vokens)
    size = model.vision.image_size
    assert result.context_pixels.shape == (1, 3, size, size)
    assert result.stopped == "max_new_tokens"


def test_without_vision_tower_the_image_is_not_fed_back(tiny_model, monkeypatch):
    tiny_model.cfg.guidance.num_inference_steps = STEPS
    force_images(monkeypatch, tiny_model, {2})
    result = generate(tiny_model, "a red circle", None, greedy(max_new_tokens=14, min_new_tokens=14))
    assert len(result.images) == 1 and result.context_pixels is None
    assert result.sequence_ids == result.sequence_ids[:result.prompt_length] + result.token_ids
    expected = full_forward_features(tiny_model, result)
    torch.testing.assert_close(torch.stack(result.voken_features), expected, atol=1e-5, rtol=1e-5)


def test_voken_features_are_the_training_positions(model, monkeypatch):
    """What generation hands the mapper is what ``MiniGPT5.voken_features`` reads in training:
    for each image, a full forward over the context it was drawn in, followed by its vokens."""
    force_images(monkeypatch, model, {1, 13})
    result = generate(model, "a red circle", None, greedy(max_new_tokens=30, min_new_tokens=30))
    assert len(result.images) == 2
    runs = [i for i, t in enumerate(result.sequence_ids)
            if t == model.image_token_id and result.sequence_ids[i - 1] != model.image_token_id]
    assert len(runs) == 2  # each drawn image sits in the context where its vokens were
    for index, start in enumerate(runs):
        ids = torch.tensor([result.sequence_ids[:start] + model.voken_ids])  # (1, T)
        pixels = result.context_pixels[:index] if index else None
        with torch.no_grad():
            _, hidden = model.llm_forward(ids, torch.ones_like(ids), pixels)
        expected = model.voken_features(ids, hidden)[0]  # (n, D)
        torch.testing.assert_close(result.voken_features[index], expected, atol=1e-5, rtol=1e-5)


# ---- KV cache ----

# PEFT's prefix tuning passes its prefix as ``past_key_values``, a name transformers now deprecates.
@pytest.mark.filterwarnings("ignore:`past_key_values` is deprecated:FutureWarning")
@pytest.mark.parametrize("peft", [None, "lora", "prefix"])
def test_kv_cache_matches_recompute_under_greedy(model, monkeypatch, peft):
    if peft is not None:
        model = _build(peft=PeftSettings(method=peft, num_virtual_tokens=4))
        with torch.no_grad():  # an untrained adapter is a no-op (LoRA B = 0): make it count
            for p in model.llm.parameters():
                if p.requires_grad:
                    p.add_(0.1 * torch.randn_like(p))
    reset = force_images(monkeypatch, model, {4})
    cached = generate(model, "a blue square", None, greedy(use_cache=True))
    reset()
    recomputed = generate(model, "a blue square", None, greedy(use_cache=False))
    assert cached.token_ids == recomputed.token_ids
    assert model.voken_ids[0] in cached.token_ids and cached.token_ids.index(model.voken_ids[0]) == 4
    features = [torch.stack(r.voken_features) for r in (cached, recomputed)]
    torch.testing.assert_close(*features, atol=1e-5, rtol=1e-5)
    a, b = (np.asarray(r.images[0], dtype=np.int16) for r in (cached, recomputed))
    assert np.abs(a - b).max() <= 1


# ---- seeds ----

def test_same_seed_same_story_other_seed_another(model, monkeypatch):
    reset = force_images(monkeypatch, model, {5})

    def run(seed: int):
        reset()
        return generate(model, "a green star", None, GenerationConfig(max_new_tokens=20, min_new_tokens=20, seed=seed))

    first, again, other = run(7), run(7), run(8)
    assert first.token_ids == again.token_ids
    assert np.array_equal(np.asarray(first.images[0]), np.asarray(again.images[0]))
    assert first.token_ids != other.token_ids
    assert not np.array_equal(np.asarray(first.images[0]), np.asarray(other.images[0]))


# ---- prompts with input images ----

def _picture(colour: tuple[int, int, int], size=(40, 24)) -> Image.Image:
    return Image.new("RGB", size, colour)


def test_prompt_image_markers_take_the_input_images(model):
    images = [_picture((255, 0, 0)), _picture((0, 0, 255), (20, 30))]
    ids, pixels = encode_prompt(model, "a <image> then <image> and", images)
    run = [model.image_token_id] * model.vision.num_tokens
    assert ids[0] == model.tokenizer.bos_token_id and ids.count(model.image_token_id) == 2 * len(run)
    size = model.vision.image_size
    expected = normalise_for_tower(torch.stack([to_target_tensor(im, size) for im in images]), size)
    torch.testing.assert_close(pixels, expected)

    cfg = greedy(max_new_tokens=6, min_new_tokens=6, max_images=0)
    result = generate(model, "a <image> then <image> and", images, cfg)
    assert result.sequence_ids[:result.prompt_length] == ids and len(result.token_ids) == 6
    torch.testing.assert_close(result.context_pixels, expected)
    swapped = generate(model, "a <image> then <image> and", images[::-1], cfg)
    assert not torch.equal(result.context_pixels, swapped.context_pixels)


def test_wrong_number_of_images_is_a_clear_error(model, tiny_model):
    with pytest.raises(ValueError, match=r"2 <image> marker\(s\) but 1 image\(s\)"):
        generate(model, "<image> and <image>", [_picture((1, 2, 3))])
    with pytest.raises(ValueError, match=r"0 <image> marker\(s\) but 1 image\(s\)"):
        generate(model, "no marker", [_picture((1, 2, 3))])
    with pytest.raises(ValueError, match="vision tower"):
        generate(tiny_model, "<image>", [_picture((1, 2, 3))])
    with pytest.raises(ValueError, match="voken"):
        generate(model, "sneaky [IMG0] here", None)


# ---- decoding rules ----

def test_choose_token_rules():
    logits = torch.tensor([1.0, 3.0, 2.0, 0.5])
    assert choose_token(logits, GenerationConfig(temperature=0), banned=[]) == 1
    assert choose_token(logits, GenerationConfig(do_sample=False), banned=[1]) == 2
    g = torch.Generator().manual_seed(0)
    nucleus = GenerationConfig(top_p=0.01)
    assert {choose_token(logits, nucleus, banned=[], generator=g) for _ in range(20)} == {1}
    # Penalised repeats: a positive logit is divided, so token 1 (3 -> 1) falls below token 2.
    penalised = GenerationConfig(temperature=0, repetition_penalty=3.0)
    assert choose_token(logits, penalised, banned=[], seen=torch.tensor([1])) == 2
    with pytest.raises(ValueError, match="top_p"):
        GenerationConfig(top_p=0)


def test_top_p_keeps_the_smallest_set_reaching_p_as_hf_does():
    """p = (0.5, 0.3, 0.15, 0.05): at top_p 0.9 (the official value) the nucleus is the first
    three (0.8 < 0.9 <= 0.95), so the 0.05 token is never drawn; without top-p it is."""
    from transformers import TopPLogitsWarper

    logits = torch.tensor([0.5, 0.3, 0.15, 0.05]).log()
    g = torch.Generator().manual_seed(0)
    nucleus = {choose_token(logits, GenerationConfig(top_p=0.9), banned=[], generator=g) for _ in range(400)}
    assert nucleus == {0, 1, 2}
    kept = torch.isfinite(TopPLogitsWarper(0.9)(torch.zeros(1, 0, dtype=torch.long), logits[None].clone()))[0]
    assert kept.nonzero().flatten().tolist() == sorted(nucleus)  # HF's warper keeps the same tokens
    everything = {choose_token(logits, GenerationConfig(top_p=1.0), banned=[], generator=g) for _ in range(400)}
    assert everything == {0, 1, 2, 3}


def test_penalised_ids_generated_only_or_whole_context():
    vokens, vocab = [10, 11, 12], 13
    sequence = [0, 4, 5, 6, 9, 9, 3, 10, 11, 12, 7]  # prompt (0 .. 9 9: <ImageHere> run) then written tokens
    written = [3, 10, 11, 12, 7]
    generated = GenerationConfig(repetition_penalty=2.0)
    assert penalised_ids(generated, written, sequence, vokens, vocab) == [3, 7, 10, 11, 12]  # [IMG0] counts, as in HF
    context = GenerationConfig(repetition_penalty=2.0, penalty_scope="context")
    assert penalised_ids(context, written, sequence, vokens, vocab) == [0, 3, 4, 5, 6, 7, 9]
    with pytest.raises(ValueError, match="penalty_scope"):
        GenerationConfig(penalty_scope="prompt")


def test_repetition_penalty_over_generated_tokens_leaves_prompt_words_free(model, monkeypatch):
    """The prompt's last word is the favourite, a second word the runner-up. Penalising only
    generated tokens (the official code) writes the favourite, then the runner-up; penalising the
    whole context (prompt included) writes the runner-up first."""
    favourite = encode_prompt(model, "a red circle")[0][-1]
    runner_up = next(t for t in range(5, 50) if t not in encode_prompt(model, "a red circle")[0])
    original = model.vokens.extend_logits

    def boosted(hidden, base_logits):
        logits = original(hidden, base_logits)
        logits[..., -1, favourite] += 50.0
        logits[..., -1, runner_up] += 40.0  # 40 > (50 + noise) / 5
        return logits

    monkeypatch.setattr(model.vokens, "extend_logits", boosted)
    cfg = greedy(max_new_tokens=2, min_new_tokens=2, repetition_penalty=5.0, max_images=0)
    assert generate(model, "a red circle", None, cfg).token_ids == [favourite, runner_up]
    context = generate(model, "a red circle", None, dataclasses.replace(cfg, penalty_scope="context"))
    assert context.token_ids[0] == runner_up
    off = generate(model, "a red circle", None, dataclasses.replace(cfg, repetition_penalty=1.0))
    assert off.token_ids == [favourite, favourite]


def _image_logit(monkeypatch, model: MiniGPT5, boost: float) -> None:
    original = model.vokens.extend_logits

    def shifted(hidden, base_logits):
        logits = original(hidden, base_logits)
        logits[..., -1, model.voken_ids[0]] += boost
        return logits

    monkeypatch.setattr(model.vokens, "extend_logits", shifted)


def test_force_image_writes_the_first_image_first_whatever_the_logits(model, monkeypatch):
    _image_logit(monkeypatch, model, -1e4)  # the model would never draw
    vokens = model.voken_ids
    assert not set(generate(model, "a red circle", None, greedy(max_new_tokens=12)).token_ids) & set(vokens)
    forced = generate(model, "a red circle", None, greedy(max_new_tokens=12, force_image=True))
    assert forced.token_ids[:8] == vokens and len(forced.images) == 1  # only until one is drawn
    assert not set(forced.token_ids[8:]) & set(vokens) and len(forced.token_ids) == 12
    with pytest.raises(ValueError, match="force_image"):
        GenerationConfig(force_image=True, max_images=0)


def test_max_images_suppresses_or_limits_drawing(model, monkeypatch):
    _image_logit(monkeypatch, model, 1e4)  # the model would draw at every step
    assert len(generate(model, "a red circle", None, greedy(max_new_tokens=20)).images) == 3  # blocks at 0, 8, 16
    none = generate(model, "a red circle", None, greedy(max_new_tokens=12, max_images=0))
    assert none.images == [] and not set(none.token_ids) & set(model.voken_ids) and len(none.token_ids) == 12
    one = generate(model, "a red circle", None, greedy(max_new_tokens=20, max_images=1))
    assert len(one.images) == 1 and one.token_ids.count(model.voken_ids[0]) == 1


def test_eos_stops_and_min_new_tokens_holds_it(model, monkeypatch):
    eos = model.tokenizer.eos_token_id
    original = model.vokens.extend_logits

    def eos_first(hidden, base_logits):
        logits = original(hidden, base_logits)
        logits[..., -1, eos] += 1e4
        return logits

    monkeypatch.setattr(model.vokens, "extend_logits", eos_first)
    assert generate(model, "a cat", None, greedy(min_new_tokens=0)).token_ids == [eos]
    held = generate(model, "a cat", None, greedy(max_new_tokens=10, min_new_tokens=3))
    assert held.token_ids[-1] == eos and len(held.token_ids) == 4 and held.stopped == "eos"


def test_a_turn_ends_after_its_image_when_the_state_after_the_vokens_says_so(model, monkeypatch):
    """Training ends a target turn with </s> right after [IMG7]: that state decides, before the
    image would be read back as context."""
    eos, vokens = model.tokenizer.eos_token_id, model.voken_ids
    original = model.vokens.extend_logits
    calls = {"n": 0}

    def image_then_eos(hidden, base_logits):
        logits = original(hidden, base_logits)
        if calls["n"] == 2:  # predicting the 3rd written token: [IMG0]
            logits[..., -1, vokens[0]] += 1e4
        if calls["n"] == 3:  # the feed of the voken block: its last state predicts </s>
            logits[..., -1, eos] += 1e4
        calls["n"] += 1
        return logits

    monkeypatch.setattr(model.vokens, "extend_logits", image_then_eos)
    result = generate(model, "a red circle", None, greedy(min_new_tokens=0))
    assert result.token_ids[2:] == vokens + [eos] and result.stopped == "eos"
    assert [type(s) for s in result.segments] == [str, Image.Image] and result.context_pixels is None


# ---- outputs ----

def test_write_outputs_html_pngs_and_record(model, monkeypatch, tmp_path):
    force_images(monkeypatch, model, {2})
    result = generate(model, "look <b>&</b>: <image>", [_picture((0, 255, 0))], greedy(max_new_tokens=14))
    paths = write_outputs(result, tmp_path / "out")

    assert [p.name for p in paths.images] == ["image_000.png"]
    with Image.open(paths.images[0]) as png:
        assert np.array_equal(np.asarray(png.convert("RGB")), np.asarray(result.images[0]))
    page = paths.html.read_text(encoding="utf-8")
    assert page.count('src="data:image/png;base64,') == 2  # the input image and the generated one
    assert "look &lt;b&gt;&amp;&lt;/b&gt;:" in page and "<b>&" not in page
    text_segments = [s for s in result.segments if isinstance(s, str)]
    assert text_segments and all(html.escape(s).replace("\n", "<br>\n") in page for s in text_segments)
    assert page.index("image_000.png") > page.index(html.escape(text_segments[0]))  # in story order
    record = json.loads(paths.record.read_text())
    assert record["seed"] == 42 and record["settings"]["num_inference_steps"] == STEPS
    assert record["settings"]["guidance_scale"] == model.cfg.guidance.scale
    assert {"image": "image_000.png"} in record["segments"]
    assert record["token_ids"] == result.token_ids


# ---- command line ----

def test_cli_tiny_writes_the_files(tmp_path, capsys):
    from lit_models.cli import main

    picture = tmp_path / "in.png"
    _picture((200, 100, 0)).save(picture)
    out = tmp_path / "story"
    argv = ["generate", "--tiny", "--prompt", "a <image> and", "--image", str(picture), "--out", str(out),
            "--max-new-tokens", "6", "--steps", "2", "--seed", "3", "--temperature", "0.8", "--top-p", "0.9"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert str(out / "story.html") in printed and str(out / "record.json") in printed
    record = json.loads((out / "record.json").read_text())
    assert record["seed"] == 3 and record["settings"]["top_p"] == 0.9 and record["num_input_images"] == 1
    assert "data:image/png;base64," in (out / "story.html").read_text()

    assert main(["generate", "--tiny", "--prompt", "<image>", "--out", str(out)]) == 2
    assert "1 <image> marker(s) but 0 image(s)" in capsys.readouterr().err


# ---- the template's end marker stops generation ----

def force_tokens(monkeypatch, model: MiniGPT5, at_calls: dict[int, int]) -> None:
    """Make token ``at_calls[i]`` the only choice at LLM call i (see :func:`force_images`)."""
    original = model.vokens.extend_logits
    calls = {"n": 0}

    def extend_logits(hidden, base_logits):
        logits = original(hidden, base_logits)
        if calls["n"] in at_calls:
            logits[..., -1, at_calls[calls["n"]]] += 1e4
        calls["n"] += 1
        return logits

    monkeypatch.setattr(model.vokens, "extend_logits", extend_logits)


@pytest.fixture(scope="module")
def minigpt4_model() -> MiniGPT5:
    """Tiny model (CLIP tower) under the official template: prompts wrapped, ### ends a turn."""
    return _build(template=TemplateConfig(name="minigpt4"))


def test_minigpt4_prompt_is_a_human_turn_before_the_assistant(minigpt4_model):
    model = minigpt4_model
    ids, _ = encode_prompt(model, "a red circle <image> then", [Image.new("RGB", (8, 8), "red")])
    run = "<ImageHere>" * model.vision.num_tokens
    expected = f"<s>{SYSTEM_PROMPTS['story']}###Human:a red circle<Img>{run}</Img>then\n ###Assistant:"
    assert model.tokenizer.decode(ids).replace(" ", "") == expected.replace(" ", "")


def test_minigpt4_generation_stops_at_the_end_marker_and_drops_it(minigpt4_model, monkeypatch):
    model, tok = minigpt4_model, minigpt4_model.tokenizer
    end = model.template.end_marker
    words = tok("a red circle", add_special_tokens=False).input_ids
    force_tokens(monkeypatch, model, {i: t for i, t in enumerate(words + list(end.ids))})
    result = generate(model, "draw", None, greedy(max_new_tokens=40, min_new_tokens=0))
    assert result.stopped == "eos" and result.token_ids == words + list(end.ids)
    assert result.text == "a red circle" and "#" not in result.text


def test_minigpt4_after_an_image_the_end_marker_ends_the_turn(minigpt4_model, monkeypatch):
    """As training puts ### right after a target's voken block, the state after [IMG7] decides."""
    model, vokens = minigpt4_model, minigpt4_model.voken_ids
    end = model.template.end_marker
    force_tokens(monkeypatch, model, {0: vokens[0], 1: end.ids[0]})  # call 1 reads the voken block
    result = generate(model, "draw", None, greedy(max_new_tokens=40, min_new_tokens=0))
    assert result.token_ids == vokens + list(end.ids) and result.stopped == "eos"
    assert len(result.images) == 1 and [type(s) for s in result.segments] == [Image.Image]


def test_min_new_tokens_masks_the_end_marker(minigpt4_model, monkeypatch):
    model = minigpt4_model
    end = model.template.end_marker
    force_tokens(monkeypatch, model, {0: end.ids[0]})
    result = generate(model, "draw", None, greedy(max_new_tokens=6, min_new_tokens=6))
    assert result.token_ids[0] != end.ids[0] and result.stopped == "max_new_tokens"
