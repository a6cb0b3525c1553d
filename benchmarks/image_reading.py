"""Does the frozen LM read a picture through the image reader? Trained reader vs untrained.

For held-out image-caption pairs, the LM is given only the picture (the reading example of
``data_modules.image_reading`` without its caption) and writes greedily; counted is how often
the first colour word and the first shape word it writes are the caption's (a reader that
writes "a blue square blue triangle" named a square). Also printed: the mean caption-token loss
after the pair's own picture and after another pair's (an image-blind reader scores both alike).

    python benchmarks/image_reading.py --reader outputs/demo/tiny_vision --lm outputs/demo/tiny_lm/model \
        --shards outputs/demo/data/val-000000.tar
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

from data_modules.image_reading import ImageReadingDataModule
from data_modules.world import COLOURS, SHAPES
from lit_models.vision_alignment import PROJECTION_FILE, TOWER_DIR, VisionAlignmentModule
from minigpt5.config import LLMConfig, MiniGPT5Config, VisionConfig


def read_aloud(module: VisionAlignmentModule, batch: dict, row: int, words: int) -> list[int]:
    """Greedy continuation (``words`` tokens, vocabulary only) of row ``row``'s picture prompt."""
    labels = batch["labels"][row]
    prompt = batch["input_ids"][row][: int(torch.nonzero(labels >= 0)[0])]  # up to the caption
    image = batch["input_pixels"][row:row + 1]
    vocabulary = module.model.voken_ids[0]  # vokens and the image placeholder come after the words
    ids = prompt[None]
    for _ in range(words):
        logits, _ = module.model.llm_forward(ids, torch.ones_like(ids), image)
        ids = torch.cat([ids, logits[:, -1, :vocabulary].argmax(-1, keepdim=True)], 1)
    return ids[0, len(prompt):].tolist()


def first_of(words: list[str], vocabulary) -> str | None:
    """The first of ``words`` that is in ``vocabulary``, or None."""
    return next((w for w in words if w in vocabulary), None)


def score(module: VisionAlignmentModule, dm: ImageReadingDataModule, limit: int) -> dict[str, Any]:
    """Named colour and shape counts over the first ``limit`` pairs, and the two caption losses."""
    tok = dm.encoder.tokenizer
    batches = []
    named = {"colour": 0, "shape": 0}
    with torch.no_grad():
        for batch in dm.val_dataloader():
            batches.append(batch)
            for row in range(batch["input_ids"].shape[0]):
                caption = tok.decode(batch["labels"][row][batch["labels"][row] >= 0], skip_special_tokens=True).split()
                written = tok.decode(read_aloud(module, batch, row, 6), skip_special_tokens=True).split()
                named["colour"] += first_of(written, COLOURS) == first_of(caption, COLOURS)
                named["shape"] += first_of(written, SHAPES) == first_of(caption, SHAPES)
            if sum(b["input_ids"].shape[0] for b in batches) >= limit:
                break
    own, other = module.caption_losses(batches)
    return {"pairs": sum(b["input_ids"].shape[0] for b in batches), **named, "own": own, "other": other}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reader", required=True, help="a `minigpt5 pretrain-vision` export folder")
    parser.add_argument("--lm", required=True, help="the LM it was trained under (Hugging Face folder)")
    parser.add_argument("--shards", required=True, help="held-out image-caption shards")
    parser.add_argument("--pairs", type=int, default=200, help="pairs to read")
    parser.add_argument("--kind", choices=("blip2", "clip"), default="blip2", help="the reader's vision.kind")
    args = parser.parse_args()
    reader = Path(args.reader)
    trained = VisionConfig(kind=args.kind, path=str(reader / TOWER_DIR), projection_path=str(reader / PROJECTION_FILE),
                           train_projection=False)
    for name, vision in (("trained reader", trained), ("untrained reader", VisionConfig(kind=args.kind))):
        cfg = MiniGPT5Config(vision=vision, llm=LLMConfig(path=args.lm, max_length=32))
        torch.manual_seed(0)
        module = VisionAlignmentModule(cfg).eval()
        dm = ImageReadingDataModule(args.shards, args.shards, model_config=cfg, num_workers=0, batch_size=50)
        dm.setup("fit")
        got = score(module, dm, args.pairs)
        print(f"{name}: of {got['pairs']} pictures, colour named {got['colour']}, shape named {got['shape']} "
              f"(chance 1/6 and 1/3); caption loss {got['own']:.2f} after its own picture, "
              f"{got['other']:.2f} after another")


if __name__ == "__main__":
    main()
