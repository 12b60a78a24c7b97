"""Building blocks of wav2vec 2.0 (Baevski et al., 2020).

Symbols follow the paper: the feature encoder f: X -> Z maps raw audio X to latent speech
representations z_1..z_T (one per 20 ms), the context network g: Z -> C is a Transformer that
produces context representations c_1..c_T, and the quantizer maps z_t to q_t (see quantizer.py).

Export-friendly by construction: variable-length batches carry ``lengths`` (valid samples or
frames per row) instead of boolean masks, and ``forward`` has no numpy, no ``.item()`` and no
data-dependent Python control flow outside training-only branches.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def lengths_to_mask(lengths: Tensor, max_length: int | Tensor) -> Tensor:
    """``[B]`` valid lengths -> ``[B, T]`` bool, True on valid positions."""
    positions = torch.arange(max_length, device=lengths.device)
    return positions.unsqueeze(0) < lengths.unsqueeze(1)


def normalize_waveform(waveforms: Tensor, lengths: Optional[Tensor], eps: float = 1e-7) -> Tensor:
    """Zero mean, unit variance per utterance over its valid samples; padding stays 0.

    The same as transformers' ``Wav2Vec2FeatureExtractor(do_normalize=True)`` (population
    variance, eps 1e-7), done inside the graph so an exported model takes raw audio.
    """
    if lengths is None:
        mean = waveforms.mean(dim=1, keepdim=True)
        var = (waveforms - mean).pow(2).mean(dim=1, keepdim=True)
        return (waveforms - mean) / torch.sqrt(var + eps)
    mask = lengths_to_mask(lengths, waveforms.shape[1]).to(waveforms.dtype)
    count = lengths.to(waveforms.dtype).clamp(min=1).unsqueeze(1)
    mean = (waveforms * mask).sum(dim=1, keepdim=True) / count
    var = ((waveforms - mean).pow(2) * mask).sum(dim=1, keepdim=True) / count
    return (waveforms - mean) / torch.sqrt(var + eps) * mask


class GradMultiply(torch.autograd.Function):
    """Identity forward, gradient scaled by ``scale`` backward (fairseq's feature_grad_mult)."""

    @staticmethod
    def forward(ctx, x: Tensor, scale: float) -> Tensor:  # type: ignore[override]
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        return grad * ctx.scale, None


class MaskedInstanceNorm(nn.Module):
    """BASE's ``GroupNorm(512, 512)``: each channel normalized over time, then scaled.

    Written as the per-channel normalization it is (TensorRT has no GroupNormalization op), and
    over the *valid* frames of each row only, so that a padded row of a batch gives the same
    result as the utterance run alone.
    """

    def __init__(self, num_channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))

    def forward(self, x: Tensor, lengths: Optional[Tensor]) -> Tensor:
        """x: [B, C, T]; lengths: [B] valid frames or None."""
        if lengths is None:
            mean = x.mean(dim=2, keepdim=True)
            var = (x - mean).pow(2).mean(dim=2, keepdim=True)
        else:
            mask = lengths_to_mask(lengths, x.shape[2]).unsqueeze(1).to(x.dtype)
            count = lengths.to(x.dtype).clamp(min=1).view(-1, 1, 1)
            mean = (x * mask).sum(dim=2, keepdim=True) / count
            var = ((x - mean).pow(2) * mask).sum(dim=2, keepdim=True) / count
        x = (x - mean) / torch.sqrt(var + self.eps)
        return x * self.weight.view(1, -1, 1) + self.bias.view(1, -1, 1)


def init_bert_params(module: nn.Module) -> None:
    """BERT-style initialization, as fairseq's ``init_bert_params`` (``transformer_sentence_encoder.py``),
    which its wav2vec 2.0 ``TransformerEncoder`` applies to itself (``self.apply(init_bert_params)``):
    every ``nn.Linear`` weight ~ N(0, 0.02) with bias 0, every ``nn.Embedding`` ~ N(0, 0.02).
    Use with ``module.apply``. Other modules (LayerNorm, the positional convolution) are untouched.
    """
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if module.padding_idx is not None:
            with torch.no_grad():
                module.weight[module.padding_idx].zero_()


class ConvLayerBlock(nn.Module):
    """One block of the feature encoder: Conv1d -> [norm] -> GELU.

    The convolution's weight is ``kaiming_normal_`` (He et al. 2015, fan-in, std = sqrt(2 / (C_in·k)))
    as fairseq's ``ConvFeatureExtractionModel``; its bias (``conv_bias``, LARGE) keeps PyTorch's
    default, as there. With PyTorch's default weight init (std = 1/sqrt(3·C_in·k)) each of BASE's
    six un-normalized blocks shrinks the signal ~3x and z starts at std ≈ 4e-4 instead of ≈ 0.27
    (on unit-variance input; tests/test_init.py).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int,
                 bias: bool, norm: str) -> None:
        super().__init__()
        self.kernel_size = kernel_size
        self.stride = stride
        self.conv = nn.Conv1d(in_channels, out_channels, kernel_size, stride=stride, bias=bias)
        nn.init.kaiming_normal_(self.conv.weight)
        self.norm_kind = norm
        if norm == "instance":
            self.norm: Optional[nn.Module] = MaskedInstanceNorm(out_channels)
        elif norm == "layer":
            self.norm = nn.LayerNorm(out_channels)
        elif norm == "none":
            self.norm = None
        else:
            raise ValueError(f"unknown conv norm {norm!r}")

    def output_lengths(self, lengths: Tensor) -> Tensor:
        return (torch.div(lengths - self.kernel_size, self.stride, rounding_mode="floor") + 1).clamp(min=0)

    def forward(self, x: Tensor, lengths: Optional[Tensor]) -> tuple[Tensor, Optional[Tensor]]:
        """x: [B, C_in, L] -> [B, C_out, L']; lengths follow the convolution arithmetic."""
        x = self.conv(x)
        if lengths is not None:
            lengths = self.output_lengths(lengths)
        if self.norm_kind == "instance":
            x = self.norm(x, lengths)  # type: ignore[misc]
        elif self.norm_kind == "layer":
            x = self.norm(x.transpose(1, 2)).transpose(1, 2)  # type: ignore[misc]
        return F.gelu(x), lengths


class ConvStackGeometry:
    """Receptive field, hop and output lengths of a stack of strided convolutions
    (``self.conv_layers``, blocks with ``kernel_size``, ``stride`` and ``output_lengths``); shared by
    wav2vec 2.0's and vq-wav2vec's feature encoders."""

    conv_layers: nn.ModuleList

    @property
    def receptive_field(self) -> int:
        rf, hop = 1, 1
        for b in self.conv_layers:
            rf += (b.kernel_size - 1) * hop
            hop *= b.stride
        return rf

    @property
    def hop_length(self) -> int:
        return math.prod(b.stride for b in self.conv_layers)

    def output_lengths(self, lengths: Tensor) -> Tensor:
        for b in self.conv_layers:
            lengths = b.output_lengths(lengths)
        return lengths


class FeatureEncoder(ConvStackGeometry, nn.Module):
    """f: X -> Z. Seven temporal convolutions (BASE/LARGE): 400-sample receptive field, 320 hop.

    ``mode="default"``: normalization in the first block only (GroupNorm(512, 512), BASE).
    ``mode="layer_norm"``: LayerNorm in every block (LARGE).
    """

    def __init__(self, conv_layers: list[tuple[int, int, int]], mode: str, bias: bool) -> None:
        super().__init__()
        if mode not in ("default", "layer_norm"):
            raise ValueError(f"extractor mode must be 'default' or 'layer_norm', not {mode!r}")
        blocks = []
        in_ch = 1
        for i, (dim, kernel, stride) in enumerate(conv_layers):
            norm = "layer" if mode == "layer_norm" else ("instance" if i == 0 else "none")
            blocks.append(ConvLayerBlock(in_ch, dim, kernel, stride, bias, norm))
            in_ch = dim
        self.conv_layers = nn.ModuleList(blocks)
        self.out_channels = in_ch


    def forward(self, waveforms: Tensor, lengths: Optional[Tensor] = None) -> tuple[Tensor, Optional[Tensor]]:
        """waveforms [B, L] -> z [B, T, C] (before the feature LayerNorm), lengths [B] in frames."""
        x = waveforms.unsqueeze(1)
        for block in self.conv_layers:
            x, lengths = block(x, lengths)
        return x.transpose(1, 2), lengths


class FeatureProjection(nn.Module):
    """LayerNorm over the conv features (optional), then a linear map to the model dimension d."""

    def __init__(self, in_features: int, out_features: int, dropout: float, eps: float = 1e-5,
                 layer_norm: bool = True) -> None:
        super().__init__()
        # HuBERT may leave the LayerNorm out (transformers' feat_proj_layer_norm=False).
        self.layer_norm: nn.Module = nn.LayerNorm(in_features, eps=eps) if layer_norm else nn.Identity()
        self.projection = nn.Linear(in_features, out_features)
        self.dropout = nn.Dropout(dropout)

    def forward(self, features: Tensor) -> tuple[Tensor, Tensor]:
        """Returns (projected [B, T, d], normalized features [B, T, C] — the quantizer's input)."""
        normed = self.layer_norm(features)
        return self.dropout(self.projection(normed)), normed


class WeightNormConv1d(nn.Module):
    """Conv1d with weight normalization over the kernel axis (``weight_norm(conv, dim=2)``).

    Kept as explicit ``weight_g`` / ``weight_v`` parameters so checkpoints of both published
    key styles map onto it and export can fold it into a plain weight.
    """

    def __init__(self, channels: int, kernel_size: int, groups: int) -> None:
        super().__init__()
        self.kernel_size = kernel_size
        self.groups = groups
        conv = nn.Conv1d(channels, channels, kernel_size, padding=kernel_size // 2, groups=groups)
        # fairseq's init (wav2vec2.py, make_conv_pos): v ~ N(0, sqrt(4·(1 - dropout) / (k·C))) with
        # its local dropout = 0, i.e. sqrt(4 / (k·C)), C the full embedding dimension (not C/groups);
        # bias 0; g = ||v|| per kernel position (weight_norm(dim=2)), so that at init w = v.
        nn.init.normal_(conv.weight, mean=0.0, std=self.init_std(kernel_size, channels))
        self.weight_v = nn.Parameter(conv.weight.detach().clone())
        self.weight_g = nn.Parameter(self.weight_v.detach().norm(dim=(0, 1), keepdim=True))
        self.bias = nn.Parameter(torch.zeros(channels))

    @staticmethod
    def init_std(kernel_size: int, channels: int, dropout: float = 0.0) -> float:
        """fairseq's std of the positional convolution's weight: sqrt(4·(1 - dropout) / (k·C))."""
        return math.sqrt(4.0 * (1.0 - dropout) / (kernel_size * channels))

    def weight(self) -> Tensor:
        v = self.weight_v
        return self.weight_g * v / v.norm(dim=(0, 1), keepdim=True)

    def forward(self, x: Tensor) -> Tensor:
        return F.conv1d(x, self.weight(), self.bias, padding=self.kernel_size // 2, groups=self.groups)


class ConvolutionalPositionalEmbedding(nn.Module):
    """Relative positional information: a grouped, weight-normed convolution (kernel 128,
    16 groups), the trailing frame of an even kernel dropped, then GELU; added to the input."""

    def __init__(self, embed_dim: int, kernel_size: int, groups: int) -> None:
        super().__init__()
        self.conv = WeightNormConv1d(embed_dim, kernel_size, groups)
        self.num_remove = 1 if kernel_size % 2 == 0 else 0

    def forward(self, x: Tensor) -> Tensor:
        """x: [B, T, d] -> positional term [B, T, d]."""
        y = self.conv(x.transpose(1, 2))
        if self.num_remove:
            y = y[:, :, : -self.num_remove]
        return F.gelu(y).transpose(1, 2)


class StackedConvPositionalEmbedding(nn.Module):
    """data2vec-audio's positional term (Baevski et al., 2022): ``depth`` plain grouped
    convolutions (kernel 19 in the paper's audio model), each followed by the trailing frame of
    an even kernel dropped, a LayerNorm without parameters over channels and GELU."""

    def __init__(self, embed_dim: int, kernel_size: int, groups: int, depth: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            nn.Conv1d(embed_dim, embed_dim, kernel_size, padding=kernel_size // 2, groups=groups)
            for _ in range(depth)
        )
        self.num_remove = 1 if kernel_size % 2 == 0 else 0
        self.embed_dim = embed_dim

    def forward(self, x: Tensor) -> Tensor:
        """x: [B, T, d] -> positional term [B, T, d]."""
        y = x.transpose(1, 2)
        for conv in self.layers:
            y = conv(y)
            if self.num_remove:
                y = y[:, :, : -self.num_remove]
            y = F.layer_norm(y.transpose(1, 2), (self.embed_dim,)).transpose(1, 2)
            y = F.gelu(y)
        return y.transpose(1, 2)


class RelativePositionBias(nn.Module):
    """WavLM's bucketed relative position bias (Chen et al., 2022, eq. 4, T5's buckets): one
    learned scalar per head and bucket of the offset j - i; half the buckets for positive
    offsets, exact below ``num_buckets / 4``, logarithmic up to ``max_distance``."""

    def __init__(self, num_buckets: int, max_distance: int, num_heads: int) -> None:
        super().__init__()
        self.num_buckets = num_buckets
        self.max_distance = max_distance
        self.embedding = nn.Embedding(num_buckets, num_heads)

    def buckets(self, frames: int | Tensor, device: torch.device) -> Tensor:
        positions = torch.arange(frames, device=device)
        offset = positions.unsqueeze(0) - positions.unsqueeze(1)     # [T, T]: key j - query i
        half = self.num_buckets // 2
        exact = half // 2
        bucket = (offset > 0).to(torch.long) * half
        distance = offset.abs()
        # clamp(min=1): log(0) is never selected below, but must not reach an integer cast.
        scaled = torch.log(distance.clamp(min=1).float() / exact) / math.log(self.max_distance / exact)
        large = (exact + scaled * (half - exact)).to(torch.long).clamp(max=half - 1)
        return bucket + torch.where(distance < exact, distance, large)

    def forward(self, frames: int | Tensor, device: torch.device) -> Tensor:
        """-> bias [1, H, T, T] for T frames."""
        return self.embedding(self.buckets(frames, device)).permute(2, 0, 1).unsqueeze(0)


class RelativePositionGate(nn.Module):
    """WavLM's gate on the relative position bias, per head and query frame (eq. 5):
    (g_update, g_reset) = sigmoid(q_i · u, q_i · w) (each a sum of 4 projections), and the bias
    r_{i-j} becomes g_update · r + (1 - g_update) · w·g_reset·r, written as transformers does:
    gate = g_update · (g_reset · const - 1) + 2."""

    def __init__(self, head_dim: int, num_heads: int) -> None:
        super().__init__()
        self.linear = nn.Linear(head_dim, 8)
        self.const = nn.Parameter(torch.ones(1, num_heads, 1, 1))

    def forward(self, x: Tensor, num_heads: int) -> Tensor:
        """x: the attention's input [B, T, d] -> gate [B, H, T, 1]."""
        b, t, d = x.shape
        heads = x.view(b, t, num_heads, d // num_heads).transpose(1, 2)       # [B, H, T, d/H]
        proj = self.linear(heads).view(b, num_heads, t, 2, 4).sum(-1)         # [B, H, T, 2]
        gate = torch.sigmoid(proj)
        update, reset = gate[..., 0:1], gate[..., 1:2]
        return update * (reset * self.const - 1.0) + 2.0


class Adapter(nn.Module):
    """MMS's per-language adapter in a Transformer block (Pratap et al., 2023):
    x + W_2 ReLU(W_1 LayerNorm(x)), W_1: d -> adapter dim."""

    def __init__(self, embed_dim: int, adapter_dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(embed_dim)
        self.linear_1 = nn.Linear(embed_dim, adapter_dim)
        self.linear_2 = nn.Linear(adapter_dim, embed_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear_2(F.relu(self.linear_1(self.norm(x))))


class SelfAttention(nn.Module):
    """Multi-head scaled dot-product self-attention; keys beyond a row's length are ignored."""

    def __init__(self, embed_dim: int, num_heads: int, dropout: float, gated_position_bias: bool = False) -> None:
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.dropout = dropout
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.k_proj = nn.Linear(embed_dim, embed_dim)
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.out_proj = nn.Linear(embed_dim, embed_dim)
        self.gate: Optional[RelativePositionGate] = (
            RelativePositionGate(self.head_dim, num_heads) if gated_position_bias else None
        )

    def forward(self, x: Tensor, attention_bias: Optional[Tensor],
                position_bias: Optional[Tensor] = None) -> Tensor:
        """x: [B, T, d]; attention_bias: additive [B, 1, 1, T] (0 or very negative) or None;
        position_bias: [1, H, T, T] relative position bias (WavLM), gated per query by ``gate``."""
        b, t, d = x.shape
        if position_bias is not None and self.gate is not None:
            bias = self.gate(x, self.num_heads) * position_bias
            attention_bias = bias if attention_bias is None else bias + attention_bias
        q = self.q_proj(x).view(b, t, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, t, self.num_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.num_heads, self.head_dim).transpose(1, 2)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attention_bias, dropout_p=self.dropout if self.training else 0.0
        )
        return self.out_proj(y.transpose(1, 2).reshape(b, t, d))


class FeedForward(nn.Module):
    """Position-wise FFN: Linear(d, ffn) -> GELU -> dropout -> Linear(ffn, d) -> dropout."""

    def __init__(self, embed_dim: int, ffn_dim: int, activation_dropout: float, dropout: float) -> None:
        super().__init__()
        self.intermediate = nn.Linear(embed_dim, ffn_dim)
        self.output = nn.Linear(ffn_dim, embed_dim)
        self.activation_dropout = nn.Dropout(activation_dropout)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.output(self.activation_dropout(F.gelu(self.intermediate(x)))))


class EncoderLayer(nn.Module):
    """One Transformer block. ``layer_norm_first=False``: post-LN (BASE); True: pre-LN (LARGE)."""

    def __init__(self, embed_dim: int, num_heads: int, ffn_dim: int, dropout: float,
                 attention_dropout: float, activation_dropout: float, layer_norm_first: bool,
                 eps: float = 1e-5, gated_position_bias: bool = False,
                 adapter_dim: Optional[int] = None) -> None:
        super().__init__()
        self.attention = SelfAttention(embed_dim, num_heads, attention_dropout, gated_position_bias)
        self.dropout = nn.Dropout(dropout)
        self.attention_layer_norm = nn.LayerNorm(embed_dim, eps=eps)
        self.feed_forward = FeedForward(embed_dim, ffn_dim, activation_dropout, dropout)
        self.final_layer_norm = nn.LayerNorm(embed_dim, eps=eps)
        self.layer_norm_first = layer_norm_first
        if adapter_dim is not None and not layer_norm_first:
            raise ValueError("adapters are only defined for pre-LN blocks (MMS)")
        self.adapter: Optional[Adapter] = Adapter(embed_dim, adapter_dim) if adapter_dim else None

    def forward(self, x: Tensor, attention_bias: Optional[Tensor],
                position_bias: Optional[Tensor] = None) -> Tensor:
        if self.layer_norm_first:
            x = x + self.dropout(self.attention(self.attention_layer_norm(x), attention_bias, position_bias))
            x = x + self.feed_forward(self.final_layer_norm(x))
            return x if self.adapter is None else x + self.adapter(x)
        x = self.attention_layer_norm(x + self.dropout(self.attention(x, attention_bias, position_bias)))
        return self.final_layer_norm(x + self.feed_forward(x))


class TransformerEncoder(nn.Module):
    """g: Z -> C. Positional convolution, then the Transformer blocks, with layer drop.

    Initialized as fairseq's: every Linear of the blocks (attention projections, FFN) gets
    ``init_bert_params`` (N(0, 0.02), bias 0); the positional convolution keeps its own init.
    """

    def __init__(self, embed_dim: int, num_layers: int, num_heads: int, ffn_dim: int,
                 dropout: float, attention_dropout: float, activation_dropout: float,
                 layer_norm_first: bool, layer_drop: float, pos_conv_kernel: int,
                 pos_conv_groups: int, eps: float = 1e-5, pos_conv_depth: int = 0,
                 relative_position_buckets: int = 0, relative_position_max_distance: int = 800,
                 adapter_dim: Optional[int] = None) -> None:
        super().__init__()
        self.pos_conv: nn.Module = (
            StackedConvPositionalEmbedding(embed_dim, pos_conv_kernel, pos_conv_groups, pos_conv_depth)
            if pos_conv_depth else ConvolutionalPositionalEmbedding(embed_dim, pos_conv_kernel, pos_conv_groups)
        )
        self.relative_position: Optional[RelativePositionBias] = (
            RelativePositionBias(relative_position_buckets, relative_position_max_distance, num_heads)
            if relative_position_buckets else None
        )
        self.layer_norm = nn.LayerNorm(embed_dim, eps=eps)
        self.dropout = nn.Dropout(dropout)
        self.layer_norm_first = layer_norm_first
        self.layer_drop = layer_drop
        self.layers = nn.ModuleList(
            EncoderLayer(embed_dim, num_heads, ffn_dim, dropout, attention_dropout,
                         activation_dropout, layer_norm_first, eps,
                         gated_position_bias=bool(relative_position_buckets), adapter_dim=adapter_dim)
            for _ in range(num_layers)
        )
        self.apply(init_bert_params)

    def forward(self, x: Tensor, lengths: Optional[Tensor] = None) -> Tensor:
        """x: [B, T, d] projected (and possibly masked) features -> c: [B, T, d]."""
        attention_bias = None
        if lengths is not None:
            valid = lengths_to_mask(lengths, x.shape[1])
            # Padding must not leak into valid frames through the positional convolution.
            x = x * valid.unsqueeze(-1).to(x.dtype)
            attention_bias = torch.zeros(valid.shape, dtype=x.dtype, device=x.device)
            attention_bias = attention_bias.masked_fill(~valid, torch.finfo(x.dtype).min)
            attention_bias = attention_bias[:, None, None, :]
        x = x + self.pos_conv(x)
        position_bias = None if self.relative_position is None else self.relative_position(x.shape[1], x.device)
        if not self.layer_norm_first:
            x = self.layer_norm(x)
        x = self.dropout(x)
        if self.training and self.layer_drop > 0:
            # Training only: one uniform draw per layer from torch's RNG (resumable, seeded).
            keep = (torch.rand(len(self.layers)) >= self.layer_drop).tolist()
        else:
            keep = [True] * len(self.layers)
        for layer, k in zip(self.layers, keep):
            if k:
                x = layer(x, attention_bias, position_bias)
        if self.layer_norm_first:
            x = self.layer_norm(x)
        return x
