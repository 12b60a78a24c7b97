"""The two quantizers of vq-wav2vec (Baevski et al. 2019, section 3): q: z_i -> ẑ_i.

Both split ẑ into G groups and pick one of V codewords e_1..e_V per group (section 3.3, "multiple
variable groups"; with ``combine_groups`` the groups share one codebook), so a frame's discrete unit is
the tuple (i_1, ..., i_G). Inputs and outputs use the convolutions' layout ``[B, C, T]``.

* ``GumbelQuantizer`` (section 3.1): scores l = W z_i (``depth=2``: a linear map, GELU/ReLU,
  another linear map), one row of V per group. Training takes i = argmax_j (l_j + v_j) with
  Gumbel noise v = -log(-log u), and differentiates softmax((l + v) / τ) in the backward pass
  (straight-through, fairseq's ``gumbel_softmax(hard=True)``); τ follows ``set_num_updates``.
  Evaluation takes i = argmax_j l_j, without noise.
* ``KmeansQuantizer`` (section 3.2): ẑ_i = e_k with k = argmin_j ‖z_i - e_j‖₂, on z projected
  by a grouped 1x1 convolution and a GroupNorm (fairseq's ``KmeansVectorQuantizer``). The
  gradient of ẑ is passed straight through to z (ẑ_out = sg(ẑ) + z - sg(z)), so the prediction
  loss trains the encoder and never the codebook; the codebook learns from the extra loss
  ‖sg(z) - ẑ‖² + γ ‖z - sg(ẑ)‖² (``kmeans_loss``; each term a mean over frames and channels).
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from training.model.components import lengths_to_mask
from training.model.quantizer import gumbel_temperature
from training.vq_wav2vec.components import GroupNorm, activation_fn

# Frames per chunk of the k-means distance computation, which materializes V x frames x G x d/G.
_KMEANS_CHUNK_ELEMENTS = 1 << 24


class QuantizerOutput(NamedTuple):
    quantized: Tensor                   # ẑ [B, C_q, T] (straight-through in training)
    codes: Tensor                       # [B, T, G] index i_g of each group's codeword
    code_perplexity: Tensor             # Σ_g exp(H(histogram of the chosen codes)) over valid frames
    prob_perplexity: Optional[Tensor]   # Gumbel: Σ_g exp(H(p̄_g)), p̄_g the averaged softmax(l_g)
    kmeans_loss: Optional[Tensor]       # k-means: ‖sg(z) - ẑ‖² + γ ‖z - sg(ẑ)‖²
    num_vars: int                       # fairseq's "num_vars": G·V (Gumbel, its diversity term) or V (k-means)


def _frame_weights(lengths: Optional[Tensor], b: int, t: int, device: torch.device) -> Tensor:
    """[B, T] float32: 1 on the valid frames that statistics count."""
    if lengths is None:
        return torch.ones(b, t, dtype=torch.float32, device=device)
    return lengths_to_mask(lengths, t).to(torch.float32)


def _perplexity(probs: Tensor) -> Tensor:
    """Σ_g exp(H(probs_g)) of [G, V] distributions (fairseq's formula, +1e-7 inside the log)."""
    return torch.exp(-(probs * torch.log(probs + 1e-7)).sum(dim=-1)).sum()


def _code_perplexity(codes: Tensor, num_vars: int, weights: Tensor) -> Tensor:
    counts = (F.one_hot(codes, num_vars).to(torch.float32) * weights[..., None, None]).sum(dim=(0, 1))
    return _perplexity(counts / weights.sum().clamp(min=1))


class GumbelQuantizer(nn.Module):
    """Gumbel-softmax quantization with G groups of V codewords (fairseq's ``GumbelVectorQuantizer``).

    ``depth`` layers map z_i to the scores l: ``depth - 1`` hidden layers of width
    ``hidden_factor · C`` with the activation, then a linear map to G·V; a single linear map
    (``depth=1``) starts from W ~ N(0, 1), b = 0 as fairseq. Codewords start U[0, 1).
    """

    def __init__(self, input_dim: int, num_vars: int, num_groups: int, vq_dim: int, combine_groups: bool,
                 depth: int = 1, hidden_factor: int = 2, activation: str = "gelu",
                 temperature: tuple[float, float, float] = (2.0, 0.5, 0.999995)) -> None:
        super().__init__()
        if vq_dim % num_groups:
            raise ValueError(f"vq_dim {vq_dim} is not divisible by {num_groups} groups")
        self.num_vars = num_vars
        self.num_groups = num_groups
        self.combine_groups = combine_groups
        hidden = input_dim * hidden_factor
        self.hidden = nn.ModuleList(
            [nn.Linear(input_dim if i == 0 else hidden, hidden) for i in range(depth - 1)]
        )
        self.activation = activation_fn(activation)
        self.logits = nn.Linear(hidden if depth > 1 else input_dim, num_groups * num_vars)
        if depth == 1:
            nn.init.normal_(self.logits.weight, mean=0.0, std=1.0)
            nn.init.zeros_(self.logits.bias)
        books = 1 if combine_groups else num_groups
        # fairseq's "vars": [1, books·V, vq_dim / G].
        self.codevectors = nn.Parameter(torch.empty(1, books * num_vars, vq_dim // num_groups).uniform_())
        self.max_temp, self.min_temp, self.temp_decay = (float(t) for t in temperature)
        self.temperature = self.max_temp

    def set_num_updates(self, num_updates: int) -> None:
        """τ = max(start · decay^n, end) at update n (fairseq's schedule)."""
        self.temperature = gumbel_temperature(num_updates, self.max_temp, self.min_temp, self.temp_decay)

    def entries(self) -> Tensor:
        """[G, V, d/G]: each group's codebook (the shared one repeated with ``combine_groups``)."""
        v = self.codevectors.view(-1, self.num_vars, self.codevectors.shape[-1])
        return v.expand(self.num_groups, -1, -1) if self.combine_groups else v

    def scores(self, z: Tensor) -> Tensor:
        """z [B, C, T] -> l [B, T, G, V]."""
        b, c, t = z.shape
        x = z.transpose(1, 2).reshape(b * t, c)
        for layer in self.hidden:
            x = self.activation(layer(x))
        return self.logits(x).view(b, t, self.num_groups, self.num_vars)

    def forward(self, z: Tensor, lengths: Optional[Tensor] = None,
                gumbel_noise: Optional[Tensor] = None) -> QuantizerOutput:
        """z: [B, C, T]; lengths: [B] valid frames (statistics count those only) or None.
        gumbel_noise: optional [B, T, G, V] noise v to use instead of sampling it (tests)."""
        b, _, t = z.shape
        logits = self.scores(z)
        weights = _frame_weights(lengths, b, t, z.device)
        soft = torch.softmax(logits.float(), dim=-1)
        avg_probs = (soft * weights[..., None, None]).sum(dim=(0, 1)) / weights.sum().clamp(min=1)
        prob_perplexity = _perplexity(avg_probs)
        code_perplexity = _code_perplexity(logits.detach().argmax(dim=-1), self.num_vars, weights)

        if self.training:
            if gumbel_noise is None:
                # As F.gumbel_softmax draws it: v = -log(Exp(1)) over the same [B·T·G, V] layout.
                gumbel_noise = -torch.empty_like(logits, dtype=torch.float32).exponential_().log()
            y_soft = torch.softmax((logits.float() + gumbel_noise) / self.temperature, dim=-1)
            codes = y_soft.argmax(dim=-1)
            hard = torch.zeros_like(y_soft).scatter_(-1, codes.unsqueeze(-1), 1.0)
            onehot = (hard - y_soft.detach() + y_soft).type_as(logits)  # straight-through
        else:
            codes = logits.argmax(dim=-1)
            onehot = F.one_hot(codes, self.num_vars).to(logits.dtype)

        entries = self.entries()
        quantized = torch.einsum("btgv,gvd->btgd", onehot.to(entries.dtype), entries).reshape(b, t, -1)
        return QuantizerOutput(quantized.transpose(1, 2), codes, code_perplexity, prob_perplexity, None,
                               self.num_vars * self.num_groups)


class KmeansQuantizer(nn.Module):
    """k-means quantization with G groups of V codewords (fairseq's ``KmeansVectorQuantizer``).

    z is first mapped by a grouped 1x1 convolution (no bias) and GroupNorm(G, C): that is the z
    that is quantized and that the losses see. Codewords start N(0, 0.01²).
    """

    def __init__(self, input_dim: int, num_vars: int, num_groups: int, vq_dim: int, combine_groups: bool,
                 gamma: float = 0.25) -> None:
        super().__init__()
        if vq_dim % num_groups:
            raise ValueError(f"vq_dim {vq_dim} is not divisible by {num_groups} groups")
        if vq_dim != input_dim:
            raise ValueError(f"the k-means quantizer needs vq_dim ({vq_dim}) equal to its input's channels ({input_dim})")
        self.num_vars = num_vars
        self.num_groups = num_groups
        self.combine_groups = combine_groups
        self.var_dim = vq_dim // num_groups
        self.gamma = gamma
        books = 1 if combine_groups else num_groups
        # fairseq's "embedding": [V, books, d/G].
        self.codevectors = nn.Parameter(0.01 * torch.randn(num_vars, books, self.var_dim))
        self.projection = nn.Conv1d(input_dim, input_dim, kernel_size=1, groups=num_groups, bias=False)
        self.projection_norm = GroupNorm(num_groups, input_dim)

    def entries(self) -> Tensor:
        """[V, G, d/G]: the codebook of each group."""
        return self.codevectors.expand(self.num_vars, self.num_groups, self.var_dim)

    def nearest(self, z_groups: Tensor) -> Tensor:
        """z_groups [B, T, G, d/G] -> codes [B, T, G]: argmin_j ‖z - e_j‖₂ per group.

        Computed as fairseq does (the norm of the differences, not the expanded quadratic, which
        would round differently near ties), in chunks of frames to bound its V x frames memory.
        """
        b, t, g, d = z_groups.shape
        flat = z_groups.reshape(b * t, g, d)
        entries = self.entries().detach().unsqueeze(1)          # [V, 1, G, d]
        chunk = max(1, _KMEANS_CHUNK_ELEMENTS // (self.num_vars * g * d))
        codes = [(part.detach().unsqueeze(0) - entries).norm(dim=-1, p=2).argmin(dim=0)
                 for part in flat.split(chunk, dim=0)]
        return torch.cat(codes, dim=0).view(b, t, g)

    def forward(self, z: Tensor, lengths: Optional[Tensor] = None) -> QuantizerOutput:
        """z: [B, C, T]; lengths: [B] valid frames (losses and statistics count those only) or None."""
        b, c, t = z.shape
        ze = self.projection_norm(self.projection(z), lengths)
        ze_groups = ze.view(b, self.num_groups, self.var_dim, t).permute(0, 3, 1, 2)   # [B, T, G, d]
        codes = self.nearest(ze_groups)
        groups = torch.arange(self.num_groups, device=z.device)
        zq = self.entries()[codes, groups].reshape(b, t, c).transpose(1, 2)           # ẑ [B, C, T]
        quantized = zq.detach() + (ze - ze.detach())                                  # straight-through

        weights = _frame_weights(lengths, b, t, z.device)
        code_perplexity = _code_perplexity(codes, self.num_vars, weights)
        mask = weights.unsqueeze(1)                                                   # [B, 1, T]
        count = weights.sum().clamp(min=1) * c
        zef, zqf = ze.float(), zq.float()
        codebook_loss = ((zqf - zef.detach()).pow(2) * mask).sum() / count       # ‖sg(z) - ẑ‖²
        commitment_loss = ((zef - zqf.detach()).pow(2) * mask).sum() / count     # ‖z - sg(ẑ)‖²
        kmeans_loss = codebook_loss + self.gamma * commitment_loss
        return QuantizerOutput(quantized, codes, code_perplexity, None, kmeans_loss, self.num_vars)
