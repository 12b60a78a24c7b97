"""CTC fine-tuning (wav2vec 2.0, section 3.3 / 4): a linear head over the characters on top of the
Transformer, trained with CTC (zero_infinity) under time and channel masking; the conv feature
encoder stays frozen and the Transformer is frozen for the first ``task.freeze_updates`` updates
(only the head trains then). Dev-set greedy CER/WER during training, decoded by the runtime's
CTC decoder (``w2v_serve.decoding``) and scored by ``w2v_serve.scoring``.
"""

from __future__ import annotations

import logging
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from training.checkpoint import load_checkpoint
from training.config import ConfigError
from training.data import AudioDataset, BucketBatcher, FinetuneCollater, filter_by_length, make_loader
from training.manifest import ManifestError, read_manifest
from training.masking import channel_mask, time_mask
from training.model import Wav2Vec2Model
from training.task import DistContext, StepOutput, frame_lengths_of
from training.train_config import finetuning_base
from w2v_serve.decoding import GREEDY, CTCDecoder, DecoderOptions
from w2v_serve.scoring import error_counts
from w2v_serve.vocab import Vocabulary

log = logging.getLogger("w2v.train")


class CtcObjective(nn.Module):
    """The model's CTC forward as one module DistributedDataParallel can wrap."""

    def __init__(self, model: Wav2Vec2Model) -> None:
        super().__init__()
        self.model = model

    def forward(self, waveforms: Tensor, lengths: Optional[Tensor], mask: Optional[Tensor],
                channels: Optional[Tensor], frozen: bool = False) -> tuple[Tensor, Tensor]:
        """-> (logits [B, T, V], frame lengths [B]). ``frozen``: no gradient below the head."""
        with torch.no_grad() if frozen else torch.enable_grad():
            features = self.model.extract(waveforms, lengths, mask, channels)
        context = features.context.detach() if frozen else features.context
        frame_lengths = features.lengths
        if frame_lengths is None:
            frame_lengths = torch.full((waveforms.shape[0],), context.shape[1], dtype=torch.long,
                                       device=context.device)
        return self.model.ctc_logits(context), frame_lengths


def ctc_loss_sum(logits: Tensor, frame_lengths: Tensor, targets: Tensor, target_lengths: Tensor,
                 blank: int = 0) -> Tensor:
    """CTC summed over the batch; impossible alignments (target longer than the input) give 0
    instead of inf (``zero_infinity``), as fairseq does."""
    log_probs = F.log_softmax(logits.float(), dim=-1).transpose(0, 1)  # [T, B, V]
    return F.ctc_loss(log_probs, targets, frame_lengths, target_lengths, blank=blank, reduction="sum",
                      zero_infinity=True)


def greedy_transcripts(decoder: CTCDecoder, logits: Tensor, frame_lengths: Tensor) -> list[str]:
    """Best-path transcripts of a batch of CTC logits [B, T, V], each row trimmed to its frame
    length, through the runtime's greedy decoder (``w2v transcribe`` decodes the same way)."""
    log_probs = F.log_softmax(logits.float(), dim=-1).cpu().numpy()
    return [decoder.decode(row[: int(n)]).text for row, n in zip(log_probs, frame_lengths.tolist())]


def build_vocab(cfg, texts: list[Optional[str]], init_vocab: Optional[Vocabulary]) -> Vocabulary:
    if cfg.data.vocab:
        return Vocabulary.load(cfg.data.vocab)
    if init_vocab is not None:
        return init_vocab
    if not any(texts):
        raise ManifestError("fine-tuning needs transcripts (.ltr/.wrd next to the .tsv, or 'text' in JSON lines)")
    return Vocabulary.from_characters("".join(t for t in texts if t))


def load_initial_weights(model: Wav2Vec2Model, path: str, fresh_top_layers: int = 0) -> dict:
    """Copy every tensor of a pre-trained / imported checkpoint that the model has with the same
    shape (the quantizer and contrastive heads are dropped; a new CTC head starts fresh).
    ``fresh_top_layers``: the last N Transformer blocks keep their fresh initialization (the top
    blocks of a pre-trained model are the most specific to the contrastive task)."""
    layers = model.config.num_layers
    if not 0 <= fresh_top_layers <= layers:
        raise ConfigError(f"task.fresh_top_layers={fresh_top_layers}: the model has {layers} Transformer blocks")
    ckpt = load_checkpoint(path)
    own = model.state_dict()
    skipped = tuple(f"encoder.layers.{i}." for i in range(layers - fresh_top_layers, layers))
    loaded, dropped = [], []
    for key, value in ckpt.model_state.items():
        if key.startswith(skipped):     # () when fresh_top_layers is 0: nothing is skipped
            dropped.append(key)
        elif key in own and tuple(own[key].shape) == tuple(value.shape):
            own[key] = value
            loaded.append(key)
        else:
            dropped.append(key)
    model.load_state_dict(own)
    fresh = sorted(set(own) - set(loaded))
    log.info("initialized from %s: %d tensors loaded, %d not used (%s), %d new (%s)", path, len(loaded),
             len(dropped), ", ".join(sorted({k.split('.')[0] for k in dropped})) or "-", len(fresh),
             ", ".join(sorted({k.split('.')[0] for k in fresh})) or "-")
    return {"loaded": loaded, "dropped": dropped, "fresh": fresh}


STANDARDIZE_UTTERANCES = 64


def output_layer_norm(model: Wav2Vec2Model) -> nn.LayerNorm:
    """The LayerNorm whose output is the Transformer's output c, which only the CTC head reads:
    the encoder's last one (pre-LN) or the last block's final one (post-LN)."""
    if model.config.layer_norm_first:
        return model.encoder.layer_norm
    return model.encoder.layers[-1].final_layer_norm


@torch.no_grad()
def standardize_output(model: Wav2Vec2Model, waveforms: list[Tensor], eps: float = 1e-5) -> dict:
    """Make c zero-mean, unit-variance per channel over ``waveforms`` (eval mode, no masking), by
    folding the affine map into the output LayerNorm: c = w·x̂ + b  ->  (c - μ)/σ = (w/σ)·x̂ + (b - μ)/σ.
    Exact; the exported graph is unchanged in shape.

    Why: a pre-trained model's c can hold most of its energy in a vector every frame shares and
    in a few outlier channels (measured on the low-resource model: 75% of the energy in the mean,
    channel RMS up to 6 against a median of 0.55), so a fresh linear head sees the differences
    between frames small and unevenly scaled; standardizing is what one does before a linear probe.
    """
    was_training = model.training
    model.eval()
    total = None
    count = 0
    for wav in waveforms:
        features, _ = model.encode_features(wav[None])
        context, _ = model.contextualize(features)
        c = context[0].double()
        sums = torch.stack([c.sum(0), c.pow(2).sum(0)])
        total = sums if total is None else total + sums
        count += c.shape[0]
    model.train(was_training)
    if not count:
        raise ManifestError("task.standardize_output needs training audio")
    mean = total[0] / count
    std = (total[1] / count - mean.pow(2)).clamp_min(0).add(eps).sqrt()
    norm = output_layer_norm(model)
    norm.weight.copy_((norm.weight.double() / std).to(norm.weight.dtype))
    norm.bias.copy_(((norm.bias.double() - mean) / std).to(norm.bias.dtype))
    log.info("standardized the Transformer output over %d frames of %d utterances: channel std median "
             "%.3f (min %.3f, max %.3f), energy in the mean vector %.0f%%", count, len(waveforms),
             float(std.median()), float(std.min()), float(std.max()),
             100 * float(mean.pow(2).sum() / (total[1] / count).sum()))
    return {"mean": mean.float(), "std": std.float(), "frames": count}


class FinetuneTask:
    """CTC fine-tuning as a ``training.task.Task``: data, the CTC objective, dev greedy CER/WER."""

    name = "finetune"

    def __init__(self, cfg) -> None:
        self.cfg = cfg
        utts = read_manifest(cfg.data.train, labels=cfg.data.labels) if cfg.data.train else []
        init_ckpt = load_checkpoint(cfg.task.init) if cfg.task.init else None
        self._vocab = build_vocab(cfg, [u.text for u in utts], init_ckpt.vocab if init_ckpt else None)
        self.decoder = CTCDecoder(self._vocab, DecoderOptions(method=GREEDY))   # dev CER/WER
        forced = {"quantizer": False, "vocab_size": len(self._vocab)}
        if cfg.task.freeze_feature_encoder:
            forced["feature_grad_mult"] = 0.0
        model_cfg = cfg.model.build(finetuning_base(init_ckpt.model_config) if init_ckpt else None, **forced)
        self.model = Wav2Vec2Model(model_cfg)
        if init_ckpt is not None:
            load_initial_weights(self.model, cfg.task.init, cfg.task.fresh_top_layers)
        if cfg.task.freeze_feature_encoder:
            for p in self.model.feature_extractor.parameters():
                p.requires_grad_(False)
        self.module = CtcObjective(self.model)

        self.dataset = None
        if utts:
            if any(u.text is None for u in utts):
                raise ManifestError(f"{cfg.data.train}: some utterances have no transcript")
            keep = filter_by_length(utts, cfg.data.min_sample_size, cfg.data.max_sample_size)
            if not keep:
                raise ManifestError(f"{cfg.data.train}: no utterance within data.min_sample_size.."
                                 f"data.max_sample_size samples")
            self.dataset = AudioDataset([utts[i] for i in keep])
            self.texts = [u.text for u in self.dataset.utterances]
            if cfg.task.standardize_output:
                # The first utterances in manifest order: every process computes the same (and a
                # resumed run overwrites the result with its checkpoint's weights anyway).
                audio = (self.dataset[i][1] for i in range(min(STANDARDIZE_UTTERANCES, len(self.dataset))))
                standardize_output(self.model, [torch.from_numpy(a) for a in audio if a is not None])
            self.batcher = BucketBatcher([u.num_samples for u in self.dataset.utterances], cfg.data.max_tokens,
                                         cfg.run.seed, cfg.data.max_batch_size, cfg.data.shuffle)
        self.valid = None
        if cfg.data.valid:
            vutts = read_manifest(cfg.data.valid, labels=cfg.data.labels)
            self.valid = AudioDataset([u for u in vutts if u.text is not None])
            self.valid_batcher = BucketBatcher([u.num_samples for u in self.valid.utterances],
                                               max(cfg.data.max_tokens, max(u.num_samples for u in self.valid.utterances)),
                                               cfg.run.seed, cfg.data.max_batch_size, shuffle=False)

    def vocab(self) -> Vocabulary:
        return self._vocab

    def find_unused_parameters(self) -> bool:
        return self.cfg.task.freeze_updates > 0 or self.model.config.layer_drop > 0

    def checkpoint_extra(self) -> dict:
        return {}

    def loaders(self, epoch: int, skip: int, ctx: DistContext):
        if self.dataset is None:
            raise ConfigError("data.train is not set")
        shard = self.batcher.shard(epoch, ctx.rank, ctx.world_size)
        collate = FinetuneCollater(self._vocab, self.texts)
        return make_loader(self.dataset, shard[skip:], collate, self.cfg.data.num_workers), len(shard)

    def draw_masks(self, frame_lengths: Tensor, num_frames: int, generator) -> tuple[Optional[Tensor], Optional[Tensor]]:
        c = self.model.config
        mask = None
        if c.mask_prob > 0:
            mask = time_mask(frame_lengths, num_frames, c.mask_prob, c.mask_length, c.mask_min_masks, generator,
                             require_same_masks=c.require_same_masks)
        channels = None
        if c.mask_channel_prob > 0:
            channels = channel_mask(frame_lengths.shape[0], c.embed_dim, c.mask_channel_prob, c.mask_channel_length,
                                    frame_lengths.device, generator, require_same_masks=c.require_same_masks)
        return mask, channels

    def step(self, wrapped: nn.Module, batch, update: int, ctx: DistContext, generator) -> StepOutput:
        frame_lengths, num_frames = frame_lengths_of(self.model, batch.waveforms, batch.lengths)
        mask, channels = self.draw_masks(frame_lengths, num_frames, generator)
        frozen = update < self.cfg.task.freeze_updates
        logits, frame_lengths = wrapped(batch.waveforms, batch.lengths, mask, channels, frozen)
        loss = ctc_loss_sum(logits, frame_lengths, batch.targets, batch.target_lengths, self._vocab.blank_id)
        utterances = ctx.sum(torch.tensor(float(len(batch.indices)), device=loss.device))
        stats = {"ctc": loss.detach(), "utterances": torch.tensor(float(len(batch.indices))),
                 "frames": frame_lengths.sum().float(), "target_tokens": batch.target_lengths.sum().float()}
        return StepOutput(loss, float(utterances), stats, {"frozen": float(frozen)})

    def log_record(self, sums: dict, gauges: dict, updates: int = 1) -> dict:
        n = max(sums.get("utterances", 0.0), 1.0)
        return {"loss": sums.get("ctc", 0.0) / n,           # CTC per utterance (fairseq's sentence_avg)
                "loss_per_token": sums.get("ctc", 0.0) / max(sums.get("target_tokens", 0.0), 1.0),
                "utterances_per_update": n / max(updates, 1), "transformer_frozen": bool(gauges.get("frozen", 0.0))}

    def check_alarms(self, record: dict, update: int) -> list:
        return []

    @torch.no_grad()
    def evaluate(self, ctx: DistContext) -> Optional[dict]:
        """Greedy CER/WER on the dev manifest (split over the processes, counts all-reduced)."""
        if self.valid is None:
            return None
        self.model.eval()
        batches = self.valid_batcher.batches(0)[ctx.rank::ctx.world_size]
        loader = make_loader(self.valid, batches, FinetuneCollater(self._vocab, [u.text for u in self.valid.utterances]),
                             0)
        totals = torch.zeros(5, dtype=torch.float64, device=ctx.device)
        for batch in loader:
            if batch is None:
                continue
            batch = batch.to(ctx.device)
            logits, frame_lengths = self.module(batch.waveforms, batch.lengths, None, None)
            hyps = greedy_transcripts(self.decoder, logits, frame_lengths)
            counts = error_counts(batch.texts, hyps)
            loss = ctc_loss_sum(logits, frame_lengths, batch.targets, batch.target_lengths, self._vocab.blank_id)
            totals += torch.tensor([counts["char_errors"], counts["chars"], counts["word_errors"], counts["words"],
                                    float(loss)], dtype=torch.float64, device=ctx.device)
        self.model.train()
        totals = ctx.sum(totals).tolist()
        return {"cer": totals[0] / max(totals[1], 1), "wer": totals[2] / max(totals[3], 1),
                "loss": totals[4] / max(len(self.valid), 1), "utterances": len(self.valid)}
