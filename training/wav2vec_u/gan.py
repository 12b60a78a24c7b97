"""The wav2vec-U GAN (fairseq ``examples/wav2vec/unsupervised/models/wav2vec_u.py``, config
``config/gan/w2vu.yaml``), on CPU.

* Generator: dropout, then one 1-D convolution (kernel 4, padding 2, no bias) from the segment
  features to phone logits; optional BatchNorm of the input over valid positions and an optional
  residual linear layer (fairseq's ``generator_batch_norm`` / ``generator_residual``).
* JOIN segmentation of the logits: consecutive positions with the same argmax become one
  position — in training one random member's logits, in evaluation the mean of the run.
* Discriminator: a causal CNN over phone distributions (kernel 6, 384 channels, depth 2: a
  convolution into 384 channels, one inner convolution + GELU, a convolution to one score per
  position), the mean over valid positions is the utterance's score. "Real" inputs are one-hot
  phonemized text, "fake" ones the generator's softmax.
* Losses (summed over the batch, then divided by the batch size, as fairseq's trainer divides
  the gradients by ``sample_size``). Discriminator step: BCE(D(fake), 1) + BCE(D(real), 0) +
  1.5 x gradient penalty (WGAN-GP on interpolates of real and fake, the norm taken over the time
  axis, fairseq's quirk). Generator step: BCE(D(fake), 0) + 4.0 x code penalty ((V - perplexity of
  the batch-averaged softmax) / V) + 0.5 x smoothness penalty (mean squared difference of
  adjacent logits). Updates alternate: even updates train the generator, odd ones the discriminator.
* Optimizers: Adam, betas (0.5, 0.98), eps 1e-6; generator lr 4e-4, discriminator lr 5e-4 with
  decoupled weight decay 1e-4; gradient norm clipped at 5.

Differences from fairseq: the output units are the phones only (fairseq's dictionary also holds
``<s> <pad> </s> <unk>``, which the generator may emit and the code penalty counts); padded text
positions are zero vectors rather than one-hot ``<pad>``; the code penalty's perplexity is taken
over valid positions only (fairseq's includes the uniform softmax of padded positions).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from training.checkpoint import atomic_torch_save, safe_torch_load
from training.wav2vec_u.features import FeatureSet
from w2v_serve.scoring import edit_distance

log = logging.getLogger("w2v.wav2vec_u")

FORMAT = "w2v-wav2vec-u"
VERSION = 1


class GanError(ValueError):
    """A GAN checkpoint that is missing or of another kind, or data that does not fit."""


@dataclass
class GanConfig:
    """fairseq's ``Wav2vec_UConfig`` with ``config/gan/w2vu.yaml``'s values, and its optimization."""

    discriminator_dim: int = 384
    discriminator_depth: int = 2
    discriminator_kernel: int = 6
    discriminator_dilation: int = 1
    discriminator_causal: bool = True
    discriminator_linear_emb: bool = False
    discriminator_max_pool: bool = False
    discriminator_act_after_linear: bool = False
    discriminator_dropout: float = 0.0
    discriminator_weight_norm: bool = False
    generator_kernel: int = 4
    generator_dilation: int = 1
    generator_pad: int = -1            # -1: kernel // 2
    generator_bias: bool = False
    generator_dropout: float = 0.1
    generator_batch_norm: float = 0.0  # > 0: BatchNorm of the input, its weight initialized to this
    generator_residual: bool = False
    smoothness_weight: float = 0.5
    smoothing: float = 0.0             # label smoothing of the BCE targets
    smoothing_one_sided: bool = False
    gradient_penalty: float = 1.5
    code_penalty: float = 4.0
    join_segments: bool = True         # segmentation type JOIN (w2vu.yaml); False: NONE
    mean_pool_join: bool = False
    # optimization (w2vu.yaml's composite optimizer)
    batch_size: int = 160
    max_updates: int = 150000
    lr_generator: float = 4e-4
    lr_discriminator: float = 5e-4
    adam_beta1: float = 0.5
    adam_beta2: float = 0.98
    adam_eps: float = 1e-6
    weight_decay_generator: float = 0.0
    weight_decay_discriminator: float = 1e-4
    clip_norm: float = 5.0
    seed: int = 0

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "GanConfig":
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise GanError(f"unknown GAN option(s): {', '.join(sorted(unknown))}")
        return cls(**d)


# ---------------------------------------------------------------------------- networks
class SamePad(nn.Module):
    """Trim a padded convolution's output back to the input length (fairseq's ``SamePad``)."""

    def __init__(self, kernel_size: int, causal: bool) -> None:
        super().__init__()
        self.remove = kernel_size - 1 if causal else (1 if kernel_size % 2 == 0 else 0)

    def forward(self, x: Tensor) -> Tensor:
        return x[:, :, : -self.remove] if self.remove > 0 else x


class Discriminator(nn.Module):
    def __init__(self, num_phones: int, cfg: GanConfig) -> None:
        super().__init__()
        dim, k = cfg.discriminator_dim, cfg.discriminator_kernel
        padding = k - 1 if cfg.discriminator_causal else k // 2
        self.max_pool = cfg.discriminator_max_pool

        def conv(i: int, o: int, kernel: int, pad: int = 0, dilation: int = 1) -> nn.Module:
            c = nn.Conv1d(i, o, kernel_size=kernel, padding=pad, dilation=dilation)
            return nn.utils.parametrizations.weight_norm(c) if cfg.discriminator_weight_norm else c

        if cfg.discriminator_linear_emb:
            emb: list[nn.Module] = [conv(num_phones, dim, 1)]
        else:
            emb = [conv(num_phones, dim, k, padding), SamePad(k, cfg.discriminator_causal)]
        if cfg.discriminator_act_after_linear:
            emb.append(nn.GELU())
        inner: list[nn.Module] = []
        for _ in range(cfg.discriminator_depth - 1):
            inner += [conv(dim, dim, k, padding, cfg.discriminator_dilation), SamePad(k, cfg.discriminator_causal),
                      nn.Dropout(cfg.discriminator_dropout), nn.GELU()]
        self.net = nn.Sequential(*emb, nn.Dropout(cfg.discriminator_dropout), *inner,
                                 conv(dim, 1, k, padding), SamePad(k, cfg.discriminator_causal))

    def forward(self, x: Tensor, padding: Optional[Tensor]) -> Tensor:
        """x [B, T, V] phone distributions, padding [B, T] (True: padded) -> one score per row [B]."""
        y = self.net(x.transpose(1, 2)).squeeze(1)  # [B, T]
        if padding is not None and padding.any():
            padding = padding[:, : y.shape[1]]
            y = y.masked_fill(padding, float("-inf") if self.max_pool else 0.0)
            sizes = (~padding).sum(1).clamp_min(1)
        else:
            sizes = torch.full((y.shape[0],), y.shape[1], device=y.device)
        if self.max_pool:
            return y.max(1).values
        return y.sum(1) / sizes


class Generator(nn.Module):
    def __init__(self, input_dim: int, num_phones: int, cfg: GanConfig) -> None:
        super().__init__()
        self.dropout = nn.Dropout(cfg.generator_dropout)
        pad = cfg.generator_kernel // 2 if cfg.generator_pad < 0 else cfg.generator_pad
        self.proj = nn.Conv1d(input_dim, num_phones, kernel_size=cfg.generator_kernel, padding=pad,
                              dilation=cfg.generator_dilation, bias=cfg.generator_bias)
        self.bn: Optional[nn.BatchNorm1d] = None
        if cfg.generator_batch_norm:
            self.bn = nn.BatchNorm1d(input_dim)
            self.bn.weight.data.fill_(cfg.generator_batch_norm)
        self.in_proj: Optional[nn.Linear] = nn.Linear(input_dim, input_dim) if cfg.generator_residual else None

    def forward(self, x: Tensor, padding: Tensor) -> tuple[Tensor, Tensor]:
        """x [B, T, D], padding [B, T] -> logits [B, T', V], padding [B, T'] (kernel 4, padding 2:
        T' = T + 1, and as in fairseq the mask is shifted right by the length difference)."""
        if self.bn is not None:
            normed = x.clone()
            normed[~padding] = self.bn(x[~padding])
            x = normed
        if self.in_proj is not None:
            x = x + self.in_proj(self.dropout(x))
        x = self.proj(self.dropout(x).transpose(1, 2)).transpose(1, 2)
        diff = x.shape[1] - padding.shape[1]
        if diff > 0:
            padding = torch.cat([padding.new_zeros(padding.shape[0], diff), padding], 1)
        elif diff < 0:
            padding = padding[:, :diff]
        return x, padding


def join_segments(logits: Tensor, padding: Tensor, training: bool, mean_pool_join: bool = False) -> tuple[Tensor, Tensor]:
    """fairseq's ``JoinSegmenter.logit_segment``: runs of consecutive positions with the same
    argmax become one position: in training (unless ``mean_pool_join``) the logits of one random
    member of the run, otherwise the run's mean. Rows are left-aligned and zero-padded."""
    preds = logits.argmax(-1).masked_fill(padding, -1)
    b, _, v = logits.shape
    runs = [torch.unique_consecutive(p, return_inverse=True, return_counts=True) for p in preds]
    new_t = max(len(u) for u, _, _ in runs)
    new_pad = padding.new_ones(b, new_t)
    rows = []
    for i, (u, inverse, counts) in enumerate(runs):
        keep = u != -1
        if training and not mean_pool_join:
            starts = torch.cumsum(counts, 0) - counts
            offset = (counts.float() * torch.rand(len(counts))).long()
            picked = logits[i, starts + offset]
        else:
            sums = logits.new_zeros(len(u), v).index_add(0, inverse, logits[i])
            picked = sums / counts.unsqueeze(1).to(logits.dtype)
        picked = picked[keep]
        rows.append(picked)
        new_pad[i, : len(picked)] = False
    if not rows:
        return logits.new_zeros(b, new_t, v), new_pad
    return torch.stack([F.pad(r, (0, 0, 0, new_t - len(r))) for r in rows]), new_pad


# ---------------------------------------------------------------------------- penalties
def code_penalty(logits: Tensor, padding: Optional[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
    """(V - prob_perplexity) / V, prob_perplexity and code_perplexity (of the hard argmax), over
    valid positions: the perplexity of the batch-averaged softmax (fairseq's ``normalize``)."""
    v = logits.shape[-1]
    flat = logits.reshape(-1, v)
    if padding is not None:
        flat = flat[~padding.reshape(-1)]
    avg = torch.softmax(flat.float(), -1).mean(0)
    prob_ppl = torch.exp(-(avg * torch.log(avg + 1e-7)).sum())
    hard = torch.bincount(flat.argmax(-1), minlength=v).float() / max(len(flat), 1)
    code_ppl = torch.exp(-(hard * torch.log(hard + 1e-7)).sum())
    return (v - prob_ppl) / v, prob_ppl, code_ppl


def smoothness_penalty(logits: Tensor, padding: Tensor) -> Tensor:
    """Mean over all [B, T-1, V] entries of (l_t - l_{t+1})^2, zero where t+1 is padding
    (fairseq's ``smoothness_loss.mean()``: the zeros count in the mean)."""
    sq = (logits[:, :-1] - logits[:, 1:]).pow(2)
    sq = sq.masked_fill(padding[:, 1:].unsqueeze(-1), 0.0)
    return sq.mean()


def gradient_penalty(discriminator: nn.Module, real: Tensor, fake: Tensor, alpha: Optional[Tensor] = None) -> Tensor:
    """fairseq's ``calc_gradient_penalty``: real and fake cut to their common batch and length,
    interpolated with one uniform alpha per row, D's gradient at the interpolates; per row and
    phone, (||grad||_2 over time - 1)^2; summed."""
    b = min(real.shape[0], fake.shape[0])
    t = min(real.shape[1], fake.shape[1])
    real, fake = real[:b, :t], fake[:b, :t]
    if alpha is None:
        alpha = torch.rand(b, 1, 1)
    x = (alpha * real + (1 - alpha) * fake).detach().requires_grad_(True)
    y = discriminator(x, None)
    (grad,) = torch.autograd.grad(y, x, grad_outputs=torch.ones_like(y), create_graph=True, retain_graph=True)
    return ((grad.norm(2, dim=1) - 1) ** 2).sum()


# ---------------------------------------------------------------------------- the model
class Wav2vecU(nn.Module):
    def __init__(self, input_dim: int, num_phones: int, cfg: GanConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.input_dim, self.num_phones = input_dim, num_phones
        self.generator = Generator(input_dim, num_phones, cfg)
        self.discriminator = Discriminator(num_phones, cfg)

    def generate(self, feats: Tensor, padding: Tensor) -> tuple[Tensor, Tensor]:
        """Segment features -> (joined) phone logits and their padding."""
        logits, pad = self.generator(feats, padding)
        if self.cfg.join_segments:
            logits, pad = join_segments(logits, pad, self.training, self.cfg.mean_pool_join)
        return logits, pad

    def losses(self, feats: Tensor, padding: Tensor, tokens: Tensor, token_padding: Tensor,
               d_step: bool) -> dict[str, Tensor]:
        """One step's losses, already divided by the batch size (fairseq divides the gradients).
        tokens [B', L] phone ids (padding positions ignored)."""
        cfg = self.cfg
        bsz = feats.shape[0]
        fake_smooth = 0.0 if cfg.smoothing_one_sided else cfg.smoothing
        real_smooth = cfg.smoothing
        if d_step:
            with torch.no_grad():
                logits, pad = self.generate(feats, padding)
        else:
            logits, pad = self.generate(feats, padding)
        dense_x = logits.softmax(-1)
        token_x = F.one_hot(tokens.clamp_min(0), self.num_phones).to(dense_x.dtype)
        token_x = token_x.masked_fill(token_padding.unsqueeze(-1), 0.0)
        dense_y = self.discriminator(dense_x, pad)
        out: dict[str, Tensor] = {}
        _, prob_ppl, code_ppl = code_penalty(logits.detach(), pad)
        out["prob_ppl"], out["code_ppl"] = prob_ppl, code_ppl
        out["max_prob"] = dense_x.detach().max(-1).values[~pad].mean()
        if d_step:
            token_y = self.discriminator(token_x, token_padding)
            out["dense_d"] = F.binary_cross_entropy_with_logits(
                dense_y, torch.full_like(dense_y, 1.0 - fake_smooth), reduction="sum") / bsz
            out["token_d"] = F.binary_cross_entropy_with_logits(
                token_y, torch.full_like(token_y, real_smooth), reduction="sum") / bsz
            loss = out["dense_d"] + out["token_d"]
            if cfg.gradient_penalty > 0:
                out["grad_pen"] = gradient_penalty(self.discriminator, token_x, dense_x) * cfg.gradient_penalty / bsz
                loss = loss + out["grad_pen"]
        else:
            out["dense_g"] = F.binary_cross_entropy_with_logits(
                dense_y, torch.full_like(dense_y, fake_smooth), reduction="sum") / bsz
            loss = out["dense_g"]
            if cfg.code_penalty > 0:
                pen, _, _ = code_penalty(logits, pad)
                out["code_pen"] = pen * cfg.code_penalty
                loss = loss + out["code_pen"]
            if cfg.smoothness_weight > 0:
                out["smoothness"] = smoothness_penalty(logits, pad) * cfg.smoothness_weight
                loss = loss + out["smoothness"]
        out["loss"] = loss
        return out

    @torch.no_grad()
    def decode(self, feats: Sequence[np.ndarray | Tensor], silence: Optional[int] = None,
               batch_size: int = 64) -> list[list[int]]:
        """Greedy decoding (eval mode): generator, JOIN with mean logits, argmax, repeats merged,
        silence dropped."""
        was = self.training
        self.eval()
        out: list[list[int]] = []
        try:
            for start in range(0, len(feats), batch_size):
                x, pad = pad_batch([torch.as_tensor(np.asarray(f)) for f in feats[start:start + batch_size]])
                logits, lpad = self.generate(x, pad)
                for row, p in zip(logits.argmax(-1), lpad):
                    ids = torch.unique_consecutive(row[~p]).tolist()
                    out.append([i for i in ids if i != silence])
        finally:
            self.train(was)
        return out


def pad_batch(items: Sequence[Tensor], value: float = 0.0) -> tuple[Tensor, Tensor]:
    """[T_i, ...] tensors -> [B, T_max, ...] and the padding mask [B, T_max] (True: padded)."""
    t = max((len(x) for x in items), default=0)
    out = items[0].new_full((len(items), t, *items[0].shape[1:]), value)
    pad = torch.ones(len(items), t, dtype=torch.bool)
    for i, x in enumerate(items):
        out[i, : len(x)] = x
        pad[i, : len(x)] = False
    return out, pad


def phone_error_rate(refs: Sequence[Sequence], hyps: Sequence[Sequence]) -> tuple[float, int, int]:
    """(PER, edit operations, reference phones) summed over utterances."""
    errors = sum(edit_distance(list(r), list(h)) for r, h in zip(refs, hyps))
    n = sum(len(r) for r in refs)
    return errors / max(n, 1), errors, n


# ---------------------------------------------------------------------------- training
@dataclass
class GanData:
    train: FeatureSet                      # segment features of the training audio
    text: list[list[int]]                  # phone ids of the unpaired text
    silence: Optional[int] = None
    valid: Optional[FeatureSet] = None     # held-out training audio for unsupervised selection
    monitor: Optional[FeatureSet] = None   # labeled audio, for logging PER only (never for selection)
    monitor_refs: Optional[list[list[int]]] = None


def unsupervised_metric(model: Wav2vecU, feats: FeatureSet, lm: Any, phones: Sequence[str],
                        silence: Optional[int]) -> dict[str, float]:
    """fairseq's ``weighted_lm_ppl``: the LM perplexity of the transcriptions divided by the
    squared share of the phone inventory they use (lower is better; no labels involved)."""
    hyps = model.decode(list(feats), silence)
    n_units = len(phones) - (silence is not None)
    seen = {i for h in hyps for i in h}
    score = sum(lm.score([phones[i] for i in h]) for h in hyps)
    lm_ppl = 10 ** (-score / max(sum(len(h) for h in hyps) + len(hyps), 1))
    usage = len(seen) / max(n_units, 1)
    return {"lm_ppl": lm_ppl, "vocab_seen_pct": usage,
            "weighted_lm_ppl": lm_ppl / usage ** 2 if usage > 0 else math.inf}


def _batch(data: GanData, rng: np.random.Generator, size: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    idx = rng.integers(0, len(data.train), size)
    feats, pad = pad_batch([torch.from_numpy(np.array(data.train[i], dtype=np.float32)) for i in idx])
    tidx = rng.integers(0, len(data.text), size)
    tokens, tpad = pad_batch([torch.tensor(data.text[i], dtype=torch.long) for i in tidx], value=-1)
    return feats, pad, tokens, tpad


def _optimizers(model: Wav2vecU, cfg: GanConfig) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer]:
    betas = (cfg.adam_beta1, cfg.adam_beta2)
    g = torch.optim.AdamW(model.generator.parameters(), lr=cfg.lr_generator, betas=betas, eps=cfg.adam_eps,
                          weight_decay=cfg.weight_decay_generator)
    d = torch.optim.AdamW(model.discriminator.parameters(), lr=cfg.lr_discriminator, betas=betas, eps=cfg.adam_eps,
                          weight_decay=cfg.weight_decay_discriminator)
    return g, d


def save_gan(path: Path, model: Wav2vecU, phones: dict, update: int, extra: Optional[dict] = None,
             optimizers: Optional[tuple] = None) -> None:
    state: dict[str, Any] = {"format": FORMAT, "version": VERSION, "config": asdict(model.cfg),
                             "input_dim": model.input_dim, "phones": phones, "update": update,
                             "generator": {k: v.detach().clone() for k, v in model.generator.state_dict().items()},
                             "discriminator": {k: v.detach().clone() for k, v in model.discriminator.state_dict().items()},
                             "extra": extra or {}}
    if optimizers is not None:
        state["optim_g"], state["optim_d"] = optimizers[0].state_dict(), optimizers[1].state_dict()
    atomic_torch_save(state, path)


def load_gan(path: str | Path) -> tuple[Wav2vecU, dict]:
    d = safe_torch_load(path)
    if not isinstance(d, dict) or d.get("format") != FORMAT:
        raise GanError(f"{path}: not a wav2vec-U GAN checkpoint")
    cfg = GanConfig.from_dict(d["config"])
    model = Wav2vecU(int(d["input_dim"]), len(d["phones"]["phones"]), cfg)
    model.generator.load_state_dict(d["generator"])
    model.discriminator.load_state_dict(d["discriminator"])
    return model, d


def train_gan(data: GanData, phones: Any, cfg: GanConfig, out_dir: Path, lm: Any = None,
              log_interval: int = 100, eval_interval: int = 500, resume: bool = True,
              time_budget_s: float = 0.0, callback: Optional[Callable[[int, dict], None]] = None) -> dict[str, Any]:
    """Alternating generator/discriminator updates up to ``cfg.max_updates`` (or ``time_budget_s``
    of wall time, when > 0). Every ``eval_interval`` updates: the unsupervised metric on
    ``data.valid`` (with ``lm``; ``checkpoint_best.pt`` keeps the lowest) and, for the log only,
    the PER on ``data.monitor``; ``checkpoint_last.pt`` is written then (atomically) and a run
    resumes from it. Returns a summary."""
    out_dir.mkdir(parents=True, exist_ok=True)
    names = list(phones.phones)
    torch.manual_seed(cfg.seed)
    model = Wav2vecU(data.train.dim, len(names), cfg)
    opt_g, opt_d = _optimizers(model, cfg)
    start, best, history = 0, math.inf, []
    last = out_dir / "checkpoint_last.pt"
    if resume and last.exists():
        _, d = load_gan(last)
        if d["input_dim"] != data.train.dim or d["phones"]["phones"] != names:
            raise GanError(f"{last} was trained on other features or phones; remove it or pass --no-resume")
        try:
            model.generator.load_state_dict(d["generator"])
            model.discriminator.load_state_dict(d["discriminator"])
            opt_g.load_state_dict(d["optim_g"])
            opt_d.load_state_dict(d["optim_d"])
        except (RuntimeError, ValueError, KeyError) as e:
            raise GanError(f"{last} does not fit this GAN configuration ({str(e).splitlines()[0]}); "
                           "remove it or pass --no-resume") from e
        start = int(d["update"])
        best = float(d["extra"].get("best_metric", math.inf))
        history = list(d["extra"].get("history", []))
        log.info("resuming from %s at update %d", last, start)
    model.train()
    t0 = time.monotonic()
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    update = start

    def evaluate(update: int) -> dict[str, float]:
        rec: dict[str, float] = {"update": update, "elapsed_s": round(time.monotonic() - t0, 1)}
        if data.valid is not None and lm is not None and len(data.valid):
            rec.update(unsupervised_metric(model, data.valid, lm, names, data.silence))
        if data.monitor is not None and data.monitor_refs is not None and len(data.monitor):
            hyps = model.decode(list(data.monitor), data.silence)
            rec["monitor_per"] = phone_error_rate(data.monitor_refs, hyps)[0]
        return rec

    def checkpoint(update: int, rec: dict) -> None:
        nonlocal best
        metric = rec.get("weighted_lm_ppl", math.inf)
        if metric < best or not (out_dir / "checkpoint_best.pt").exists():
            best = min(best, metric)
            save_gan(out_dir / "checkpoint_best.pt", model, phones.to_dict(), update,
                     {"metric": rec, "best_metric": best})
        save_gan(last, model, phones.to_dict(), update, {"best_metric": best, "history": history}, (opt_g, opt_d))

    while update < cfg.max_updates:
        if time_budget_s > 0 and time.monotonic() - t0 > time_budget_s:
            log.info("time budget of %.0f s spent at update %d", time_budget_s, update)
            break
        d_step = update % 2 == 1
        rng = np.random.default_rng([cfg.seed, update])
        torch.manual_seed(cfg.seed * 1_000_003 + update)
        feats, pad, tokens, tpad = _batch(data, rng, cfg.batch_size)
        group, opt = (model.discriminator, opt_d) if d_step else (model.generator, opt_g)
        other = model.generator if d_step else model.discriminator
        for p in other.parameters():
            p.requires_grad_(False)
        out = model.losses(feats, pad, tokens, tpad, d_step)
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        if cfg.clip_norm > 0:
            torch.nn.utils.clip_grad_norm_(group.parameters(), cfg.clip_norm)
        opt.step()
        for p in other.parameters():
            p.requires_grad_(True)
        for k, v in out.items():
            key = f"{k}_{'d' if d_step else 'g'}" if k in ("loss", "prob_ppl", "code_ppl", "max_prob") else k
            sums[key] = sums.get(key, 0.0) + float(v.detach())
            counts[key] = counts.get(key, 0) + 1
        update += 1
        if log_interval and update % log_interval == 0:
            means = {k: sums[k] / counts[k] for k in sorted(sums)}
            log.info("update %d: %s (%.2f s/update)", update, " ".join(f"{k}={v:.3f}" for k, v in means.items()),
                     (time.monotonic() - t0) / max(update - start, 1))
            if callback:
                callback(update, means)
            sums.clear()
            counts.clear()
        if eval_interval and update % eval_interval == 0:
            rec = evaluate(update)
            history.append(rec)
            log.info("eval at %d: %s", update, " ".join(f"{k}={v:.4g}" for k, v in rec.items()))
            checkpoint(update, rec)
    if not history or history[-1]["update"] != update:
        rec = evaluate(update)
        history.append(rec)
        log.info("eval at %d: %s", update, " ".join(f"{k}={v:.4g}" for k, v in rec.items()))
        checkpoint(update, rec)
    return {"updates": update, "elapsed_s": round(time.monotonic() - t0, 1), "best_weighted_lm_ppl": best,
            "history": history}
