"""The gate before the GAN: a linear CTC phone probe on the frozen features.

If a linear map from the chosen layer's frames to phones (plus a CTC blank), trained with the
true phone labels, cannot transcribe held-out speech reasonably (PER <= 40 % by default), the
layer does not carry phones in a linearly readable form, and the GAN — one convolution from
(pooled) features of that layer to phones, trained without labels — will not find them either.
The probe uses labels; it is a diagnostic, never part of the unsupervised system.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from typing import Any, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from training.wav2vec_u.features import FeatureSet
from training.wav2vec_u.gan import pad_batch, phone_error_rate

log = logging.getLogger("w2v.wav2vec_u")

DEFAULT_GATE = 0.40


class ProbeError(ValueError):
    """No training utterance the probe can use."""


@dataclass
class ProbeConfig:
    updates: int = 2000
    lr: float = 2e-3
    batch_size: int = 16
    weight_decay: float = 0.0
    seed: int = 0


class LinearProbe(nn.Module):
    """Standardized features -> (blank + phones) logits. Blank is index 0; phone i is i + 1."""

    def __init__(self, dim: int, num_phones: int, mean: Optional[Tensor] = None, std: Optional[Tensor] = None) -> None:
        super().__init__()
        self.register_buffer("mean", mean if mean is not None else torch.zeros(dim))
        self.register_buffer("std", std if std is not None else torch.ones(dim))
        self.linear = nn.Linear(dim, num_phones + 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear((x - self.mean) / self.std)

    @torch.no_grad()
    def decode(self, feats: Sequence[np.ndarray], batch_size: int = 64) -> list[list[int]]:
        """Greedy CTC: argmax per frame, repeats merged, blanks dropped; phone ids (0-based)."""
        out = []
        for start in range(0, len(feats), batch_size):
            x, pad = pad_batch([torch.from_numpy(np.array(f, dtype=np.float32)) for f in feats[start:start + batch_size]])
            for row, p in zip(self(x).argmax(-1), pad):
                ids = torch.unique_consecutive(row[~p]).tolist()
                out.append([i - 1 for i in ids if i != 0])
        return out


def feature_stats(feats: FeatureSet, chunk: int = 65536) -> tuple[Tensor, Tensor]:
    """Per-dimension mean and standard deviation over all frames (float64 accumulation)."""
    n = len(feats.data)
    s = np.zeros(feats.dim)
    sq = np.zeros(feats.dim)
    for start in range(0, n, chunk):
        x = np.asarray(feats.data[start:start + chunk], dtype=np.float64)
        s += x.sum(0)
        sq += (x * x).sum(0)
    mean = s / max(n, 1)
    std = np.sqrt(np.maximum(sq / max(n, 1) - mean * mean, 1e-10))
    return torch.tensor(mean, dtype=torch.float32), torch.tensor(std, dtype=torch.float32)


def train_probe(feats: FeatureSet, targets: Sequence[Sequence[int]], num_phones: int, cfg: ProbeConfig,
                time_budget_s: float = 0.0, log_interval: int = 200) -> tuple[LinearProbe, dict[str, Any]]:
    """CTC training of the linear probe (Adam, a fixed number of updates or ``time_budget_s``).
    Utterances with no target phones, or more targets than frames, are skipped."""
    usable = [i for i, t in enumerate(targets) if 0 < len(t) <= feats.lengths[i]]
    if not usable:
        raise ProbeError("no training utterance has phone labels that fit its frames")
    torch.manual_seed(cfg.seed)
    mean, std = feature_stats(feats)
    probe = LinearProbe(feats.dim, num_phones, mean, std)
    opt = torch.optim.AdamW(probe.linear.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    rng = np.random.default_rng(cfg.seed)
    t0 = time.monotonic()
    losses: list[float] = []
    update = 0
    for update in range(1, cfg.updates + 1):
        if time_budget_s > 0 and time.monotonic() - t0 > time_budget_s:
            update -= 1
            break
        idx = rng.choice(usable, size=min(cfg.batch_size, len(usable)), replace=False)
        x, pad = pad_batch([torch.from_numpy(np.array(feats[i], dtype=np.float32)) for i in idx])
        lp = F.log_softmax(probe(x), -1).transpose(0, 1)
        tgt = torch.tensor([p + 1 for i in idx for p in targets[i]], dtype=torch.long)
        tlen = torch.tensor([len(targets[i]) for i in idx])
        loss = F.ctc_loss(lp, tgt, (~pad).sum(1), tlen, blank=0, zero_infinity=True)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if log_interval and update % log_interval == 0:
            log.info("probe update %d: ctc %.3f", update, float(np.mean(losses[-log_interval:])))
    return probe, {"updates": update, "elapsed_s": round(time.monotonic() - t0, 1),
                   "final_ctc_loss": float(np.mean(losses[-50:])) if losses else None, "config": asdict(cfg)}


def evaluate_probe(probe: LinearProbe, feats: FeatureSet, refs: Sequence[Sequence[int]]) -> dict[str, Any]:
    hyps = probe.decode(list(feats))
    per, errors, n = phone_error_rate(refs, hyps)
    return {"per": per, "errors": errors, "ref_phones": n, "utterances": len(refs), "hyps": hyps}
