"""`minigpt5 eval`, the systems it runs and the evaluation callback, on tiny models and extractors."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import lightning
import numpy as np
import pytest
import torch

from data_modules.synthetic import write_synthetic
from evaluation.extractors import tiny_extractors
from evaluation.items import EvalItem, detect_protocol, read_items
from evaluation.protocols import run_protocol
from evaluation.systems import MiniGPT5System, StableDiffusionBaseline, item_seed
from lit_models.cli import main
from lit_models.module import MiniGPT5Module
from minigpt5.config import ConfigError, MiniGPT5Config, VisionConfig
from minigpt5.generate import GenerationConfig
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
    results = run_eval(["--ckpt", str(stage1_ckpt), "--protocol", "cc3m", "--shards", data["pairs"],
                        "--systems", "minigpt5", "sd2", "--guidance-scale", "1", "7.5"], tmp_path)
    assert results["checkpoint"]["sha256"] == hashlib.sha256(stage1_ckpt.read_bytes()).hexdigest()
    run = [r for r in results["rows"] if r["kind"] == "run"]
    assert [(r["system"], r["settings"]["guidance_scale"]) for r in run] == [
        ("MiniGPT-5", 1.0), ("Stable Diffusion 2", 1.0), ("MiniGPT-5", 7.5), ("Stable Diffusion 2", 7.5)]
    for row in run:
        finite_metrics(row, ("fid", "clean_fid", "is", "clip_i", "clip_t"))
        assert row["metrics"]["items"] == 6 and Path(row["samples"]).is_file()
        assert row["settings"]["num_inference_steps"] == 2 and row["settings"]["seed"] == 42
    # Sweep rows are distinct runs: guidance changes the images, so the scores move.
    assert run[0]["metrics"]["fid"] != run[2]["metrics"]["fid"]
    assert run[0]["metrics"]["clip_i"] != run[1]["metrics"]["clip_i"]  # and MiniGPT-5 is not SD2
    quoted = [r for r in results["rows"] if r["kind"] == "quoted"]
    assert [r["system"] for r in quoted] == ["MiniGPT-5 (published)", "GILL"]
    assert "not retrieved" in (tmp_path / "results.md").read_text()  # their CC3M figures are not in quoted.yaml


@pytest.mark.slow
def test_vist_eval_per_story_fid_and_context_modes(stage2_ckpt, data, tmp_path):
    both = run_eval(["--ckpt", str(stage2_ckpt), "--protocol", "vist", "--shards", data["stories"],
                     "--systems", "minigpt5", "sd2", "--sd2-text", "story"], tmp_path / "both")
    for row in (r for r in both["rows"] if r["kind"] == "run"):
        finite_metrics(row, ("fid", "clean_fid", "fid_per_story", "is", "clip_i", "clip_t"))
        assert row["metrics"]["items"] == 6 and row["metrics"]["stories_scored"] == 2  # 2 stories x 3 steps
    text = run_eval(["--ckpt", str(stage2_ckpt), "--protocol", "vist", "--shards", data["stories"],
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
    assert [r["system"] for r in results["rows"] if r["kind"] == "quoted"] == ["Divter", "MiniGPT-5 (published)"]


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


def test_run_protocol_keeps_examples_and_counts_items(model, data):
    items = read_items(data["pairs"], "cc3m", max_items=4)
    run = run_protocol(StableDiffusionBaseline(model, num_inference_steps=2), items, "cc3m", tiny_extractors(),
                       model.cfg.diffusion.resolution, keep_examples=3, progress=False)
    assert run.metrics["items"] == 4 and len(run.examples) == 3
    assert all(len(images) == 1 and images[0].size == (16, 16) for _, images, _ in run.examples)


# ---- the callback, through the CLI ----


@pytest.mark.slow
def test_evaluation_callback_logs_metrics_and_grid_during_fit(data, tmp_path):
    import yaml
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    root = Path(__file__).resolve().parents[1]
    overlay = tmp_path / "eval.yaml"
    overlay.write_text(yaml.safe_dump({"trainer": {"enable_progress_bar": False, "callbacks": [
        {"class_path": "callbacks.evaluation.EvaluationCallback",
         "init_args": {"every_n_epochs": 1, "max_items": 4, "extractors": "tiny", "num_inference_steps": 2}}]}}))
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
    assert events.Scalars("eval/items")[0].value == 4


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
