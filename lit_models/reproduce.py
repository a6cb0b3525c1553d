"""``minigpt5 reproduce``: the paper's questions in miniature, on the synthetic world.

  minigpt5 reproduce --assets outputs/demo --out outputs/reproduce          # make reproduce
  minigpt5 reproduce --assets outputs/demo --out /tmp/r --budget small      # every row, a few steps (tests)

From the demo's data and pretrained stand-ins (``--assets``: the world's shards, the tiny
SD and the tiny LM, as ``make demo`` writes them), it trains the variants and scores each
on the held-out stories and dialogues with the world's rules (:mod:`evaluation.world_scores`):

- training (RQ2, RQ3): two stages (UAS then MLS, LoRA) vs MLS only from the same
  pretrained parts (same stage-2 steps); without the CAP loss in stage 1; prefix
  tuning or no adapter instead of LoRA in stage 2;
- guidance (RQ3): scale 1 (none) vs larger scales, on the two-stage model;
- context (VIST): text only, images only, both, on the steps whose colour lives only in
  an earlier picture;
- baselines: SD prompted with the reference text, and the LLM writing from text alone
  then SD drawing what it wrote (the paper's MiniGPT-4 + SD comparison);
- held-out difficulty: the val split vs the hard split (colour x shape pairs never in
  stage-2 training).

Writes ``results.md`` (the tables, and which of the paper's claims held here),
``results.json`` and one bar chart PNG per table into ``--out``; each run's
directory (checkpoints, TensorBoard events) and each evaluation's own results stay
under ``--out/runs`` and ``--out/evals``. A run whose checkpoint exists is reused, so
an interrupted reproduction continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from evaluation.charts import bar_chart
from evaluation.report import is_fraction, metric_value
from minigpt5.progress import NO_PROGRESS, add_progress_flag

STAGE1 = ["-c", "configs/uas.yaml", "-c", "configs/model/tiny.yaml", "-c", "configs/demo.yaml"]
STAGE2 = ["-c", "configs/uas.yaml", "-c", "configs/mls.yaml", "-c", "configs/mls_vist.yaml",
          "-c", "configs/model/tiny.yaml", "-c", "configs/demo_mls.yaml"]


@dataclass(frozen=True)
class Budget:
    """Steps and items of one reproduction."""

    stage1_steps: int
    stage2_steps: int
    items: Optional[int]  # evaluation items per split and protocol; None: all
    guidance: tuple[float, ...]
    diffusion_steps: Optional[int]  # None: the model's own


BUDGETS = {
    # Stage 2 at 1500 steps, as the demo (configs/demo_mls.yaml), to keep five variants in about 45 minutes.
    "full": Budget(stage1_steps=800, stage2_steps=1500, items=None, guidance=(1.0, 2.0, 3.0, 5.0), diffusion_steps=None),
    "small": Budget(stage1_steps=3, stage2_steps=3, items=4, guidance=(1.0, 2.0), diffusion_steps=2),
}

# The stage-2 variants: (name, stage-1 run or None for MLS only, extra flags).
VARIANTS = [
    ("two-stage, LoRA", "uas", []),
    # MLS only: nothing was aligned in stage 1, so the mapper's MLP and queries train here too.
    ("MLS only, LoRA", None, ["--model.config.mapper.train_mlp_and_queries=true"]),
    ("two-stage, no CAP in stage 1", "uas-nocap", []),
    ("two-stage, prefix tuning", "uas", ["--model.config.peft.method=prefix"]),
    ("two-stage, no adapter", "uas", ["--model.config.peft.method=none"]),
]
MAIN = VARIANTS[0][0]
COLUMNS = [("stories", "text_correct"), ("stories", "colour_right"), ("stories", "shape_right"),
           ("stories", "coherence"), ("dialogues", "text_correct"), ("dialogues", "image_f1"),
           ("dialogues", "colour_right"), ("dialogues", "coherence")]


@dataclass(frozen=True)
class Assets:
    """The demo's data and pretrained stand-ins under one folder (as ``make demo`` writes them)."""

    root: Path

    def spec(self, layout: str, split: str) -> str:
        """The comma list of ``<root>/<layout>/<split>-*.tar``; FileNotFoundError when there are none."""
        files = sorted((self.root / layout).glob(f"{split}-*.tar"))
        if not files:
            raise FileNotFoundError(f"no {split} shards in {self.root / layout} (run `make demo` first)")
        return ",".join(str(f) for f in files)

    def flags(self, stage: int) -> list[str]:
        """The stand-ins and shards of ``stage`` (1 or 2) as ``minigpt5 fit`` flags."""
        reader = self.root / "tiny_vision"
        for needed in (self.root / "tiny_sd" / "model", self.root / "tiny_lm" / "model", reader / "tower"):
            if not needed.is_dir():
                raise FileNotFoundError(f"reproduce needs {needed} (run `make demo` first)")
        models = [f"--model.config.llm.path={self.root / 'tiny_lm' / 'model'}",
                  f"--model.config.diffusion.path={self.root / 'tiny_sd' / 'model'}"]
        if stage == 1:
            return models + [f"--data.train_shards={self.spec('data', 'train')}",
                             f"--data.val_shards={self.spec('data', 'val')}"]
        return models + [f"--model.config.vision.path={reader / 'tower'}",
                         f"--model.config.vision.projection_path={reader / 'projection.pth'}",
                         f"--data.train_shards={self.spec('stories', 'train')},{self.spec('dialogues', 'train')}",
                         f"--data.val_shards={self.spec('stories', 'val')}"]


def run_fit(args: list[str], root: Path) -> Path:
    """``minigpt5 fit`` in its own process into ``root``, unless its last checkpoint exists -> that checkpoint."""
    ckpt = root / "checkpoints" / "last.ckpt"
    if not ckpt.is_file():
        command = [sys.executable, "-m", "lit_models.cli", "fit", *args, f"--trainer.default_root_dir={root}"]
        print("$ minigpt5 " + " ".join(command[3:]), flush=True)
        subprocess.run(command, check=True)
    return ckpt


def run_eval(ckpt: Path, protocol: str, shards: str, out: Path, budget: Budget, *extra: str) -> list[dict[str, Any]]:
    """``minigpt5 eval`` in this process -> its result rows."""
    from lit_models.eval_cli import build_parser, evaluate

    argv = ["--ckpt", str(ckpt), "--protocol", protocol, "--shards", shards, "--out", str(out),
            "--examples", "24", *extra]
    if budget.items is not None:
        argv += ["--max-items", str(budget.items)]
    if budget.diffusion_steps is not None:
        argv += ["--steps", str(budget.diffusion_steps)]
    json_path, _ = evaluate(build_parser().parse_args(argv))  # decoding: the protocol's preset
    return json.loads(json_path.read_text())["rows"]


def cell(metric: Any) -> str:
    if metric is None:
        return "–"
    if is_fraction(metric):
        return "–" if metric["value"] is None else f"{metric['value']:.2f} ({metric['hits']}/{metric['count']})"
    return f"{metric:.2f}"


@dataclass
class Table:
    """One results table: rows of (name, {column: metric})."""

    title: str
    columns: list[tuple[str, str]]
    rows: list[tuple[str, dict[tuple[str, str], Any]]]

    def markdown(self) -> str:
        head = "| variant | " + " | ".join(f"{split} {metric}" for split, metric in self.columns) + " |"
        lines = [f"## {self.title}", "", head, "|" + "---|" * (len(self.columns) + 1)]
        lines += ["| " + name + " | " + " | ".join(cell(row.get(c)) for c in self.columns) + " |"
                  for name, row in self.rows]
        return "\n".join(lines) + "\n"

    def chart(self):
        return bar_chart(self.title, [f"{s[:5]} {m}" for s, m in self.columns],
                         {name: [metric_value(row.get(c)) for c in self.columns] for name, row in self.rows})

    def record(self) -> dict[str, Any]:
        return {"title": self.title, "rows": [{"variant": name, **{f"{s}/{m}": row.get((s, m)) for s, m in self.columns}}
                                              for name, row in self.rows]}


def scores(rows: dict[str, dict[str, Any]]) -> dict[tuple[str, str], Any]:
    """{"stories": metrics, "dialogues": metrics} -> {(split, metric): value}."""
    return {(split, key): metrics.get(key) for split, metrics in rows.items() for key in metrics}


def reproduce(assets: Assets, out: Path, budget: Budget, progress: bool = True) -> Path:
    """Train and score every variant; write the tables -> the path of results.md. ``progress``:
    each training run's and evaluation's bar (where the output is a terminal)."""
    runs, evals = out / "runs", out / "evals"
    quiet = [] if progress else [NO_PROGRESS]  # for fit and eval alike
    first = [*STAGE1, *assets.flags(1), f"--trainer.max_steps={budget.stage1_steps}", *quiet]
    second = [*STAGE2, *assets.flags(2), f"--trainer.max_steps={budget.stage2_steps}", *quiet]
    stage1 = {"uas": run_fit(first, runs / "uas"),
              "uas-nocap": run_fit([*first, "--model.config.loss.cap_weight=0"], runs / "uas-nocap")}
    val = {"stories": ("synthetic-vist", assets.spec("stories", "val")),
           "dialogues": ("synthetic-dialog", assets.spec("dialogues", "val"))}
    hard = {"stories": ("synthetic-vist", assets.spec("stories", "hard")),
            "dialogues": ("synthetic-dialog", assets.spec("dialogues", "hard"))}

    def evaluate_on(ckpt: Path, tag: str, splits: dict[str, tuple[str, str]], *extra: str) -> list[dict[str, Any]]:
        """Per system row (in order): {"stories": metrics, "dialogues": metrics}."""
        per_split = {name: run_eval(ckpt, protocol, shards, evals / tag / name, budget, *quiet, *extra)
                     for name, (protocol, shards) in splits.items()}
        count = len(next(iter(per_split.values())))
        return [{name: rows[i]["metrics"] for name, rows in per_split.items()} for i in range(count)]

    models: dict[str, Path] = {}
    training_rows = []
    for name, init, flags in VARIANTS:
        tag = name.replace(", ", "-").replace(" ", "-")
        init_flag = f"--model.init_from={stage1[init]}" if init else "--model.init_from=null"
        models[name] = run_fit([*second, init_flag, *flags], runs / tag)
        training_rows.append((name, scores(evaluate_on(models[name], tag, val)[0])))
    main = models[MAIN]

    guidance = evaluate_on(main, "guidance", val, "--guidance-scale", *[f"{g:g}" for g in budget.guidance])
    guidance_rows = [(f"guidance {g:g}", scores(row)) for g, row in zip(budget.guidance, guidance)]

    context_columns = [("stories", "colour_from_image"), ("stories", "colour_right"), ("stories", "text_correct"),
                       ("dialogues", "colour_from_image"), ("dialogues", "text_correct")]
    context_rows = [(f"context {mode}", scores(evaluate_on(main, f"context-{mode}", val, "--context", mode)[0]))
                    for mode in ("both", "text", "images")]

    baseline = evaluate_on(main, "baselines", val, "--systems", "minigpt5", "sd2", "llm-then-sd")
    baseline_rows = [(n, scores(r)) for n, r in zip(("MiniGPT-5 (two-stage, LoRA)", "SD given the reference text",
                                                      "LLM text, then SD"), baseline)]
    split_rows = [("held-out (val)", training_rows[0][1]), ("hard (unseen pairs)", scores(evaluate_on(main, "hard", hard)[0]))]

    tables = [
        Table("Training variants (held-out stories and dialogues)", COLUMNS, training_rows),
        Table("Classifier-free guidance (two-stage, LoRA)", COLUMNS, guidance_rows),
        Table("Context on the stories (colour_from_image: the colour only an earlier picture shows)",
              context_columns, context_rows),
        Table("Baselines under the same protocol", COLUMNS, baseline_rows),
        Table("Held-out split vs unseen colour x shape pairs", COLUMNS, split_rows),
    ]
    return write_report(out, tables, claims(tables), budget)


def mean_of(row: dict[tuple[str, str], Any], columns: list[tuple[str, str]]) -> float:
    values = [metric_value(row.get(c)) for c in columns]
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else float("nan")


IMAGE_COLUMNS = [("stories", "colour_right"), ("stories", "shape_right"), ("stories", "coherence"),
                 ("dialogues", "colour_right"), ("dialogues", "coherence")]


# A fraction over about 100 items has a standard error of about 0.05: a claim decided by less is not decided.
CLOSE = 0.05


def verdict(better: float, worse: float) -> str:
    """Whether a claim that ``better`` beats ``worse`` held, failed, or is within :data:`CLOSE` of a tie."""
    if abs(better - worse) < CLOSE:
        return f"too close to call (within {CLOSE:.2f}, about one standard error)"
    return "held" if better > worse else "did not hold"


def claims(tables: list[Table]) -> list[str]:
    """The paper's claims, each said to hold or not from the measured numbers (means of the named columns)."""
    training, guidance, context, baselines, _ = (dict(t.rows) for t in tables)
    out = []

    def claim(text: str, better: float, worse: float, what: str) -> None:
        out.append(f"- {text}: {verdict(better, worse)} ({what}: {better:.2f} vs {worse:.2f})")

    main = training[MAIN]
    claim("RQ2, two-stage training beats MLS only", mean_of(main, COLUMNS),
          mean_of(training["MLS only, LoRA"], COLUMNS), "mean of all scores")
    claim("The CAP loss in stage 1 helps", mean_of(main, IMAGE_COLUMNS),
          mean_of(training["two-stage, no CAP in stage 1"], IMAGE_COLUMNS), "mean of picture scores")
    for other in ("two-stage, prefix tuning", "two-stage, no adapter"):
        claim(f"RQ3, LoRA beats {other.split(', ')[1]}", mean_of(main, COLUMNS), mean_of(training[other], COLUMNS),
              "mean of all scores")
    best_name, best = max(((n, r) for n, r in guidance.items() if n != "guidance 1"),
                          key=lambda item: mean_of(item[1], IMAGE_COLUMNS))
    claim(f"RQ3, classifier-free guidance helps ({best_name} vs none)", mean_of(best, IMAGE_COLUMNS),
          mean_of(guidance["guidance 1"], IMAGE_COLUMNS), "mean of picture scores")
    image_only = [("stories", "colour_from_image")]
    claim("Image context matters (both vs text only)", mean_of(context["context both"], image_only),
          mean_of(context["context text"], image_only), "stories colour_from_image")
    ours = baselines["MiniGPT-5 (two-stage, LoRA)"]
    claim("MiniGPT-5 beats LLM text then SD", mean_of(ours, IMAGE_COLUMNS),
          mean_of(baselines["LLM text, then SD"], IMAGE_COLUMNS), "mean of picture scores")
    return out


def write_report(out: Path, tables: list[Table], verdicts: list[str], budget: Budget) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    lines = ["# The paper's questions in miniature (synthetic world)", "",
             f"Budget: {budget}. Every number below was measured in this run on the held-out splits; "
             "each fraction is followed by its count. Chance: colour 0.17, shape 0.33. A fraction over "
             f"about 100 items has a standard error of about {CLOSE}: a claim that holds or fails by less "
             "is called too close to call.", "",
             "## Claims", "", *verdicts, ""]
    for i, table in enumerate(tables):
        lines.append(table.markdown())
        chart = out / f"table{i + 1}.png"
        table.chart().save(chart)
        lines.append(f"![{table.title}]({chart.name})\n")
    md = out / "results.md"
    md.write_text("\n".join(lines))
    (out / "results.json").write_text(json.dumps({"budget": budget.__dict__, "claims": verdicts,
                                                  "tables": [t.record() for t in tables]}, indent=2, default=list))
    return md


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="minigpt5 reproduce", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--assets", default="outputs/demo", help="the demo's outputs: shards, tiny_sd, tiny_lm, tiny_vision")
    parser.add_argument("--out", default="outputs/reproduce")
    parser.add_argument("--budget", choices=sorted(BUDGETS), default="full")
    add_progress_flag(parser)
    args = parser.parse_args(argv)
    try:
        md = reproduce(Assets(Path(args.assets)), Path(args.out), BUDGETS[args.budget], progress=args.progress)
    except (FileNotFoundError, subprocess.CalledProcessError) as err:
        print(f"minigpt5 reproduce: error: {err}", file=sys.stderr)
        return 2
    print(md.read_text())
    print(f"results: {md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
