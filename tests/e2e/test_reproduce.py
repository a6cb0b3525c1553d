"""`minigpt5 reproduce` on a reduced budget: every table row, with finite numbers, and the claims."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from data_modules.synthetic import write_synthetic
from lit_models.cli import main
from lit_models.reproduce import VARIANTS, verdict


def demo_assets(root) -> None:
    """What `make demo` writes before stage 1, at a few steps each: shards and the three stand-ins."""
    write_synthetic(root / "data", num=16, val_num=4, size=16, shard_size=16)
    for layout in ("stories", "dialogues"):
        write_synthetic(root / layout, num=8, val_num=3, hard_num=3, size=16, shard_size=8, layout=layout)
    quiet = ["--trainer.enable_progress_bar=false", "--trainer.max_steps=2", "--data.init_args.num_workers=0",
             "--data.init_args.batch_size=4", "--data.init_args.samples_per_epoch=8"]
    assert main(["pretrain-sd", "fit", "-c", "configs/tiny_sd.yaml", *quiet,
                 f"--trainer.default_root_dir={root / 'tiny_sd'}", f"--model.export_dir={root / 'tiny_sd' / 'model'}",
                 f"--data.init_args.train_shards={root / 'data' / 'train-000000.tar'}"]) == 0
    corpus = ",".join(str(root / layout / "train-000000.tar") for layout in ("data", "stories", "dialogues"))
    assert main(["pretrain-lm", "fit", "-c", "configs/tiny_lm.yaml", *quiet,
                 f"--trainer.default_root_dir={root / 'tiny_lm'}", f"--model.export_dir={root / 'tiny_lm' / 'model'}",
                 f"--data.init_args.train_shards={corpus}", "--data.init_args.val_shards=null"]) == 0
    assert main(["pretrain-vision", "fit", "-c", "configs/tiny_vision.yaml", *quiet,
                 f"--trainer.default_root_dir={root / 'tiny_vision'}", f"--model.export_dir={root / 'tiny_vision'}",
                 f"--model.config.llm.path={root / 'tiny_lm' / 'model'}",
                 f"--data.init_args.train_shards={root / 'data' / 'train-000000.tar'}",
                 "--data.init_args.val_shards=null"]) == 0


@pytest.mark.slow
def test_reproduce_small_budget_writes_every_row(tmp_path, monkeypatch):
    monkeypatch.chdir(Path(__file__).resolve().parents[2])  # configs/ are relative to the repository
    assets = tmp_path / "demo"
    demo_assets(assets)
    out = tmp_path / "reproduce"
    assert main(["reproduce", "--assets", str(assets), "--out", str(out), "--budget", "small"]) == 0
    results = json.loads((out / "results.json").read_text())
    tables = {t["title"].split(" (")[0]: t["rows"] for t in results["tables"]}
    assert [r["variant"] for r in tables["Training variants"]] == [name for name, _, _ in VARIANTS]
    assert [r["variant"] for r in tables["Classifier-free guidance"]] == ["guidance 1", "guidance 2"]
    assert [r["variant"] for r in tables["Context on the stories"]] == ["context both", "context text", "context images"]
    assert len(tables["Baselines under the same protocol"]) == 3 and len(tables["Held-out split vs unseen colour x shape pairs"]) == 2
    for rows in tables.values():
        for row in rows:
            for key, metric in row.items():
                if key == "variant":
                    continue
                number = metric["value"] if isinstance(metric, dict) else metric
                assert number is None or math.isfinite(number), (row["variant"], key)
                assert not isinstance(metric, dict) or metric["count"] >= 0
    assert len(results["claims"]) == 7 and all(" held " in c or "did not hold" in c or "too close to call" in c
                                            for c in results["claims"])
    assert all((out / f"table{i}.png").is_file() for i in range(1, 6))
    assert "## Claims" in (out / "results.md").read_text()


def test_a_claim_within_a_standard_error_is_not_decided():
    assert verdict(0.90, 0.70) == "held" and verdict(0.70, 0.90) == "did not hold"
    assert verdict(0.962, 0.958).startswith("too close to call") and verdict(0.96, 0.97).startswith("too close")
