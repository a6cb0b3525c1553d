"""The chat's logic without a browser: per-reply options, the conversation as context (the
model's own pictures included), the HTML page, and ``minigpt5 chat``'s model loading."""

from __future__ import annotations

import sys

import pytest
import torch
from PIL import Image

from lit_models import chat_cli
from lit_models.chat import ChatEngine, TurnOptions, chat_html, save_chat_html, turn_config
from minigpt5.config import MiniGPT5Config, VisionConfig
from minigpt5.decoding import resolve_decoding
from minigpt5.generate import GenerationConfig
from minigpt5.images import to_target_tensor
from minigpt5.model import MiniGPT5
from minigpt5.vision import normalise_for_tower

FAST = dict(max_new_tokens=12, num_inference_steps=2)  # a short reply, a quick picture


@pytest.fixture(scope="module")
def engine() -> ChatEngine:
    torch.manual_seed(0)
    return ChatEngine(MiniGPT5(MiniGPT5Config(vision=VisionConfig(kind="clip"))), resolve_decoding("official", **FAST))


def red_square() -> Image.Image:
    return Image.new("RGB", (24, 24), (220, 20, 20))


def test_turn_config_maps_the_draw_choice_and_keeps_unset_options():
    base = GenerationConfig(max_images=2, seed=7, guidance_scale=3.0)
    drawn = turn_config(base, TurnOptions("draw", seed=1, num_inference_steps=5, sampler="ddim"))
    assert (drawn.force_image, drawn.max_images, drawn.seed, drawn.num_inference_steps, drawn.sampler) == (
        True, 2, 1, 5, "ddim")
    assert drawn.guidance_scale == 3.0  # unset: the engine's
    assert turn_config(GenerationConfig(max_images=0), TurnOptions("draw")).max_images is None  # 0 forbids it
    none = turn_config(GenerationConfig(force_image=True), TurnOptions("none"))
    assert (none.force_image, none.max_images) == (False, 0)
    auto = turn_config(GenerationConfig(force_image=True, max_images=3), TurnOptions("auto"))
    assert (auto.force_image, auto.max_images, auto.seed) == (False, 3, 42)
    with pytest.raises(ValueError, match="draw must be one of"):
        TurnOptions("always")


def test_defaults_fill_in_the_model_guidance(engine):
    defaults = engine.defaults
    guidance = engine.model.cfg.guidance
    assert (defaults.seed, defaults.guidance_scale, defaults.num_inference_steps, defaults.sampler) == (
        42, 7.5, 2, guidance.sampler)


def test_draw_and_no_image_choices_decide_the_picture(engine):
    drawn = engine.reply([], "a red square please", options=TurnOptions("draw", seed=3)).reply
    assert len(drawn.images) >= 1 and isinstance(drawn.segments[0], Image.Image)  # [IMG0] written first
    assert drawn.settings["seed"] == 3 and drawn.settings["force_image"]
    text_only = engine.reply([], "a red square please", options=TurnOptions("none", seed=3)).reply
    assert text_only.images == [] and text_only.text


def test_a_reply_reads_the_whole_conversation_with_its_pictures(engine):
    first = engine.reply([], "hello there", [red_square()], TurnOptions("draw", seed=1))
    history = [first]
    second = engine.reply(history, "and once more", options=TurnOptions("auto", seed=2))
    assert history == [first]  # the caller's history is left as it was
    result = second.reply
    tok = engine.model.tokenizer
    prompt = tok.decode(result.sequence_ids[: result.prompt_length], skip_special_tokens=True)
    for said in ("hello there", "and once more", first.reply.text):
        assert " ".join(said.split()) in " ".join(prompt.split())
    # The context images, in order: the user's attached square, then the model's own picture.
    size = engine.model.vision.image_size
    expected = normalise_for_tower(torch.stack([to_target_tensor(im, size) for im in
                                                [red_square(), first.reply.images[0]]]), size)
    assert torch.allclose(result.context_pixels[:2], expected, atol=1e-5)
    placeholders = result.sequence_ids[: result.prompt_length].count(engine.model.image_token_id)
    assert placeholders == 2 * engine.model.vision.num_tokens


def test_the_same_seed_and_history_give_the_same_reply(engine):
    first = engine.reply([], "tell me a story", options=TurnOptions("draw", seed=5))
    again = engine.reply([], "tell me a story", options=TurnOptions("draw", seed=5))
    assert again.reply.token_ids == first.reply.token_ids
    assert [im.tobytes() for im in again.reply.images] == [im.tobytes() for im in first.reply.images]
    other = engine.reply([], "tell me a story", options=TurnOptions("draw", seed=6))
    assert other.reply.token_ids != first.reply.token_ids


def test_bad_messages_are_refused_clearly(engine):
    with pytest.raises(ValueError, match="write a message or attach an image"):
        engine.reply([], "   ")
    with pytest.raises(ValueError, match="may not contain the image placeholder or voken tokens"):
        engine.reply([], "sneak in [IMG0] here")
    text_only = ChatEngine(MiniGPT5(MiniGPT5Config()), GenerationConfig(**FAST))  # no vision tower: stage 1
    with pytest.raises(ValueError, match="no vision tower"):
        text_only.reply([], "look", [red_square()])
    reply = text_only.reply([], "look", options=TurnOptions("draw")).reply  # text still works, and draws
    assert len(reply.images) >= 1


def test_the_page_is_self_contained_and_holds_every_turn(engine, tmp_path):
    first = engine.reply([], "hello <there> & welcome", [red_square()], TurnOptions("draw", seed=1))
    second = engine.reply([first], "and again", options=TurnOptions("none", seed=2))
    page = chat_html([first, second])
    assert "hello &lt;there&gt; &amp; welcome" in page and "and again" in page
    assert "You (1)" in page and "MiniGPT-5 (2)" in page
    assert page.count('src="data:image/png;base64,') == 1 + len(first.reply.images)  # attached + drawn
    assert "http" not in page.replace("http-equiv", "")  # nothing fetched from elsewhere
    assert "force_image=True" in page and "max_images=0" in page  # each reply's settings
    path = save_chat_html([first, second], tmp_path / "deep" / "chat.html")
    assert path.read_text(encoding="utf-8") == page


def test_model_flag_loads_a_model_folder_as_generate_does(engine, tmp_path):
    engine.model.save_pretrained(tmp_path / "folder")
    args = chat_cli.build_parser().parse_args(["--model", str(tmp_path / "folder"), "--device", "cpu"])
    loaded = chat_cli.build_engine(args).model
    assert loaded.vision is not None
    for (name, mine), theirs in zip(engine.model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(mine, theirs), name


def test_chat_without_gradio_says_how_to_install_it(monkeypatch, capsys):
    monkeypatch.delitem(sys.modules, "lit_models.chat_app", raising=False)
    monkeypatch.setitem(sys.modules, "gradio", None)  # as if the chat extra were not installed
    assert chat_cli.main(["--tiny"]) == 2
    assert "pip install -e '.[chat]'" in capsys.readouterr().err


def test_chat_is_served_on_this_machine_only_unless_shared():
    args = chat_cli.build_parser().parse_args(["--ckpt", "last.ckpt"])
    assert (args.host, args.share) == ("127.0.0.1", False)
    with pytest.raises(SystemExit):
        chat_cli.build_parser().parse_args(["--ckpt", "a.ckpt", "--tiny"])  # one model source
