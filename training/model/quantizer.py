"""Gumbel-softmax product quantizer (wav2vec 2.0, section 2.2).

G codebooks of V entries each; entry e_{g,v} has d/G dimensions. Scores l = W z (one row of
G*V logits per frame). Training chooses, per group, ``gumbel_softmax(l, tau, hard=True)``: the
forward pass uses the one-hot argmax of the Gumbel-perturbed scores, the backward pass the
gradient of the soft Gumbel-softmax (straight-through estimator). Evaluation takes the plain
argmax, without noise. The chosen entries are concatenated (d) and mapped by ``project_q``
(outside this module) to the contrastive space.

What the losses train through it (docs/gumbel_quantizer.md, ``python -m training.model.quantizer_demo``):
the contrastive loss reaches the scores l (so W and z) through the soft Gumbel-softmax Jacobian,
evaluated with the same noise n and temperature τ as the forward pass, and reaches only the
codebook entries that were selected; the diversity loss reaches l through softmax(l), no noise.

Two perplexities are reported, as fairseq's ``GumbelVectorQuantizer``: ``prob_perplexity`` of
p̄_g, the averaged plain softmax (the diversity term's), and ``code_perplexity`` of the histogram
of argmax(l), the noise-free hard choice (the codebook usage that evaluation will see).
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class QuantizerOutput(NamedTuple):
    quantized: Tensor          # [B, T, d] concatenated codebook entries q_t (before project_q)
    logits: Tensor             # [B, T, G, V] scores l (no noise)
    codes: Tensor              # [B, T, G] entry used in the forward pass: argmax(l + n) in training, argmax(l) in eval
    avg_probs: Tensor          # [G, V] p̄_g, batch-averaged plain softmax over the counted frames
    prob_perplexity: Tensor    # Σ_g exp(H(p̄_g))  (fairseq's prob_perplexity)
    code_perplexity: Tensor    # Σ_g exp(H(histogram of argmax(l))), no noise  (fairseq's code_perplexity)
    code_counts: Tensor        # [G, V] float: how many counted frames have argmax(l) = v (sums across processes)


def gumbel_temperature(update: int, start: float = 2.0, end: float = 0.5, decay: float = 0.999995) -> float:
    """The paper's schedule: max(start · decay^n, end) at update n."""
    return max(start * decay ** update, end)


class GumbelVectorQuantizer(nn.Module):
    """Product quantization of z_t with G codebooks of V entries (section 2.2).

    l = W z_t + b ∈ R^{G×V} (W ~ N(0, 1), b = 0 as fairseq); per group g, training picks
    i = argmax_v (l_{g,v} + n_{g,v}) with Gumbel noise n = -log(-log u), u ~ U(0, 1), and the
    forward value is the one-hot of i, while the backward pass differentiates
    softmax((l_g + n_g) / τ) (straight-through; ``temperature`` is τ, set per update with
    ``gumbel_temperature``). Eval: i = argmax_v l_{g,v}. q_t = [e_{1,i_1}; ...; e_{G,i_G}].
    """

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
        # float32 counts whatever the autocast dtype (bf16 cannot count past 256 exactly).
        if frame_mask is None:
            weights = torch.ones(b, t, 1, 1, dtype=torch.float32, device=logits.device)
        else:
            weights = frame_mask.to(torch.float32).view(b, t, 1, 1)
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

        # fairseq's code_perplexity: the histogram of the noise-free argmax(l), in training too.
        code_counts = (F.one_hot(logits.detach().argmax(dim=-1), v).to(torch.float32) * weights).sum(dim=(0, 1))
        hard_probs = code_counts / count
        code_perplexity = torch.exp(-(hard_probs * torch.log(hard_probs + 1e-7)).sum(dim=-1)).sum()

        entries = self.codevectors.view(g, v, -1)  # [G, V, d/G]
        quantized = torch.einsum("btgv,gvd->btgd", onehot.to(entries.dtype), entries).reshape(b, t, -1)
        return QuantizerOutput(quantized, logits, codes, avg_probs, prob_perplexity, code_perplexity, code_counts)
