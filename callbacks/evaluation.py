"""Evaluation during ``fit`` and ``validate``: the paper's metrics on validation items, to TensorBoard."""

from __future__ import annotations

import logging
import numbers
from typing import Optional

from lightning.pytorch import Callback, LightningModule, Trainer

from evaluation.extractors import ExtractorPaths, Extractors, load_extractors, tiny_extractors
from evaluation.items import SPEAKERS, decoding_preset, detect_protocol, read_items
from evaluation.protocols import ClipF1, Draw, ProtocolOptions, Run, comparison_grid, run_protocol
from evaluation.report import metric_value
from evaluation.systems import MiniGPT5System, VistPrompt, target_prompt
from evaluation.text_metrics import BleuTokens
from minigpt5.decoding import PRESETS, resolve_decoding
from minigpt5.generate import GenerationConfig

log = logging.getLogger(__name__)


class EvaluationCallback(Callback):
    """At the end of validation, every ``every_n_epochs`` epochs or ``every_n_steps`` optimizer
    steps, generate with classifier-free guidance for up to ``max_items`` validation items and
    log the protocol's metrics (``eval/<metric>``) and a grid (ground truth above generated).

    ``shards`` defaults to the DataModule's ``val_shards`` and ``protocol`` is read from them
    (pairs: cc3m, stories: vist, dialogues: mmdialog; the synthetic world's stories and
    dialogues: synthetic-vist, synthetic-dialog, scored by its rules). Runs on global rank 0 only, so it
    suits DDP; under FSDP or ZeRO-3, whose weights are sharded, evaluate checkpoints with
    ``minigpt5 eval`` instead. ``extractors="tiny"`` uses random small networks (offline
    runs, tests): their numbers only show the pipeline works.

    Decoding follows the protocol's preset (:mod:`minigpt5.decoding`), as ``minigpt5 eval``
    does; each decoding argument left at None keeps the preset's value. The protocol's
    choices are ``minigpt5 eval``'s, with its defaults: ``draw`` (``free``: the model decides
    whether to draw and ``eval/drawn`` logs the share it drew for; ``forced``: teacher-forced
    vokens; pairs and stories only, responses are always free), ``vist_prompt``, ``clip_f1``
    and ``bleu``. ``speakers`` (mmdialog: whose turns are targets) left at None follows the
    datamodule's ``choices.speakers``, the turns the model trains to write.
    """

    def __init__(
        self,
        every_n_epochs: Optional[int] = 1,
        every_n_steps: Optional[int] = None,
        max_items: int = 64,
        shards: Optional[str] = None,
        protocol: Optional[str] = None,
        targets: str = "all",
        context: str = "both",
        speakers: Optional[str] = None,
        extractors: str = "real",
        guidance_scale: Optional[float] = None,
        num_inference_steps: Optional[int] = None,
        max_new_tokens: Optional[int] = None,
        temperature: Optional[float] = None,
        top_p: Optional[float] = None,
        repetition_penalty: Optional[float] = None,
        penalty_scope: Optional[str] = None,
        seed: int = 42,
        paths: ExtractorPaths = ExtractorPaths(),
        grid_items: int = 8,
        draw: Draw = "free",
        vist_prompt: VistPrompt = "official",
        clip_f1: ClipF1 = "official",
        bleu: BleuTokens = "words",
    ) -> None:
        if (every_n_epochs is None) == (every_n_steps is None):
            raise ValueError("EvaluationCallback needs exactly one of every_n_epochs and every_n_steps")
        if (every_n_epochs or every_n_steps) < 1 or max_items < 2:
            raise ValueError("EvaluationCallback: the interval must be >= 1 and max_items >= 2")
        if speakers not in (None, *SPEAKERS):
            raise ValueError(f"EvaluationCallback.speakers must be one of {', '.join(SPEAKERS)} or None; "
                             f"got {speakers!r}")
        if extractors not in ("real", "tiny"):
            raise ValueError(f"EvaluationCallback.extractors must be real or tiny; got {extractors!r}")
        self.every_n_epochs, self.every_n_steps = every_n_epochs, every_n_steps
        self.max_items, self.shards, self.protocol = max_items, shards, protocol
        self.targets, self.context, self.extractor_kind, self.paths = targets, context, extractors, paths
        self.speakers = speakers
        self.decoding = dict(guidance_scale=guidance_scale, num_inference_steps=num_inference_steps,
                             max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                             repetition_penalty=repetition_penalty, penalty_scope=penalty_scope, seed=seed)
        for preset in PRESETS:  # a bad value fails here, not at the first evaluation
            resolve_decoding(preset, **self.decoding)
        self.grid_items = grid_items
        self.options = ProtocolOptions(draw=draw, clip_f1=clip_f1, bleu=bleu)
        self.vist_prompt = vist_prompt
        target_prompt("vist", vist_prompt)  # an unknown choice fails here, not at the first evaluation
        self._extractors: Optional[Extractors] = None
        self._last_step = -1
        self.last_run: Optional[Run] = None

    def generation_config(self, protocol: str) -> GenerationConfig:
        """The protocol's decoding preset under this callback's decoding arguments."""
        return resolve_decoding(decoding_preset(protocol), **self.decoding)

    def _due(self, trainer: Trainer) -> bool:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return False
        step = trainer.global_step
        if self.every_n_steps is not None:
            return self._last_step < 0 or step - self._last_step >= self.every_n_steps
        return (trainer.current_epoch + 1) % self.every_n_epochs == 0 or trainer.state.fn == "validate"

    def _shards(self, trainer: Trainer) -> Optional[str]:
        return self.shards or getattr(trainer.datamodule, "val_shards", None)

    def _speakers(self, trainer: Trainer) -> str:
        choices = getattr(trainer.datamodule, "choices", None)
        return self.speakers or getattr(choices, "speakers", "both")

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self._due(trainer):
            return
        shards = self._shards(trainer)
        if shards is None:
            log.warning("EvaluationCallback: no shards (set its `shards` or the DataModule's val_shards); skipped")
            return
        self._last_step = trainer.global_step
        protocol = self.protocol or detect_protocol(shards)
        if self._extractors is None:
            self._extractors = (tiny_extractors() if self.extractor_kind == "tiny"
                                else load_extractors(protocol, self.paths))
        self._extractors.to(pl_module.device)
        model = pl_module.model
        gen = self.generation_config(protocol)
        system = MiniGPT5System(model, gen, context="text" if model.vision is None else self.context,
                                prompt=target_prompt(protocol, self.vist_prompt))
        was_training = model.training
        model.eval()
        try:
            items = read_items(shards, protocol, self.targets, self.max_items, speakers=self._speakers(trainer))
            run = run_protocol(system, items, protocol, self._extractors, model.cfg.diffusion.resolution,
                               options=self.options.for_protocol(protocol), keep_examples=self.grid_items,
                               progress=False)
        finally:
            model.train(was_training)
        self.last_run = run
        self._log(trainer, run, model.cfg.diffusion.resolution)

    def _log(self, trainer: Trainer, run: Run, resolution: int) -> None:
        values = {k: metric_value(v) for k, v in run.metrics.items()}
        metrics = {f"eval/{k}": float(v) for k, v in values.items()
                   if isinstance(v, numbers.Number) and not isinstance(v, bool)}
        log.info("evaluation at step %d: %s", trainer.global_step, metrics)
        if trainer.logger is None:
            return
        trainer.logger.log_metrics(metrics, step=trainer.global_step)
        grid = comparison_grid(run, resolution)
        if grid is not None and hasattr(trainer.logger.experiment, "add_image"):
            trainer.logger.experiment.add_image("eval/samples", grid, trainer.global_step)
