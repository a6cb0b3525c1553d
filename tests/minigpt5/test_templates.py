"""Prompt templates: what a CC3M pair, a VIST story and an MMDialog turn encode to, and
which tokens carry text loss, under plain, minigpt4 (the official format) and chat."""

from __future__ import annotations

import io
import re

import pytest
from PIL import Image

from data_modules.shards import SampleCounter, SampleEncoder
from minigpt5.config import ConfigError, LLMConfig, LossConfig, MiniGPT5Config, TemplateConfig
from minigpt5.losses import IGNORE_INDEX
from minigpt5.sequences import SequenceTooLong, Turn
from minigpt5.templates import (
    CAPTION_INSTRUCTIONS, SYSTEM_PROMPTS, Conversation, build_template, caption_conversations, dialogue_roles,
    normalise_caption,
)

K = 2  # placeholder tokens per context image
# A Zephyr-style chat template (HuggingFaceH4/zephyr-7b-beta's layout): its end of turn is </s>.
ZEPHYR = ("{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}{{ eos_token }}\n{% endfor %}"
          "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")
# A ChatML template (Qwen, ...), whose end of turn is its own text, not </s>.
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")

# Texts from the real samples (../shared/samples): CC3M val 000007775, VIST val story 40470,
# MMDialog test conversation 0 (shortened).
CAPTION = "burning candle on the background of the aquarium with small fish ."
STORY = ["my sister arrived early to help me with the family bar bq .", "every one else arrived soon after .",
         "dad manned the grill ."]
DIALOGUE = ["Here's my former hometown Chicago", "Stunning photo Pola.",
            "Lovely photo Doro! Here's my favourite skyline."]
EXAMPLES = {
    "cc3m": Conversation("caption", Turn("", 1), caption=CAPTION),
    "vist": Conversation("story", Turn(STORY[2], 1), [Turn(STORY[0], 1), Turn(STORY[1], 1)]),
    "mmdialog": Conversation("dialogue", Turn(DIALOGUE[2], 1), [Turn(DIALOGUE[0], 1), Turn(DIALOGUE[1], 1)],
                             dialogue_roles(3)),
}
IMGS = "[IMG0][IMG1][IMG2][IMG3][IMG4][IMG5][IMG6][IMG7]"
RUN = "<ImageHere><ImageHere>"


def template(tok, name="plain", text_on_caption=True, chat_template=None, image_tokens=K, **kwargs):
    tokenizer, voken_ids, image_id = tok
    cfg = MiniGPT5Config(template=TemplateConfig(name=name, chat_template=chat_template, **kwargs),
                         loss=LossConfig(text_on_caption=text_on_caption))
    return build_template(cfg, tokenizer, voken_ids, image_id, image_tokens)


def scored(tokenizer, example) -> str:
    """The tokens that carry text loss, decoded."""
    return tokenizer.decode([label for label in example.labels if label != IGNORE_INDEX])


# ---- what each template encodes, decoded back to text ----

SHOWN = [
    ("plain", "cc3m",
     f"<s> {CAPTION}{IMGS}</s>",
     f" {CAPTION}[IMG0]</s>"),  # today's mask: the caption too (loss.text_on_caption, the tiny default)
    ("plain", "vist",
     f"<s> {STORY[0]}{RUN} {STORY[1]}{RUN} {STORY[2]}{IMGS}</s>",
     f" {STORY[2]}[IMG0]</s>"),
    ("plain", "mmdialog",
     f"<s> {DIALOGUE[0]}{RUN} {DIALOGUE[1]}{RUN} {DIALOGUE[2]}{IMGS}</s>",
     f" {DIALOGUE[2]}[IMG0]</s>"),
    ("minigpt4", "cc3m",
     f"<s> {CAPTION}{IMGS} ###",
     "[IMG0] ###"),  # the official mask: the caption is source
    ("minigpt4", "vist",
     f"<s> {SYSTEM_PROMPTS['story']}###Human:{STORY[0]}<Img>{RUN} </Img>{STORY[1]}<Img>{RUN} </Img>\n"
     f" ###Assistant: {STORY[2]}{IMGS} ###",
     f" {STORY[2]}[IMG0] ###"),
    ("minigpt4", "mmdialog",
     f"<s> {SYSTEM_PROMPTS['dialogue']} ###Human: {DIALOGUE[0]} <Img>{RUN} </Img> ###Assistant: {DIALOGUE[1]} "
     f"<Img>{RUN} </Img> ###Human: {DIALOGUE[2]}{IMGS} ###",
     f" {DIALOGUE[2]}[IMG0] ###"),
    ("chat", "cc3m",
     f" <|user|>\n {CAPTION}</s> \n<|assistant|>\n{IMGS}</s>",
     "[IMG0]</s>"),
    ("chat", "vist",
     f" <|user|>\n {STORY[0]}{RUN} {STORY[1]}{RUN}</s> \n<|assistant|>\n {STORY[2]}{IMGS}</s>",
     f" {STORY[2]}[IMG0]</s>"),
    ("chat", "mmdialog",
     f" <|user|>\n {DIALOGUE[0]}{RUN}</s> \n<|assistant|>\n {DIALOGUE[1]}{RUN}</s> \n"
     f"<|user|>\n {DIALOGUE[2]}{IMGS}</s>",
     f" {DIALOGUE[2]}[IMG0]</s>"),
]


@pytest.mark.parametrize("name, example, sequence, loss", SHOWN, ids=[f"{n}-{e}" for n, e, _, _ in SHOWN])
def test_encoded_tokens_and_loss_mask(tok, name, example, sequence, loss):
    """Each example under each template (the byte-level BPE puts a space before every
    separately tokenized piece, as Llama's tokenizer does), and the tokens scored."""
    tokenizer, voken_ids, _ = tok
    t = template(tok, name, text_on_caption=name == "plain", chat_template=ZEPHYR if name == "chat" else None)
    ex = t.encode(EXAMPLES[example], 256)
    assert tokenizer.decode(ex.input_ids) == sequence
    assert scored(tokenizer, ex) == loss
    assert all(label == IGNORE_INDEX for label, i in zip(ex.labels, ex.input_ids) if i in voken_ids[1:])
    if name != "plain":  # plain scores the caption (text_on_caption), which sits before the target
        assert ex.labels[: ex.source_length] == [IGNORE_INDEX] * ex.source_length


def official(layout: str) -> str:
    """The example as the official dataloader builds it (source + target), <ImageHere> as K placeholders."""
    img = f"<Img>{RUN}</Img>"
    if layout == "cc3m":  # dataloader.py 54-55
        return f"<s>{CAPTION}" + f"{IMGS} ###"
    if layout == "vist":  # dataloader.py 260-262, 282-284, with no request (this project's continuation task)
        prompt = f"{STORY[0]}{img}{STORY[1]}{img}\n"
        return f"<s>{SYSTEM_PROMPTS['story']}###Human:{prompt} ###Assistant:" + f"{STORY[2]} {IMGS} ###"
    history = [SYSTEM_PROMPTS["dialogue"], f"###Human: {DIALOGUE[0]}", img, f"###Assistant: {DIALOGUE[1]}", img,
               "###Human:"]  # dataloader.py 371-414
    return "<s>" + " ".join(history) + f"{DIALOGUE[2]} {IMGS} ###"


@pytest.mark.parametrize("example", ["cc3m", "vist", "mmdialog"])
def test_minigpt4_words_examples_as_the_official_dataloader(tok, example):
    """Up to whitespace (pieces are tokenized apart), the minigpt4 template's text is the official string."""
    tokenizer, _, _ = tok
    ex = template(tok, "minigpt4").encode(EXAMPLES[example], 256)
    assert re.sub(r"\s", "", tokenizer.decode(ex.input_ids)) == re.sub(r"\s", "", official(example))


def test_minigpt4_instruction_row_is_the_official_one(tok):
    tokenizer, _, _ = tok
    request = CAPTION_INSTRUCTIONS[6]
    conv = Conversation("caption", Turn("", 1), caption=CAPTION, instruction=request)
    ex = template(tok, "minigpt4", text_on_caption=False).encode(conv, 256)
    # dataloader.py 64-66:
    expected = f"<s>{SYSTEM_PROMPTS['caption']}###Human: {request} {CAPTION} ###Assistant:{IMGS} ###"
    assert re.sub(r"\s", "", tokenizer.decode(ex.input_ids)) == re.sub(r"\s", "", expected)
    assert scored(tokenizer, ex) == "[IMG0] ###"


def test_text_on_caption_false_leaves_the_caption_unscored_under_plain(tok):
    tokenizer, _, _ = tok
    ex = template(tok, "plain", text_on_caption=False).encode(EXAMPLES["cc3m"], 64)
    assert tokenizer.decode(ex.input_ids) == f"<s> {CAPTION}{IMGS}</s>"  # the same tokens
    assert scored(tokenizer, ex) == "[IMG0]</s>"


def test_text_on_caption_true_scores_the_caption_under_minigpt4(tok):
    tokenizer, _, _ = tok
    ex = template(tok, "minigpt4", text_on_caption=True).encode(EXAMPLES["cc3m"], 64)
    assert scored(tokenizer, ex) == f" {CAPTION}[IMG0] ###"


# ---- sources (generation prompts) and end markers ----

@pytest.mark.parametrize("name, ends_with", [("plain", f"{RUN}"), ("minigpt4", "###Human:"), ("chat", "<|user|>\n")])
def test_source_is_everything_before_the_target(tok, name, ends_with):
    tokenizer, _, _ = tok
    t = template(tok, name, chat_template=ZEPHYR if name == "chat" else None)
    ex = t.encode(EXAMPLES["mmdialog"], 256)
    source = t.source_ids(EXAMPLES["mmdialog"])
    assert source == ex.input_ids[: ex.source_length]
    assert tokenizer.decode(source).endswith(ends_with)
    assert tokenizer.decode(ex.input_ids[ex.source_length:]).startswith(f" {DIALOGUE[2]}")


def test_end_markers(tok):
    tokenizer, _, _ = tok
    assert template(tok, "plain").end_marker.ids == (tokenizer.eos_token_id,)
    minigpt4 = template(tok, "minigpt4").end_marker
    assert tokenizer.decode(list(minigpt4.ids)).strip() == "###" and minigpt4.text == "###"
    assert template(tok, "chat", chat_template=ZEPHYR).end_marker.ids == (tokenizer.eos_token_id,)
    chatml = template(tok, "chat", chat_template=CHATML).end_marker
    assert chatml.text == "<|im_end|>" and tokenizer.decode(list(chatml.ids)).strip() == "<|im_end|>"


def test_minigpt4_end_marker_matches_other_encodings_of_its_text(tok):
    """The official stop list holds both encodings of ### (mini_gpt5.py 296-297); here the
    decoded text is matched as well as the ids."""
    tokenizer, _, _ = tok
    end = template(tok, "minigpt4").end_marker
    written = tokenizer("a red circle", add_special_tokens=False).input_ids
    hashes = tokenizer.convert_tokens_to_ids(["#", "#", "#"])  # ### with no leading space: not end.ids
    assert tuple(hashes) != end.ids
    assert not end.ended(tokenizer, written) and end.ended(tokenizer, written + hashes)
    assert end.ended(tokenizer, written + list(end.ids))
    assert end.strip("a red circle ###") == "a red circle" and end.strip("a red circle") == "a red circle"


def test_chat_without_a_chat_template_is_a_clear_error(tok):
    with pytest.raises(ConfigError, match="set template.chat_template"):
        template(tok, "chat")


def test_chat_template_that_drops_content_is_a_clear_error(tok):
    dropping = "{% for m in messages %}<|{{ m['role'] }}|>{{ eos_token }}{% endfor %}"
    with pytest.raises(ConfigError, match="chat template dropped"):
        template(tok, "chat", chat_template=dropping)


def test_chatml_end_of_turn_is_scored(tok):
    tokenizer, _, _ = tok
    ex = template(tok, "chat", chat_template=CHATML).encode(EXAMPLES["vist"], 256)
    assert scored(tokenizer, ex).replace(" ", "") == f"{STORY[2]}[IMG0]<|im_end|>".replace(" ", "")
    assert tokenizer.decode(ex.input_ids[: ex.source_length]).replace(" ", "").endswith("<|im_start|>assistant\n")


# ---- fitting max_length ----

def test_minigpt4_drops_oldest_turns_and_keeps_the_system_prompt(tok):
    tokenizer, _, _ = tok
    t = template(tok, "minigpt4")
    full = t.encode(EXAMPLES["mmdialog"], 1024)
    newest = t.encode(EXAMPLES["mmdialog"].keep_from(1), 1024)
    ex = t.encode(EXAMPLES["mmdialog"], len(newest.input_ids))
    assert len(ex.input_ids) < len(full.input_ids) and ex.truncated and ex.first_context_turn == 1
    assert ex.input_ids == newest.input_ids
    text = tokenizer.decode(ex.input_ids)
    assert SYSTEM_PROMPTS["dialogue"] in text and DIALOGUE[0] not in text
    assert "###Assistant: Stunning photo Pola." in text  # the kept turn keeps its speaker


def test_caption_is_cut_at_its_end_and_too_small_raises(tok):
    tokenizer, voken_ids, _ = tok
    t = template(tok, "minigpt4")
    full = t.encode(EXAMPLES["cc3m"], 256)
    ex = t.encode(EXAMPLES["cc3m"], len(full.input_ids) - 3)
    assert ex.truncated and len(ex.input_ids) == len(full.input_ids) - 3
    assert ex.input_ids[-9:] == full.input_ids[-9:]  # vokens and ### intact
    assert ex.input_ids[:5] == full.input_ids[:5]  # the caption's start survives
    others = len(full.input_ids) - len(tokenizer(CAPTION, add_special_tokens=False).input_ids)
    with pytest.raises(SequenceTooLong, match="no room for the caption"):
        t.encode(EXAMPLES["cc3m"], others)


def test_dialogue_needs_a_role_per_turn():
    with pytest.raises(ValueError, match="role per context turn"):
        Conversation("dialogue", Turn("hi"), [Turn("hello")], ["user"])
    assert dialogue_roles(4) == ["user", "assistant", "user", "assistant"]


# ---- CC3M captions: pre_caption and the instruction rows ----

def test_normalise_caption_is_the_official_pre_caption():
    assert normalise_caption("A Photo: of the \"Cat\"!!  (cute)~ .\n") == "a photo of the cat cute"
    assert normalise_caption("shot of the full tree .") == "shot of the full tree"
    assert normalise_caption("it's a dog, isn't it?") == "it's a dog, isn't it?"  # , ' ? are kept


def test_one_key_in_instruction_every_gets_an_instruction_row():
    cfg = TemplateConfig(name="minigpt4", instruction_every=100)
    rows = {f"{i:09d}": caption_conversations("a cat", f"{i:09d}", cfg) for i in range(5000)}
    with_request = [r for r in rows.values() if len(r) == 2]
    assert 25 <= len(with_request) <= 75  # about 1 in 100
    assert {r[1].instruction for r in with_request} == set(CAPTION_INSTRUCTIONS)  # each request is used
    assert all(r[0].instruction == "" and r[1].caption == "a cat" for r in with_request)
    assert all(len(r) == 1 for r in (caption_conversations("a cat", k, TemplateConfig()) for k in rows))


def _instruction_key(cfg: TemplateConfig) -> str:
    """A key that ``cfg`` gives an instruction row."""
    return next(f"{i:09d}" for i in range(1000) if len(caption_conversations("x", f"{i:09d}", cfg)) == 2)


def _sample(key: str, caption: str) -> dict:
    jpg = io.BytesIO()
    Image.new("RGB", (16, 16), "red").save(jpg, format="JPEG")
    return {"__key__": key, "jpg": jpg.getvalue(), "txt": caption.encode()}


def test_paper_caption_encoding_normalises_and_adds_instruction_rows():
    cfg = MiniGPT5Config(llm=LLMConfig(max_length=256), loss=LossConfig(text_on_caption=False),
                         template=TemplateConfig(name="minigpt4", normalise_captions=True, instruction_every=100))
    encoder = SampleEncoder(cfg, SampleCounter())
    items = encoder(_sample(_instruction_key(cfg.template), "Burning candle, on the Aquarium."))
    assert len(items) == 2 and [i["caption"] for i in items] == ["burning candle, on the aquarium"] * 2
    plain_row, instruction_row = (encoder.tokenizer.decode(i["example"].input_ids) for i in items)
    assert plain_row == f"<s> burning candle, on the aquarium{IMGS} ###"
    assert instruction_row.startswith(f"<s> {SYSTEM_PROMPTS['caption']}###Human:")
    assert "burning candle, on the aquarium ###Assistant:" in instruction_row
    batch = encoder.collate(items)
    assert batch["captions"] == ["burning candle, on the aquarium"] * 2  # the CAP target is normalised too


def test_instruction_row_too_long_for_max_length_is_skipped_and_counted():
    cfg = MiniGPT5Config(llm=LLMConfig(max_length=64), template=TemplateConfig(name="minigpt4", instruction_every=100))
    counter = SampleCounter()
    items = SampleEncoder(cfg, counter)(_sample(_instruction_key(cfg.template), "a cat"))
    assert len(items) == 1 and counter.skipped == 1  # the system prompt alone is longer than 64 tokens here


def test_tiny_default_encodes_captions_as_before():
    encoder = SampleEncoder(MiniGPT5Config(), SampleCounter())
    key = _instruction_key(TemplateConfig(instruction_every=100))  # one the paper preset gives a second row
    items = encoder(_sample(key, "A Cat."))
    assert len(items) == 1 and items[0]["caption"] == "A Cat."
    assert encoder.tokenizer.decode(items[0]["example"].input_ids) == f"<s> A Cat.{IMGS}</s>"


# ---- evaluation contexts follow the template ----

def test_free_response_reads_the_template_source(monkeypatch, tiny_config):
    """A dialogue item's free response is written after the template's source: under
    minigpt4 the history ends with the next speaker's marker (turn 2 is the user's)."""
    import dataclasses

    from evaluation import systems
    from evaluation.items import EvalItem
    from minigpt5.generate import GenerationConfig
    from minigpt5.model import MiniGPT5

    cfg = dataclasses.replace(tiny_config, template=TemplateConfig(name="minigpt4"), llm=LLMConfig(max_length=256))
    model = MiniGPT5(cfg)  # the system prompt alone is 120 tiny-BPE tokens
    seen = {}

    def fake_generate(model, ids, pixels, gen):
        seen["ids"] = ids
        return type("R", (), {"text": "", "images": []})()

    monkeypatch.setattr(systems, "generate_from_ids", fake_generate)
    item = EvalItem("d", 2, DIALOGUE[2], [], [(DIALOGUE[0], []), (DIALOGUE[1], [])], layout="dialogue")
    systems.MiniGPT5System(model, GenerationConfig(max_new_tokens=8), context="text").respond(item)
    text = model.tokenizer.decode(seen["ids"])
    assert text.startswith(f"<s> {SYSTEM_PROMPTS['dialogue']} ###Human: {DIALOGUE[0]} ###Assistant: {DIALOGUE[1]}")
    assert text.endswith("###Human:") and DIALOGUE[2] not in text


# ---- presets ----

def test_paper_preset_uses_the_official_wording_and_the_tiny_one_todays():
    from pathlib import Path

    from lit_models.plan import read_settings

    root = Path(__file__).resolve().parents[2]

    def model(*files):
        return read_settings([a for f in files for a in ("-c", str(root / "configs" / f))]).model

    stage1, stage2 = ("uas.yaml", "model/paper.yaml"), ("uas.yaml", "mls.yaml", "mls_vist.yaml", "model/paper.yaml")
    for paper in (model(*stage1), model(*stage2)):
        assert paper.template == TemplateConfig(name="minigpt4", normalise_captions=True, instruction_every=100)
        assert paper.loss.text_on_caption is False
    tiny = model("uas.yaml", "model/tiny.yaml", "demo.yaml")
    assert tiny.template == TemplateConfig() and tiny.template.name == "plain" and tiny.loss.text_on_caption is True
