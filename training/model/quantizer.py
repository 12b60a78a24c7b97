"""Gumbel-softmax product quantizer (wav2vec 2.0, section 2.2).

G codebooks of V entries each; entry e_{g,v} has d/G dimensions. Scores l = W z (one row of
G*V logits per frame). Training chooses, per group, ``gumbel_softmax(l, tau, hard=True)``: the
forward pass uses the one-hot argmax of the Gumbel-perturbed scores, the backward pass the
gradient of the soft Gumbel-softmax (straight-through estimator). Evaluation takes the plain
argmax, without noise. The chosen entries are concatenated (d) and mapped by ``project_q``
(outside this module) to the contrastive space.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class QuantizerOutput(NamedTuple):
    quantized: Tensor          # [B, T, d] concatenated codebook entries q_t (before project_q)
    logits: Tensor             # [B, T, G, V] scores l (no noise)
    codes: Tensor              # [B, T, G] chosen entry per group
    avg_probs: Tensor          # [G, V] p̄_g, batch-averaged plain softmax over valid frames
    prob_perplexity: Tensor    # Σ_g exp(H(p̄_g))
    code_perplexity: Tensor    # Σ_g exp(H(hard code histogram))


def gumbel_temperature(update: int, start: float = 2.0, end: float = 0.5, decay: float = 0.999995) -> float:
    """The paper's schedule: max(start · decay^n, end) at update n."""
    return max(start * decay ** update, end)


class GumbelVectorQuantizer(nn.Module):
    def __init__(self, input_dim: int, num_groups: int, num_vars: int, vq_dim: int) -> None:
        super().__init__()
        if vq_dim % num_groups:
            raise ValueError(f"vq_dim {vq_dim} is not divisible by {num_groups} groups")
        self.num_groups = num_groups
        self.num_vars = num_vars
        self.vq_dim = vq_dim
        self.weight_proj = nn.Linear(input_dim, num_groups * num_vars)
        nn.init.normal_(self.weight_proj.weight, mean=0.0, std=1.0)
        nn.init.zeros_(self.weight_proj.bias)
        # Named as in both fairseq ("vars") and transformers ("codevectors"): [1, G*V, d/G].
        self.codevectors = nn.Parameter(torch.empty(1, num_groups * num_vars, vq_dim // num_groups).uniform_())
        self.temperature = 2.0

    def forward(self, z: Tensor, frame_mask: Optional[Tensor] = None,
                gumbel_noise: Optional[Tensor] = None) -> QuantizerOutput:
        """z: [B, T, C] normalized conv features. frame_mask: [B, T] bool, frames that count in
        the perplexities (valid, or masked ones as transformers does); all when None.
        gumbel_noise: optional [B, T, G, V] noise to use instead of sampling (tests)."""
        b, t, _ = z.shape
        g, v = self.num_groups, self.num_vars
        logits = self.weight_proj(z).view(b, t, g, v)
        if frame_mask is None:
            weights = torch.ones(b, t, 1, 1, dtype=logits.dtype, device=logits.device)
        else:
            weights = frame_mask.to(logits.dtype).view(b, t, 1, 1)
        count = weights.sum().clamp(min=1)

        soft = torch.softmax(logits.float(), dim=-1)
        avg_probs = (soft * weights).sum(dim=(0, 1)) / count
        prob_perplexity = torch.exp(-(avg_probs * torch.log(avg_probs + 1e-7)).sum(dim=-1)).sum()

        if self.training:
            if gumbel_noise is None:
                gumbel_noise = -torch.empty_like(logits, dtype=torch.float32).exponential_().log()
            y_soft = torch.softmax((logits.float() + gumbel_noise) / self.temperature, dim=-1)
            codes = y_soft.argmax(dim=-1)
            hard = F.one_hot(codes, v).to(y_soft.dtype)
            onehot = hard - y_soft.detach() + y_soft  # straight-through
        else:
            codes = logits.argmax(dim=-1)
            onehot = F.one_hot(codes, v).to(logits.dtype)

        hard_counts = (F.one_hot(codes, v).to(torch.float32) * weights).sum(dim=(0, 1)) / count
        code_perplexity = torch.exp(-(hard_counts * torch.log(hard_counts + 1e-7)).sum(dim=-1)).sum()

        entries = self.codevectors.view(g, v, -1)  # [G, V, d/G]
        quantized = torch.einsum("btgv,gvd->btgd", onehot.to(entries.dtype), entries).reshape(b, t, -1)
        return QuantizerOutput(quantized, logits, codes, avg_probs, prob_perplexity, code_perplexity)
