"""Self-supervised pre-training: one forward pass of the paper's objective (section 3).

``draw_pretrain_inputs`` samples what is random about a step apart from dropout (span mask,
distractors, Gumbel noise) from one generator; ``pretrain_terms`` runs the model and computes
the loss terms. Both are pure functions of their arguments, which the tests use to compare with
transformers and to replay a distributed step in one process.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import NamedTuple, Optional

import torch
from torch import Tensor, nn

from training.config import ConfigError
from training.data import AudioDataset, BucketBatcher, PretrainCollater, filter_by_length, make_loader
from training.losses import (ContrastiveOutput, code_perplexity, contrastive_loss, diversity_loss, feature_penalty,
                             nats_to_bits, perplexity)
from training.feature_structure import MIN_GAP as MIN_STRUCTURE_GAP
from training.feature_structure import temporal_structure
from training.manifest import ManifestError, read_manifest
from training.masking import time_mask
from training.model import Wav2Vec2Model
from training.model.quantizer import QuantizerOutput, gumbel_temperature
from training.negatives import sample_negatives
from training.task import DistContext, StepOutput, frame_lengths_of

log = logging.getLogger("w2v.train")


@dataclass
class PretrainDraws:
    """The random choices of one pre-training step (besides dropout)."""

    mask: Tensor                           # [B, T] bool, masked time steps
    negatives: Tensor                      # [B, T, K] distractor time indices (same utterance)
    gumbel_noise: Optional[Tensor] = None  # [B, T, G, V] Gumbel(0, 1) noise for the quantizer

    def to(self, device: torch.device) -> "PretrainDraws":
        noise = self.gumbel_noise.to(device) if self.gumbel_noise is not None else None
        return PretrainDraws(self.mask.to(device), self.negatives.to(device), noise)

    @staticmethod
    def cat(draws: list["PretrainDraws"]) -> "PretrainDraws":
        """Join the draws of equally long batches (a distributed step replayed in one process)."""
        noise = None
        if all(d.gumbel_noise is not None for d in draws):
            noise = torch.cat([d.gumbel_noise for d in draws])
        return PretrainDraws(torch.cat([d.mask for d in draws]), torch.cat([d.negatives for d in draws]), noise)


def draw_pretrain_inputs(model: Wav2Vec2Model, frame_lengths: Tensor, num_frames: int, num_negatives: int,
                         generator: Optional[torch.Generator], with_noise: bool = True) -> PretrainDraws:
    """Span mask (p, M, ≥ min spans, padding excluded), K distractors per masked step and the
    quantizer's Gumbel noise, all on ``frame_lengths``' device."""
    cfg = model.config
    device = frame_lengths.device
    mask = time_mask(frame_lengths, num_frames, cfg.mask_prob, cfg.mask_length, cfg.mask_min_masks, generator,
                     require_same_masks=cfg.require_same_masks)
    negatives = sample_negatives(mask, num_negatives, generator)
    noise = None
    if with_noise:
        shape = (frame_lengths.shape[0], num_frames, cfg.num_codevector_groups, cfg.num_codevectors)
        gen_device = generator.device if generator is not None else device
        uniform = torch.rand(shape, generator=generator, device=gen_device).to(device)
        # Gumbel(0, 1) = -log(Exponential(1)) = -log(-log U); clamp keeps U off 0 and 1.
        noise = -torch.log(-torch.log(uniform.clamp(1e-10, 1.0 - 1e-7)))
    return PretrainDraws(mask, negatives, noise)


class PretrainTerms(NamedTuple):
    contrastive: ContrastiveOutput
    quantizer: QuantizerOutput        # avg_probs over the masked steps (the diversity term's p̄)
    num_masked_frames: Tensor         # float count of frames the quantizer statistics cover
    penalty_sum: Tensor               # Σ z² over valid frames
    penalty_count: Tensor             # number of elements in that sum


def pretrain_terms(model: Wav2Vec2Model, waveforms: Tensor, lengths: Optional[Tensor],
                   draws: PretrainDraws, temperature: float = 0.1) -> PretrainTerms:
    """Context c from masked features, targets q from the unmasked ones, and the loss terms."""
    if model.quantizer is None or model.project_q is None or model.project_context is None:
        raise ValueError("pre-training needs a model built with quantizer=True")
    features = model.extract(waveforms, lengths, draws.mask)
    context = model.project_context(features.context)
    quantizer_input = model.dropout_features(features.normed_features)
    q = model.quantizer(quantizer_input, frame_mask=draws.mask,
                        gumbel_noise=draws.gumbel_noise if model.quantizer.training else None)
    targets = model.project_q(q.quantized)
    contrastive = contrastive_loss(context, targets, draws.mask, draws.negatives, temperature)
    penalty_sum, penalty_count = feature_penalty(features.conv_features, features.lengths)
    return PretrainTerms(contrastive, q, draws.mask.sum().float(), penalty_sum, penalty_count)


class PretrainObjective(nn.Module):
    """The model plus its pre-training forward, as one module DistributedDataParallel can wrap."""

    def __init__(self, model: Wav2Vec2Model, temperature: float = 0.1) -> None:
        super().__init__()
        self.model = model
        self.temperature = temperature

    def forward(self, waveforms: Tensor, lengths: Optional[Tensor], mask: Tensor, negatives: Tensor,
                gumbel_noise: Optional[Tensor] = None) -> PretrainTerms:
        # Plain tensor arguments: DistributedDataParallel moves and inspects them.
        draws = PretrainDraws(mask, negatives, gumbel_noise)
        return pretrain_terms(self.model, waveforms, lengths, draws, self.temperature)


# ---------------------------------------------------------------------------- the training task
class PretrainTask:
    """Pre-training as a ``training.task.Task``: data, one micro-batch's objective, logging and
    the collapse / chance-accuracy alarms."""

    name = "pretrain"

    def __init__(self, cfg, model: Optional[Wav2Vec2Model] = None) -> None:
        self.cfg = cfg
        if model is None:
            model = Wav2Vec2Model(cfg.model.build(quantizer=True, vocab_size=None))
            assert model.quantizer is not None
            nn.init.normal_(model.quantizer.weight_proj.weight, mean=0.0, std=cfg.task.codebook_init_std)
        self.model = model
        self.module = PretrainObjective(self.model, cfg.task.logit_temp)
        self.draw_override: Optional[PretrainDraws] = None   # replay exact draws (tests, debugging)
        self.structure_checked = False
        self.last_draws: Optional[PretrainDraws] = None
        self.dataset = None
        if cfg.data.train:
            utts = read_manifest(cfg.data.train, labels=None)
            keep = filter_by_length(utts, cfg.data.min_sample_size, None)
            if not keep:
                raise ManifestError(f"{cfg.data.train}: no utterance of at least data.min_sample_size="
                                 f"{cfg.data.min_sample_size} samples")
            self.dataset = AudioDataset([utts[i] for i in keep])
            sizes = [min(u.num_samples, cfg.data.max_sample_size) for u in self.dataset.utterances]
            self.batcher = BucketBatcher(sizes, cfg.data.max_tokens, cfg.run.seed, cfg.data.max_batch_size,
                                         cfg.data.shuffle)

    def find_unused_parameters(self) -> bool:
        return self.model.config.layer_drop > 0

    def vocab(self):
        return None

    def checkpoint_extra(self) -> dict:
        return {}

    def evaluate(self, ctx: DistContext):
        return None

    def loaders(self, epoch: int, skip: int, ctx: DistContext):
        if self.dataset is None:
            raise ConfigError("data.train is not set")
        shard = self.batcher.shard(epoch, ctx.rank, ctx.world_size)
        collate = PretrainCollater(self.cfg.run.seed, epoch, self.cfg.data.max_sample_size,
                                   self.cfg.data.crop_to_shortest)
        return make_loader(self.dataset, shard[skip:], collate, self.cfg.data.num_workers), len(shard)

    def step(self, wrapped: nn.Module, batch, update: int, ctx: DistContext,
             generator: Optional[torch.Generator]) -> StepOutput:
        task, model = self.cfg.task, self.model
        assert model.quantizer is not None
        model.quantizer.temperature = gumbel_temperature(update, *task.latent_temp)
        waveforms = batch.waveforms
        lengths = None if bool((batch.lengths == waveforms.shape[1]).all()) else batch.lengths
        frame_lengths, num_frames = frame_lengths_of(model, waveforms, lengths)
        if not self.structure_checked and lengths is None and ctx.is_main:
            self.structure_checked = True
            self._check_feature_structure(waveforms, update)
        if self.draw_override is not None:
            draws = self.draw_override.to(waveforms.device)
        else:
            draws = draw_pretrain_inputs(model, frame_lengths, num_frames, task.num_negatives, generator)
        self.last_draws = draws
        terms: PretrainTerms = wrapped(waveforms, lengths, draws.mask, draws.negatives, draws.gumbel_noise)
        c, q = terms.contrastive, terms.quantizer

        # Global counts: the loss is a sum over every process's masked steps (see trainer.py).
        counts = ctx.sum(torch.stack([c.num_masked.float(), terms.penalty_count.float(),
                                      terms.num_masked_frames.float()]))
        n_masked, n_penalty, n_frames = counts[0], counts[1].clamp(min=1), counts[2].clamp(min=1)
        prob_sum = q.avg_probs * terms.num_masked_frames.clamp(min=1)
        global_probs = ctx.sum_with_grad(prob_sum) / n_frames
        diversity = diversity_loss(global_probs)
        penalty = task.feature_penalty_weight * n_masked * terms.penalty_sum / n_penalty
        diversity_term = task.diversity_weight * n_masked * diversity / ctx.world_size
        objective = c.loss + diversity_term + penalty

        # fairseq's code perplexity: the histogram of argmax(l), no Gumbel noise, over every process.
        code_ppl = code_perplexity(ctx.sum(q.code_counts))
        stats = {"loss": objective.detach(), "contrastive": c.loss.detach(), "diversity": diversity_term.detach(),
                 "penalty": penalty.detach(), "masked": c.num_masked.float(), "correct": c.correct.float(),
                 "chance": c.chance, "identical": c.identical.float(),
                 "candidates": c.num_masked.float() * draws.negatives.shape[-1]}
        gauges = {"prob_perplexity": float(perplexity(global_probs.detach())), "code_perplexity": float(code_ppl),
                  "temperature": float(model.quantizer.temperature)}
        return StepOutput(objective, float(n_masked), stats, gauges)

    def _check_feature_structure(self, waveforms: Tensor, update: int) -> None:
        """Once per run: warn when the encoder's features have no temporal structure (the
        quantized targets are then unpredictable and the contrastive loss tends to sit at chance)."""
        s = temporal_structure(self.model, waveforms, torch.Generator().manual_seed(0))
        message = (f"conv features at update {update}: cosine of adjacent frames {s.adjacent:.3f}, of random frames "
                   f"of the same utterance {s.random:.3f}")
        if s.gap < MIN_STRUCTURE_GAP:
            log.warning("%s: no temporal structure (gap %.3f < %.2f), so the quantized targets are close to "
                        "unpredictable and the contrastive loss may sit at chance; BASE's first conv block "
                        "(model.extractor_mode=default) gives structure at init (training/feature_structure.py)",
                        message, s.gap, MIN_STRUCTURE_GAP)
        else:
            log.info("%s (gap %.3f)", message, s.gap)

    def log_record(self, sums: dict, gauges: dict, updates: int = 1) -> dict:
        n = max(sums.get("masked", 0.0), 1.0)
        g = self.model.config.num_codevector_groups
        v = self.model.config.num_codevectors
        return {
            # Per masked step, in bits as fairseq logs them (loss / sample_size / ln 2).
            "loss": nats_to_bits(sums.get("loss", 0.0) / n),
            "contrastive": nats_to_bits(sums.get("contrastive", 0.0) / n),
            "diversity": nats_to_bits(sums.get("diversity", 0.0) / n),       # α·L_d
            "feature_penalty": nats_to_bits(sums.get("penalty", 0.0) / n),   # weight · mean z²
            "accuracy": sums.get("correct", 0.0) / n,
            "chance": sums.get("chance", 0.0) / n,
            "identical_distractors": sums.get("identical", 0.0) / max(sums.get("candidates", 0.0), 1.0),
            "masked_per_update": n / max(updates, 1),
            "codebook_size": g * v,
            **gauges,
        }

    def check_alarms(self, record: dict, update: int) -> list:
        task = self.cfg.task
        if update < task.alarm_after:
            return []
        alarms = []
        g = self.model.config.num_codevector_groups
        per_group = record.get("code_perplexity", float("inf")) / g
        if per_group < task.collapse_perplexity:
            alarms.append(
                f"codebook collapse at update {update}: code perplexity {record['code_perplexity']:.2f} over {g} "
                f"codebook(s) of {self.model.config.num_codevectors} (≈{per_group:.2f} entries in use per codebook; "
                f"prob perplexity {record.get('prob_perplexity', float('nan')):.2f}). Distractors now equal their "
                f"positives ({100 * record.get('identical_distractors', 0):.0f}%), so the contrastive accuracy means "
                f"nothing. Usual causes: learning rate too high, diversity_weight too low, un-normalized input, "
                f"Gumbel temperature decaying too fast.")
        chance = record.get("chance", 0.0)
        if record.get("accuracy", 0.0) < task.chance_factor * chance:
            alarms.append(
                f"contrastive accuracy {record.get('accuracy', 0.0):.3f} is at chance level ({chance:.3f}) after "
                f"{update} updates: the model is not learning to tell the masked step's code from distractors. "
                f"Check the data (silence? all crops identical?), the learning rate and warm-up, and masking.")
        return alarms
