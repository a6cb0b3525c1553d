"""``minigpt5 data encode-latents``: copy shards, adding each image's VAE moments.

For every sample of every input shard, each image member (``key.jpg``, or
``key.0.jpg``, ``key.1.jpg``, ... in stories and dialogues) goes through the training
transform (:func:`~minigpt5.images.to_target_tensor` at ``diffusion.resolution``) and the
configured VAE's encoder; its moments are written as ``key[.i].latent.npy`` with a
``key.latent.json`` record of what made them (:mod:`data_modules.latents`). With
``captions``, each sample's caption (``key.txt``) also goes through the SD text encoder as
stage 1's CAP target takes it, written as ``key.caption_embedding.npy`` with its record
(:mod:`data_modules.caption_cache`). Every other member is copied byte for byte. Output shards keep their input names, one per input, so
disjoint ``--shards`` lists can also run as separate processes (one per GPU) into one folder.
DataLoader workers read and decode whole shards while the main process runs the VAE.
Samples with no image or an unreadable one are logged, counted and left out; with
``captions``, a sample without a usable caption is written without its embedding, counted
as a ``no_caption`` problem.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional, Union

import numpy as np
import torch
from jsonargparse import ArgumentParser
from omegaconf import OmegaConf
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from webdataset import TarWriter
from webdataset.tariterators import tarfile_samples

from data_modules.cache_records import array_to_bytes
from data_modules.caption_cache import CAPTION_RECORD_FIELD, EMBEDDING_FIELD, caption_record
from data_modules.convert.common import SequenceSummary
from data_modules.errors import BadSample
from data_modules.latents import LATENT_SUFFIX, RECORD_FIELD, cache_record, latent_field
from data_modules.shards import IMAGE_EXTENSIONS, decode_caption, decode_image, expand_shards
from data_modules.workers import worker_context
from minigpt5.builders import VAELatents, build_latent_space, build_sd_tokenizer, build_text_encoder
from minigpt5.config import MiniGPT5Config
from minigpt5.images import to_target_tensor
from minigpt5.progress import progress_bar
from minigpt5.sequences import tokenize_for_text_encoder
from minigpt5.templates import prepare_caption

log = logging.getLogger(__name__)


@dataclass
class LatentSummary(SequenceSummary):
    """What an encode-latents run read, wrote and skipped (samples, and the images encoded in them)."""

    unit = "samples"
    part = "latents"
    captions: Optional[int] = None  # caption embeddings written (None: not asked for)

    def __str__(self) -> str:
        written = "" if self.captions is None else f"; {self.captions} caption embeddings written"
        return super().__str__() + written


def model_config(files: list[str], overrides: Optional[list[str]] = None) -> MiniGPT5Config:
    """The ``model.config`` of training YAML ``files`` (merged in order) with dotted ``overrides``.

    ``files`` are those given to ``minigpt5 fit -c``; an override is ``diffusion.resolution=256``
    (relative to ``model.config``). Unknown keys and bad values are errors naming them.
    """
    overrides = overrides or []
    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise ValueError(f"a model config override is key=value (e.g. diffusion.resolution=256); got {bad}")
    missing = [f for f in files if not Path(f).is_file()]
    if missing:
        raise FileNotFoundError(f"model config file(s) not found: {', '.join(missing)}")
    merged = OmegaConf.merge(*(OmegaConf.load(f) for f in files)) if files else OmegaConf.create()
    merged = OmegaConf.merge(merged, OmegaConf.from_dotlist([f"model.config.{o}" for o in overrides]))
    section = OmegaConf.to_container(merged, resolve=True).get("model", {}).get("config", {})  # type: ignore[union-attr]
    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--config", type=MiniGPT5Config)
    try:
        namespace = parser.parse_object({"config": section or {}})
    except Exception as err:  # jsonargparse reports unknown keys and bad values this way
        raise ValueError(f"model config from {files} with {overrides}: {err}") from err
    return parser.instantiate(namespace).config


def image_fields(sample: dict[str, Any]) -> list[str]:
    """The sample's image members (``jpg``, ``0.jpg``, ...), sorted."""
    return sorted(k for k in sample if not k.startswith("__") and k.rpartition(".")[2] in IMAGE_EXTENSIONS)


def copied_members(sample: dict[str, Any]) -> dict[str, Any]:
    """The members to copy: all but wds' bookkeeping and any earlier latent or caption cache."""
    caches = (RECORD_FIELD, EMBEDDING_FIELD, CAPTION_RECORD_FIELD)
    return {
        k: v for k, v in sample.items()
        if k == "__key__" or not (k.startswith("__") or k in caches or k.endswith(LATENT_SUFFIX))
    }


class CaptionEncoder:
    """The SD text encoder's output on samples' captions, worded and tokenized as stage 1's
    CAP target is (``SampleEncoder`` and ``MiniGPT5.encode_captions``)."""

    def __init__(self, cfg: MiniGPT5Config, device: str) -> None:
        self.cfg = cfg
        self.tokenizer = build_sd_tokenizer(cfg.diffusion)
        self.encoder = build_text_encoder(cfg).to(device).eval().requires_grad_(False)
        self.record = json.dumps(caption_record(cfg)).encode()

    def caption(self, sample: dict[str, Any]) -> str:
        """The sample's caption as training reads it; BadSample when it has none."""
        return prepare_caption(decode_caption(sample), self.cfg.template)

    @torch.no_grad()
    def __call__(self, captions: list[str]) -> np.ndarray:
        ids = tokenize_for_text_encoder(self.tokenizer, captions, self.cfg.diffusion.text_max_length)  # (n, L)
        return self.encoder(ids.to(self.encoder.device))[0].float().cpu().numpy()  # (n, L, C)


class ShardImages(IterableDataset):
    """Decodes the images of whole shards, each shard in one DataLoader worker, in sample order.

    Yields, per shard ``i``: ``("sample", i, sample, fields, pixels (n, 3, H, W))`` for usable
    samples, ``("skip", i, reason, where, message)`` for the others (counted by the caller,
    whose summary the workers do not share), then ``("end", i)``.
    """

    def __init__(self, urls: list[str], resolution: int) -> None:
        super().__init__()
        self.urls, self.resolution = urls, resolution

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        info = get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        for i in range(worker, len(self.urls), workers):
            for sample in tarfile_samples([{"url": self.urls[i]}]):
                yield self._prepare(i, sample)
            yield ("end", i)

    def _prepare(self, i: int, sample: dict[str, Any]) -> tuple[Any, ...]:
        where = f"{sample.get('__url__')} sample '{sample.get('__key__')}'"
        fields = image_fields(sample)
        if not fields:
            return ("skip", i, "no_image", where, f"no image member (.{', .'.join(IMAGE_EXTENSIONS)})")
        try:
            pixels = torch.stack([to_target_tensor(decode_image(sample, f), self.resolution) for f in fields])
        except BadSample as err:
            return ("skip", i, "corrupt_image", where, str(err))
        return ("sample", i, sample, fields, pixels)


def encode_latents(
    shards: str,
    out: Union[str, Path],
    cfg: MiniGPT5Config,
    *,
    batch_size: int = 32,
    num_workers: int = 0,
    device: Optional[str] = None,
    captions: bool = False,
    progress: bool = True,
) -> LatentSummary:
    """Write ``out/<input shard name>`` for every shard of ``shards`` with latents added (module docstring).

    ``num_workers`` processes read and decode whole shards while the VAE encodes; the
    output is the same for any number. ``captions``: also cache each caption's text-encoder output.
    ``progress``: a bar of the samples read, with the shards done.
    """
    if batch_size < 1 or num_workers < 0:
        raise ValueError(f"need batch_size >= 1 and num_workers >= 0; got {batch_size}, {num_workers}")
    urls = expand_shards(shards)
    out = Path(out)
    targets = [out / Path(u).name for u in urls]
    if len(set(targets)) != len(targets):
        raise ValueError(f"shards in '{shards}' share file names; their copies in {out} would collide")
    clashes = [u for u, t in zip(urls, targets) if t.resolve() == Path(u).resolve()]
    if clashes:
        raise ValueError(f"--out {out} would overwrite the input shards {clashes[:3]}: choose another folder")
    space = build_latent_space(cfg.diffusion)
    if not isinstance(space, VAELatents):
        raise ValueError("diffusion.latent_space is 'pixel': there is no VAE encoder to cache; set it to 'vae'")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    space = space.to(device).eval().requires_grad_(False)
    record = json.dumps(cache_record(cfg.diffusion)).encode()
    text = CaptionEncoder(cfg, device) if captions else None
    out.mkdir(parents=True, exist_ok=True)
    summary = LatentSummary(shards=[str(t) for t in targets], spec=str(out), captions=0 if captions else None)
    workers = min(num_workers, len(urls))
    loader = DataLoader(ShardImages(urls, cfg.diffusion.resolution), batch_size=None, num_workers=workers,
                        multiprocessing_context=worker_context("forkserver", ShardImages.__module__) if workers else None)
    sinks: dict[int, TarWriter] = {}
    pending: list[tuple[TarWriter, dict[str, Any], list[str], torch.Tensor]] = []
    bar = progress_bar(desc=f"encode-latents {out}", unit="sample", enabled=progress)
    shards_done = 0
    for kind, i, *rest in loader:
        if i not in sinks:  # whole-second mtime: no PAX header per member (see data_modules.writer)
            sinks[i] = TarWriter(str(targets[i]), mtime=int(time.time()))
        if kind == "end":
            _write_encoded(pending, space, record, summary, text)
            pending = []
            sinks.pop(i).close()
            shards_done += 1
            bar.set_postfix(shards=f"{shards_done}/{len(urls)}", refresh=False)
            continue
        summary.read += 1
        bar.update()
        if kind == "skip":
            summary.skip(log, *rest)
            continue
        sample, fields, pixels = rest
        pending.append((sinks[i], sample, fields, pixels))
        if sum(len(p[2]) for p in pending) >= batch_size:
            _write_encoded(pending, space, record, summary, text)
            pending = []
    bar.close()
    return summary


@torch.no_grad()
def _write_encoded(
    pending: list[tuple[TarWriter, dict[str, Any], list[str], torch.Tensor]],
    space: VAELatents,
    record: bytes,
    summary: LatentSummary,
    text: Optional[CaptionEncoder] = None,
) -> None:
    """Encode the images (and with ``text`` the captions) of ``pending`` in one batch and write
    each sample, with its caches, to its shard."""
    if not pending:
        return
    device = next(space.parameters()).device
    moments = space.moments(torch.cat([p[3] for p in pending]).to(device)).cpu().numpy()  # (n, 2c, h, w)
    captioned: dict[int, str] = {}  # index in pending -> caption
    if text is not None:
        for i, (_, sample, _, _) in enumerate(pending):
            try:
                captioned[i] = text.caption(sample)
            except BadSample as err:
                summary.problem(log, "no_caption", f"{sample.get('__url__')} sample '{sample.get('__key__')}'",
                                f"{err}; written without a caption embedding")
    embeddings = dict(zip(captioned, text(list(captioned.values())))) if captioned else {}  # i -> (L, C)
    start = 0
    for i, (sink, sample, fields, _) in enumerate(pending):
        written = copied_members(sample)
        for j, field in enumerate(fields):
            written[latent_field(field)] = array_to_bytes(moments[start + j])
        written[RECORD_FIELD] = record
        if i in embeddings:
            written[EMBEDDING_FIELD] = array_to_bytes(embeddings[i])
            written[CAPTION_RECORD_FIELD] = text.record
            summary.captions += 1
        start += len(fields)
        sink.write(written)
        summary.written += 1
        summary.parts += len(fields)
        summary.images += len(fields)
