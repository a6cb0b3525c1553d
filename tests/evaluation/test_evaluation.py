"""`minigpt5 eval`, the systems it runs and the evaluation callback, on tiny models and extractors."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import types
from pathlib import Path

import lightning
import numpy as np
import pytest
import torch
from PIL import Image

from callbacks.evaluation import EvaluationCallback
from data_modules.synthetic import write_synthetic
from data_modules.turn_choices import TurnChoices
from minigpt5.task_prompts import VIST_IMAGE_PROMPT
from evaluation.extractors import tiny_extractors
from evaluation.image_metrics import clip_image_embeddings, fid
from evaluation.items import EvalItem, detect_protocol, read_items
from evaluation.protocols import ProtocolOptions, _uint8, run_protocol
from evaluation.sweep_chart import sweep_of
from evaluation.systems import MiniGPT5System, StableDiffusionBaseline, item_seed, target_prompt
from lit_models.cli import main
from lit_models.module import MiniGPT5Module
from minigpt5.config import ConfigError, MiniGPT5Config, VisionConfig
from minigpt5.generate import GenerationConfig, GenerationResult
from minigpt5.images import to_pil_images

STEPS = "2"  # diffusion steps: the metrics' plumbing, not image quality, is under test


def save_checkpoint(path: Path, config: MiniGPT5Config) -> Path:
    """An untrained module saved as a trainable-weights checkpoint, as training writes them."""
    torch.manual_seed(0)
    module = MiniGPT5Module(config=config)
    keys = module.trainable_keys()
    torch.save({"state_dict": {k: v for k, v in module.state_dict().items() if k in keys},
                "hyper_parameters": dict(module.hparams), "pytorch-lightning_version": lightning.__version__}, path)
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("eval")
    return {layout: write_synthetic(root / layout, num=1, val_num=val, size=16, seed=0, layout=layout).val
            for layout, val in (("pairs", 6), ("stories", 2), ("dialogues", 2))}


@pytest.fixture(scope="module")
def stage1_ckpt(tmp_path_factory) -> Path:
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "stage1.ckpt", MiniGPT5Config())


@pytest.fixture(scope="module")
def stage2_ckpt(tmp_path_factory) -> Path:
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "stage2.ckpt", MiniGPT5Config(vision=VisionConfig(kind="clip")))


def run_eval(args: list[str], out: Path) -> dict:
    assert main(["eval", *args, "--extractors", "tiny", "--steps", STEPS, "--no-progress", "--out", str(out)]) == 0
    assert (out / "results.md").is_file()
    return json.loads((out / "results.json").read_text())


def finite_metrics(row: dict, names: tuple[str, ...]) -> None:
    for name in names:
        value = row["metrics"][name]
        assert isinstance(value, float) and math.isfinite(value), (row["system"], name, value)


@pytest.mark.slow
def test_cc3m_eval_with_sd2_baseline_and_guidance_sweep(stage1_ckpt, data, tmp_path):
    results = run_eval(["--ckpt", str(stage1_ckpt), "--protocol", "cc3m", "--shards", data["pairs"], "--draw", "forced",
                        "--systems", "minigpt5", "sd2", "--guidance-scale", "1", "7.5"], tmp_path)
    assert results["draw"].startswith("forced")
    assert results["checkpoint"]["sha256"] == hashlib.sha256(stage1_ckpt.read_bytes()).hexdigest()
    run = [r for r in results["rows"] if r["kind"] == "run"]
    assert [(r["system"], r["settings"]["guidance_scale"]) for r in run] == [
        ("MiniGPT-5", 1.0), ("Stable Diffusion 2", 1.0), ("MiniGPT-5", 7.5), ("Stable Diffusion 2", 7.5)]
    for row in run:
        finite_metrics(row, ("fid", "clean_fid", "is", "clip_i", "clip_t"))
        assert row["metrics"]["items"] == 6 and Path(row["samples"]).is_file()
        assert row["metrics"]["drawn"] == {"value": 1.0, "hits": 6, "count": 6}  # teacher-forced: every item
        assert row["settings"]["num_inference_steps"] == 2 and row["settings"]["seed"] == 42
        assert row["settings"]["draw"] == "forced"
    # Sweep rows are distinct runs: guidance changes the images, so the scores move.
    assert run[0]["metrics"]["fid"] != run[2]["metrics"]["fid"]
    assert run[0]["metrics"]["clip_i"] != run[1]["metrics"]["clip_i"]  # and MiniGPT-5 is not SD2
    quoted = [r for r in results["rows"] if r["kind"] == "quoted"]
    assert [r["system"] for r in quoted] == ["MiniGPT-5 (published)", "GILL"]
    assert "not retrieved" in (tmp_path / "results.md").read_text()  # their CC3M figures are not in quoted.yaml
    # The sweep as a picture next to results.md, shown there: a panel per metric, a line per system.
    assert results["guidance_sweep"] == "![each metric against guidance scale](guidance_sweep.png)"
    assert results["guidance_sweep"] in (tmp_path / "results.md").read_text()
    with Image.open(tmp_path / "guidance_sweep.png") as plot:
        assert plot.format == "PNG"
        plot.load()
    sweep = sweep_of(results["rows"])
    assert sweep.scales == [1.0, 7.5] and {"fid", "clip_i", "clip_t"} <= set(sweep.metrics)
    assert all(set(lines) == {"MiniGPT-5", "Stable Diffusion 2"} for lines in sweep.metrics.values())


@pytest.mark.slow
def test_vist_eval_per_story_fid_and_context_modes(stage2_ckpt, data, tmp_path):
    both = run_eval(["--ckpt", str(stage2_ckpt), "--protocol", "vist", "--shards", data["stories"], "--draw", "forced",
                     "--vist-prompt", "none", "--systems", "minigpt5", "sd2", "--sd2-text", "story"], tmp_path / "both")
    for row in (r for r in both["rows"] if r["kind"] == "run"):
        finite_metrics(row, ("fid", "clean_fid", "fid_per_story", "is", "clip_i", "clip_t"))
        assert row["metrics"]["items"] == 6 and row["metrics"]["stories_scored"] == 2  # 2 stories x 3 steps
    text = run_eval(["--ckpt", str(stage2_ckpt), "--protocol", "vist", "--shards", data["stories"], "--draw", "forced",
                     "--context", "text", "--targets", "last"], tmp_path / "text")
    row = text["rows"][0]
    assert text["context"] == "text" and row["metrics"]["items"] == 2
    assert row["metrics"]["fid_per_story"] is None and row["metrics"]["stories_skipped"] == 2  # one step each


@pytest.mark.slow
def test_mmdialog_eval_scores_text_and_images(stage2_ckpt, data, tmp_path):
    results = run_eval(["--ckpt", str(stage2_ckpt), "--protocol", "mmdialog", "--shards", data["dialogues"],
                        "--max-new-tokens", "12"], tmp_path)
    row = results["rows"][0]
    assert row["metrics"]["items"] == 6 and row["metrics"]["dialogues"] == 2  # 3 responses per 4-turn dialogue
    finite_metrics(row, ("bleu1", "bleu2", "rouge_l", "sbert", "clip_f1"))
    assert len(row["examples"]) == 6 and all(isinstance(e["response"], str) for e in row["examples"])
    assert row["metrics"]["drawn"]["count"] == 6
    assert [r["system"] for r in results["rows"] if r["kind"] == "quoted"] == ["Divter", "MiniGPT-5 (published)"]
    assert results["clip_f1"].startswith("official") and results["bleu"] == "over words"
    assert results["speakers"] == "both"
    other = run_eval(["--ckpt", str(stage2_ckpt), "--protocol", "mmdialog", "--shards", data["dialogues"],
                      "--max-new-tokens", "12", "--clip-f1", "image", "--bleu", "chars", "--speakers", "assistant"],
                     tmp_path / "other")
    assert other["clip_f1"].startswith("image") and "characters" in other["bleu"]
    # The assistant's turns alone (1 and 3 of each dialogue): the same responses (same seeds) there,
    # scored by the other definitions.
    assert other["speakers"] == "assistant" and other["rows"][0]["metrics"]["items"] == 4
    responses = {(e["group"], e["step"]): e["response"] for e in row["examples"]}
    assert [e["step"] for e in other["rows"][0]["examples"]] == [1, 3, 1, 3]
    assert all(e["response"] == responses[e["group"], e["step"]] for e in other["rows"][0]["examples"])
    assert other["rows"][0]["metrics"]["bleu1"] != row["metrics"]["bleu1"]


@pytest.mark.slow
def test_free_drawing_is_the_default_and_reports_the_share_drawn(stage1_ckpt, data, tmp_path):
    results = run_eval(["--ckpt", str(stage1_ckpt), "--protocol", "cc3m", "--shards", data["pairs"],
                        "--max-new-tokens", "4"], tmp_path)
    row = results["rows"][0]
    assert results["draw"].startswith("free") and row["settings"]["draw"] == "free"
    drawn = row["metrics"]["drawn"]
    assert drawn["count"] == row["metrics"]["items"] == 6 and drawn["value"] == drawn["hits"] / 6
    assert [e["images"] for e in row["examples"]].count(1) == drawn["hits"]  # what each item wrote and drew
    table = (tmp_path / "results.md").read_text()
    assert "| drawn |" in table and f"({drawn['hits']}/6)" in table


def test_forced_drawing_is_refused_where_responses_are_scored(stage2_ckpt, data, tmp_path, capsys):
    assert main(["eval", "--ckpt", str(stage2_ckpt), "--protocol", "mmdialog", "--shards", data["dialogues"],
                 "--draw", "forced", "--extractors", "tiny", "--out", str(tmp_path)]) == 2
    assert "--draw forced is for cc3m and vist" in capsys.readouterr().err


def test_eval_with_real_extractors_offline_names_the_missing_file(stage1_ckpt, data, tmp_path, capsys):
    assert main(["eval", "--ckpt", str(stage1_ckpt), "--protocol", "cc3m", "--shards", data["pairs"],
                 "--out", str(tmp_path)]) == 2
    assert "weights-inception-2015-12-05-6726825d.pth" in capsys.readouterr().err


def test_eval_refuses_context_images_without_a_tower(stage1_ckpt, data, tmp_path, capsys):
    assert main(["eval", "--ckpt", str(stage1_ckpt), "--protocol", "vist", "--shards", data["stories"],
                 "--extractors", "tiny", "--out", str(tmp_path)]) == 2
    assert "no vision tower" in capsys.readouterr().err


# ---- the systems ----


@pytest.fixture(scope="module")
def model(stage2_ckpt):
    return MiniGPT5Module.from_checkpoint(str(stage2_ckpt)).model.eval()


def test_teacher_forced_draw_is_the_captions_generation(model):
    image = torch.zeros(3, 16, 16)
    item = EvalItem("k", 0, "a red circle", to_pil_images(image[None]))
    system = MiniGPT5System(model, GenerationConfig(num_inference_steps=2, seed=5))
    drawn = system.draw(item)
    generator = torch.Generator().manual_seed(item_seed(5, item))
    expected = model.generate_images(["a red circle"], num_inference_steps=2, generator=generator)
    assert np.array_equal(np.asarray(drawn), np.asarray(to_pil_images(expected)[0]))


def test_sd2_baseline_reads_the_text_and_shares_the_items_noise(model, data):
    items = list(read_items(data["stories"], "vist"))
    target = StableDiffusionBaseline(model, text="target", num_inference_steps=2)
    story = StableDiffusionBaseline(model, text="story", num_inference_steps=2)
    assert story.prompt(items[2]) == " ".join([items[0].text, items[1].text, items[2].text])
    assert target.prompt(items[2]) == items[2].text
    first, again = target.draw(items[1]), target.draw(items[1])
    assert np.array_equal(np.asarray(first), np.asarray(again))  # seeded per item
    assert not np.array_equal(np.asarray(first), np.asarray(story.draw(items[1])))  # the prompt conditions the image
    with pytest.raises(ConfigError, match="target' or 'story"):
        StableDiffusionBaseline(model, text="caption")


def _shifted(image: Image.Image) -> Image.Image:
    """A stand-in generated image that differs from its ground truth."""
    return Image.fromarray(255 - np.asarray(image.convert("RGB")))


class EveryOther:
    """A free-drawing stand-in: draws (the inverted ground truth) on every other item it sees."""

    name = "every other"

    def __init__(self) -> None:
        self.seen = 0

    def draw_free(self, item: EvalItem) -> tuple[str, list[Image.Image]]:
        self.seen += 1
        return ("a picture", [_shifted(item.images[0])]) if self.seen % 2 else ("no picture", [])


def test_free_drawing_scores_only_the_items_drawn_cc3m_fid_against_every_item_unpadded():
    rng = np.random.default_rng(0)
    items = [EvalItem(f"k{i}", 0, f"caption {i}", [Image.fromarray(rng.integers(0, 256, (12, 20, 3), dtype=np.uint8))])
             for i in range(6)]  # wide images: padding them changes their features
    ex = tiny_extractors()
    run = run_protocol(EveryOther(), items, "cc3m", ex, 16, progress=False)
    metrics = run.metrics
    assert metrics["drawn"] == {"value": 0.5, "hits": 3, "count": 6} and metrics["items"] == 6
    drawn = items[::2]
    fakes = ex.fid_features(_uint8([_shifted(i.images[0]) for i in drawn], 16)).double()
    every_real = ex.fid_features(_uint8([i.images[0] for i in items], 16, pad=False)).double()
    assert metrics["fid"] == pytest.approx(fid(every_real, fakes))
    padded_drawn = ex.fid_features(_uint8([i.images[0] for i in drawn], 16)).double()
    assert metrics["fid"] != pytest.approx(fid(padded_drawn, fakes))
    fake_emb = clip_image_embeddings(ex.clip, [_shifted(i.images[0]) for i in drawn], ex.clip_processor)
    real_emb = clip_image_embeddings(ex.clip, [i.images[0] for i in drawn], ex.clip_processor)
    assert metrics["clip_i"] == pytest.approx(float((fake_emb * real_emb).sum(-1).mean()))
    assert [len(images) for _, images, _ in run.examples] == [1, 0, 1, 0, 1, 0]


def test_free_drawing_on_vist_scores_drawn_steps_against_their_own_ground_truth(data):
    items = list(read_items(data["stories"], "vist"))  # 2 stories x 3 steps; steps 0, 2 and 4 of 6 drawn
    ex = tiny_extractors()
    metrics = run_protocol(EveryOther(), items, "vist", ex, 16, progress=False).metrics
    drawn = items[::2]
    reals = ex.fid_features(_uint8([i.images[0] for i in drawn], 16)).double()
    fakes = ex.fid_features(_uint8([_shifted(i.images[0]) for i in drawn], 16)).double()
    assert metrics["fid"] == pytest.approx(fid(reals, fakes)) and metrics["drawn"]["hits"] == 3
    assert metrics["stories_scored"] == 1 and metrics["stories_skipped"] == 1  # the second story has one drawn step


def test_a_model_that_never_draws_has_no_image_metrics_and_a_zero_share(model, data):
    system = MiniGPT5System(model, GenerationConfig(max_new_tokens=4, max_images=0, num_inference_steps=2), context="text")
    run = run_protocol(system, read_items(data["pairs"], "cc3m", max_items=3), "cc3m", tiny_extractors(),
                       model.cfg.diffusion.resolution, progress=False)
    assert run.metrics["drawn"] == {"value": 0.0, "hits": 0, "count": 3} and run.metrics["items"] == 3
    assert run.metrics["fid"] is None and run.metrics["clip_i"] is None
    assert all(images == [] and text for _, images, text in run.examples)  # it wrote, and drew nothing


def test_forced_drawing_draws_every_item_as_draw_does(model, data):
    system = MiniGPT5System(model, GenerationConfig(num_inference_steps=2), context="text")
    items = list(read_items(data["pairs"], "cc3m", max_items=3))
    run = run_protocol(system, items, "cc3m", tiny_extractors(), model.cfg.diffusion.resolution,
                       options=ProtocolOptions(draw="forced"), progress=False)
    assert run.metrics["drawn"] == {"value": 1.0, "hits": 3, "count": 3} and run.metrics["fid"] is not None
    for item, (_, images, _) in zip(items, run.examples):
        assert np.array_equal(np.asarray(images[0]), np.asarray(system.draw(item)))


def _result(*segments) -> GenerationResult:
    return GenerationResult(prompt="", input_images=[], segments=list(segments), token_ids=[], sequence_ids=[],
                            prompt_length=0, context_pixels=None, voken_features=[], settings={}, stopped="eos")


def test_free_drawing_gives_the_forced_input_up_to_the_vokens_in_the_vist_prompt(model, data, monkeypatch):
    item = list(read_items(data["stories"], "vist"))[1]
    picture = Image.new("RGB", (16, 16))
    calls = []
    monkeypatch.setattr("evaluation.systems.generate_from_ids",
                        lambda m, ids, pixels, gen: calls.append((ids, pixels, gen)) or _result(" words ", picture))
    official = MiniGPT5System(model, GenerationConfig(seed=3), prompt=target_prompt("vist"))
    assert official.draw_free(item) == ("words", [picture])
    ids, pixels, gen = calls[-1]
    given = VIST_IMAGE_PROMPT.format(text=item.text)
    forced = official.encoder.encode_turn(item.context + [(given, item.images)], len(item.context))["example"].input_ids
    assert forced[: len(ids)] == ids and forced[len(ids)] == official.encoder.voken_ids[0]
    assert model.tokenizer.decode(ids).endswith("Generate an image with the scene description: " + item.text)
    assert pixels.shape[0] == len(item.context)  # the earlier steps' pictures are read
    assert gen.max_images == 1 and gen.seed == item_seed(3, item)
    bare = MiniGPT5System(model, GenerationConfig(seed=3), prompt=target_prompt("vist", "none"))
    bare.draw_free(item)
    assert "scene description" not in model.tokenizer.decode(calls[-1][0])
    assert target_prompt("cc3m") == "{text}"
    for prompt in ("Generate an image", "{text} in {style}"):
        with pytest.raises(ConfigError, match="only field is"):
            MiniGPT5System(model, GenerationConfig(), prompt=prompt)


def test_vist_item_under_minigpt4_is_the_official_image_generation_request(monkeypatch):
    """The step's text in the official prompt is the Human turn; the model answers with the vokens."""
    from minigpt5.config import LLMConfig, TemplateConfig
    from minigpt5.model import MiniGPT5

    model = MiniGPT5(MiniGPT5Config(template=TemplateConfig(name="minigpt4"), llm=LLMConfig(max_length=512))).eval()
    picture = Image.new("RGB", (16, 16))
    calls = []
    monkeypatch.setattr("evaluation.systems.generate_from_ids",
                        lambda m, ids, pixels, gen: calls.append(ids) or _result(picture))
    system = MiniGPT5System(model, GenerationConfig(), context="text", prompt=target_prompt("vist"))
    system.draw_free(EvalItem("story", 1, "a dog runs", [picture], [("we went to the park", [picture])]))
    text = model.tokenizer.decode(calls[-1])
    assert "###Human:we went to the park" in text
    assert text.endswith("Generate an image with the scene description: a dog runs ###Assistant:")


def test_mmdialog_scores_the_response_text_up_to_its_first_image(model, data, monkeypatch):
    picture = Image.new("RGB", (16, 16))
    monkeypatch.setattr("evaluation.systems.generate_from_ids",
                        lambda *args: _result("here it is", picture, "and more words"))
    system = MiniGPT5System(model, GenerationConfig())
    item = next(read_items(data["dialogues"], "mmdialog"))
    assert system.respond(item) == ("here it is and more words", [picture])
    assert system.respond(item, until_image=True) == ("here it is", [picture])
    run = run_protocol(system, [dataclasses.replace(item, text="here it is")], "mmdialog", tiny_extractors(), 16,
                       progress=False)
    assert run.metrics["bleu1"] == pytest.approx(1.0) and run.examples[0][2] == "here it is"


def test_protocol_options_are_checked_and_responses_always_free():
    assert ProtocolOptions() == ProtocolOptions(draw="free", clip_f1="official", bleu="words")
    forced = ProtocolOptions(draw="forced")
    assert forced.for_protocol("vist") is forced and forced.for_protocol("mmdialog").draw == "free"
    with pytest.raises(ValueError, match="draw must be one of free, forced"):
        ProtocolOptions(draw="sometimes")
    with pytest.raises(ValueError, match="bleu must be one of"):
        ProtocolOptions(bleu="bytes")
    with pytest.raises(ValueError, match="draw 'forced' is for the cc3m and vist"):
        responder = types.SimpleNamespace(name="responder", respond=lambda item, until_image=False: ("", []))
        run_protocol(responder, [], "mmdialog", tiny_extractors(), 16, options=forced, progress=False)


def test_run_protocol_keeps_examples_and_counts_items(model, data):
    items = read_items(data["pairs"], "cc3m", max_items=4)
    run = run_protocol(StableDiffusionBaseline(model, num_inference_steps=2), items, "cc3m", tiny_extractors(),
                       model.cfg.diffusion.resolution, keep_examples=3, progress=False)
    assert run.metrics["items"] == 4 and len(run.examples) == 3
    assert run.metrics["drawn"]["value"] == 1.0  # SD draws on every item, free or not
    assert all(len(images) == 1 and images[0].size == (16, 16) for _, images, _ in run.examples)


# ---- the callback, through the CLI ----


@pytest.mark.slow
def test_evaluation_callback_logs_metrics_and_grid_during_fit(data, tmp_path):
    import yaml
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    root = Path(__file__).resolve().parents[2]
    overlay = tmp_path / "eval.yaml"
    overlay.write_text(yaml.safe_dump({"trainer": {"enable_progress_bar": False, "callbacks": [
        {"class_path": "callbacks.evaluation.EvaluationCallback",
         "init_args": {"every_n_epochs": 1, "max_items": 4, "extractors": "tiny", "num_inference_steps": 2,
                       "draw": "forced"}}]}}))
    args = ["-c", str(root / "configs/uas.yaml"), "-c", str(root / "configs/model/tiny.yaml"), "-c", str(overlay),
            "--trainer.max_steps=2", f"--trainer.default_root_dir={tmp_path / 'run'}",
            f"--data.train_shards={data['pairs']}", f"--data.val_shards={data['pairs']}", "--data.num_workers=0",
            "--data.batch_size=4", "--data.samples_per_epoch=8", "--trainer.num_sanity_val_steps=0"]
    assert main(["fit", *args]) == 0
    events = EventAccumulator(str(tmp_path / "run")).Reload()
    tags = events.Tags()
    for metric in ("eval/fid", "eval/clean_fid", "eval/is", "eval/clip_i", "eval/clip_t"):
        assert metric in tags["scalars"], tags["scalars"]
        (point,) = events.Scalars(metric)
        assert point.step == 2 and math.isfinite(point.value)
    assert "eval/samples" in tags["images"]
    assert events.Scalars("eval/items")[0].value == 4 and events.Scalars("eval/drawn")[0].value == 1.0


def test_evaluation_callback_runs_the_eval_protocols_choices():
    callback = EvaluationCallback()
    assert callback.options == ProtocolOptions() and callback.vist_prompt == "official"
    with pytest.raises(ValueError, match="draw must be one of"):
        EvaluationCallback(draw="sometimes")
    with pytest.raises(ConfigError, match="vist_prompt must be one of"):
        EvaluationCallback(vist_prompt="story")
    # mmdialog's targets: the datamodule's speakers unless set (a model is scored on the turns it trains to write)
    trainer = types.SimpleNamespace(datamodule=types.SimpleNamespace(choices=TurnChoices(speakers="assistant")))
    assert callback._speakers(trainer) == "assistant"
    assert EvaluationCallback(speakers="both")._speakers(trainer) == "both"
    assert callback._speakers(types.SimpleNamespace(datamodule=None)) == "both"
    with pytest.raises(ValueError, match="speakers must be one of"):
        EvaluationCallback(speakers="user")


@pytest.mark.slow
@pytest.mark.parametrize("layout,protocol,items", [("stories", "synthetic-vist", 4), ("dialogues", "synthetic-dialog", 4)])
def test_world_protocols_score_free_generation_by_the_rules(stage2_ckpt, data, tmp_path, layout, protocol, items):
    """Stories: steps 2 and 3 of 2 stories; dialogues: the 2 assistant replies of 2 four-turn dialogues."""
    out = tmp_path / protocol
    assert main(["eval", "--ckpt", str(stage2_ckpt), "--protocol", protocol, "--shards", data[layout],
                 "--steps", STEPS, "--max-new-tokens", "8", "--no-progress", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    row = results["rows"][0]
    settings = row["settings"]
    assert settings["temperature"] == 0.0 and settings["repetition_penalty"] == 1.0  # the world's decoding
    assert settings["guidance_scale"] == MiniGPT5Config().guidance.scale  # the model's own
    metrics = row["metrics"]
    assert metrics["items"] == items and metrics["text_correct"]["count"] == items
    assert 0.0 <= metrics["image_f1"] <= 1.0 and results["chance"]["colour"] == pytest.approx(1 / 6)
    assert "text_correct" in (out / "results.md").read_text()
    page = (out / f"examples_minigpt5_g{settings['guidance_scale']:g}.html").read_text()
    assert page.count("<tr>") == items + 1 and "the rules expect" in page
    assert detect_protocol(data[layout]) == protocol


@pytest.mark.slow
def test_world_baselines_sd_with_the_reference_text_and_llm_then_sd(stage2_ckpt, data, tmp_path):
    assert main(["eval", "--ckpt", str(stage2_ckpt), "--protocol", "synthetic-dialog", "--shards", data["dialogues"],
                 "--systems", "sd2", "llm-then-sd", "--steps", STEPS, "--max-new-tokens", "6", "--no-progress",
                 "--out", str(tmp_path)]) == 0
    sd, two_stage = (r["metrics"] for r in json.loads((tmp_path / "results.json").read_text())["rows"])
    assert sd["text_correct"]["value"] == 1.0  # SD is given the reference text ...
    assert sd["image_precision"]["value"] == sd["image_recall"]["value"] == 1.0  # ... and draws where the rules do
    assert two_stage["image_precision"]["count"] == two_stage["items"] == 4  # it draws on every turn
