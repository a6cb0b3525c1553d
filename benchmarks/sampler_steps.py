"""How few UNet calls draw a caption as well as 50 steps? Caption following against sampler steps.

For each sampler and step count, a trained tiny stage-1 checkpoint draws every colour x
shape caption of the synthetic set (``--seeds`` images each, guided, the same seeds for
every setting), and the score is the mean of the colour-right and shape-right fractions
(``dominant_colour``, ``dominant_shape``). The reference is the best of the single-step
samplers (PNDM, DDIM) at ``--reference-steps``; a multistep solver (DPM-Solver++, UniPC)
holds at the fewest steps whose score is within ``--tolerance`` of it, and the ratio of
UNet calls (counted, one call per guided batch) is printed. Writes a PNG of the curves
and a JSON of every figure.

    python benchmarks/sampler_steps.py --ckpt outputs/demo/uas/checkpoints/last.ckpt
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Optional

import torch

from data_modules.synthetic import COLOURS, SHAPES, caption_for
from evaluation.charts import line_chart
from lit_models.module import MiniGPT5Module
from minigpt5.guidance import SAMPLERS
from caption_following import caption_scores

SINGLE_STEP = ("pndm", "ddim")
MULTISTEP = ("dpm++", "unipc")


class CallCounter:
    """Counts the forward calls of a module (a forward pre-hook)."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.calls = 0
        module.register_forward_pre_hook(self._count)

    def _count(self, *_: Any) -> None:
        self.calls += 1


def fewest_steps_within(curve: dict[int, float], reference: float, tolerance: float) -> Optional[int]:
    """The fewest steps of ``curve`` (steps -> score) scoring at least ``reference - tolerance``."""
    good = [steps for steps, score in sorted(curve.items()) if score >= reference - tolerance]
    return good[0] if good else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", default="outputs/demo/uas/checkpoints/last.ckpt", help="a tiny stage-1 checkpoint")
    parser.add_argument("--samplers", nargs="+", default=[*SINGLE_STEP, *MULTISTEP], choices=list(SAMPLERS))
    parser.add_argument("--steps", nargs="+", type=int, default=[5, 10, 15, 20, 25, 50])
    parser.add_argument("--reference-steps", type=int, default=50, help="the single-step samplers' reference")
    parser.add_argument("--tolerance", type=float, default=0.02, help="how far below the reference still holds")
    parser.add_argument("--seeds", type=int, default=4, help="images per caption")
    parser.add_argument("--scale", type=float, default=None, help="guidance scale (default: the config's)")
    parser.add_argument("--out", default="outputs/bench/sampler_steps.png", help="PNG of the curves; JSON beside it")
    args = parser.parse_args()
    if args.reference_steps not in args.steps:
        parser.error(f"--reference-steps {args.reference_steps} must be one of --steps")

    module = MiniGPT5Module.from_checkpoint(args.ckpt)
    scale = module.config.guidance.scale if args.scale is None else args.scale
    captions = [caption_for(c, s) for c in COLOURS for s in SHAPES]
    counter = CallCounter(module.model.unet)
    rows: dict[str, dict[int, dict[str, float]]] = {}
    print(f"{len(captions) * args.seeds} images a setting, guidance {scale}")
    print(f"{'sampler':8} {'steps':>5} {'UNet calls':>10} {'colour':>7} {'shape':>6} {'score':>6}")
    xs = sorted(args.steps)
    for sampler in args.samplers:
        rows[sampler] = {}
        for steps in xs:
            before = counter.calls
            colour, shape, _ = caption_scores(module, captions, args.seeds, scale, steps, sampler)
            calls = (counter.calls - before) / args.seeds  # one generate_images call per seed
            row = rows[sampler][steps] = {"colour": colour, "shape": shape, "score": (colour + shape) / 2,
                                          "unet_calls": calls}
            print(f"{sampler:8} {steps:5d} {calls:10.0f} {colour:7.2f} {shape:6.2f} {row['score']:6.2f}")

    references = {s: rows[s][args.reference_steps] for s in SINGLE_STEP if s in rows}
    verdicts = {}
    if references:
        ref_name, ref = max(references.items(), key=lambda item: item[1]["score"])
        print(f"reference: {ref_name} at {args.reference_steps} steps, score {ref['score']:.2f}, "
              f"{ref['unet_calls']:.0f} UNet calls")
        for sampler in (s for s in MULTISTEP if s in rows):
            curve = {steps: r["score"] for steps, r in rows[sampler].items()}
            steps = fewest_steps_within(curve, ref["score"], args.tolerance)
            if steps is None:
                verdicts[sampler] = None
                print(f"{sampler}: no step count within {args.tolerance:.2f} of the reference")
                continue
            ratio = ref["unet_calls"] / rows[sampler][steps]["unet_calls"]
            verdicts[sampler] = {"steps": steps, "score": rows[sampler][steps]["score"], "fewer_unet_calls": ratio}
            print(f"{sampler}: {steps} steps score {rows[sampler][steps]['score']:.2f}, within {args.tolerance:.2f} "
                  f"of the reference: {ratio:.1f}x fewer UNet calls")

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    chart = line_chart(f"caption following (mean of colour and shape right) against steps, guidance {scale:g}",
                       "steps", xs, {s: [rows[s][x]["score"] for x in xs] for s in rows})
    chart.save(out)
    out.with_suffix(".json").write_text(json.dumps({
        "checkpoint": str(args.ckpt), "guidance_scale": scale, "images_per_setting": len(captions) * args.seeds,
        "reference_steps": args.reference_steps, "tolerance": args.tolerance,
        "rows": {s: {str(k): v for k, v in r.items()} for s, r in rows.items()}, "verdicts": verdicts,
    }, indent=2))
    print(f"curves: {out} (figures: {out.with_suffix('.json')})")


if __name__ == "__main__":
    main()
