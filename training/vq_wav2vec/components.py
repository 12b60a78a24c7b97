"""The convolutional networks of wav2vec / vq-wav2vec (Schneider et al. 2019; Baevski et al. 2019).

Symbols follow the vq-wav2vec paper: the encoder f: X -> Z maps raw audio to dense features
z_i (one per 10 ms with the paper's strides), the quantizer q: Z -> Ẑ replaces each z_i by a
codeword ẑ_i (quantizers.py), and the aggregator g: Ẑ -> C is a causal convolution stack that
produces context representations c_i, from which future steps are predicted (loss.py).

Modules take and return the convolutions' layout ``[B, C, T]``; variable-length batches carry
``lengths`` (valid samples or frames per row), and every normalization counts only the valid
frames of a row, so a padded row gives the result it gets alone. No numpy, no ``.item()``.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from training.model.components import ConvStackGeometry, lengths_to_mask


def activation_fn(name: str) -> nn.Module:
    if name == "relu":
        return nn.ReLU()
    if name == "gelu":
        return nn.GELU()
    raise ValueError(f"unknown activation {name!r}")


class GroupNorm(nn.Module):
    """fairseq's ``Fp32GroupNorm(num_groups, C)`` (computed in float32) over the valid frames.

    With ``num_groups=1`` (every block of the encoder and aggregator) a row is normalized over
    all its channels and valid time steps together. Without ``lengths`` this is exactly
    ``F.group_norm``; with them, the statistics of a row leave out its padding.
    """

    def __init__(self, num_groups: int, num_channels: int, affine: bool = True, eps: float = 1e-5) -> None:
        super().__init__()
        if num_channels % num_groups:
            raise ValueError(f"{num_channels} channels are not divisible by {num_groups} groups")
        self.num_groups = num_groups
        self.eps = eps
        if affine:
            self.weight: Optional[nn.Parameter] = nn.Parameter(torch.ones(num_channels))
            self.bias: Optional[nn.Parameter] = nn.Parameter(torch.zeros(num_channels))
        else:
            self.weight = self.bias = None

    def forward(self, x: Tensor, lengths: Optional[Tensor] = None) -> Tensor:
        """x: [B, C, T]; lengths: [B] valid frames or None."""
        weight = self.weight.float() if self.weight is not None else None
        bias = self.bias.float() if self.bias is not None else None
        if lengths is None:
            return F.group_norm(x.float(), self.num_groups, weight, bias, self.eps).type_as(x)
        b, c, t = x.shape
        xf = x.float().view(b, self.num_groups, c // self.num_groups, t)
        mask = lengths_to_mask(lengths, t).view(b, 1, 1, t).to(xf.dtype)
        count = (lengths.to(xf.dtype).clamp(min=1) * (c // self.num_groups)).view(b, 1, 1, 1)
        mean = (xf * mask).sum(dim=(2, 3), keepdim=True) / count
        var = ((xf - mean).pow(2) * mask).sum(dim=(2, 3), keepdim=True) / count
        y = ((xf - mean) / torch.sqrt(var + self.eps)).view(b, c, t)
        if weight is not None and bias is not None:
            y = y * weight.view(1, -1, 1) + bias.view(1, -1, 1)
        return y.type_as(x)


def conv_output_lengths(lengths: Tensor, kernel_size: int, stride: int, padding: int = 0) -> Tensor:
    """Valid output frames of an unpadded-by-default Conv1d over ``lengths`` valid inputs."""
    return (torch.div(lengths + padding - kernel_size, stride, rounding_mode="floor") + 1).clamp(min=0)


class EncoderBlock(nn.Module):
    """One layer of f: Conv1d (no bias) -> dropout -> GroupNorm(1, C) -> ReLU/GELU."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int,
                 dropout: float, affine: bool, activation: str) -> None:
        super().__init__()
        self.kernel_size = kernel_size
        self.stride = stride
        self.conv = nn.Conv1d(in_channels, out_channels, kernel_size, stride=stride, bias=False)
        self.dropout = nn.Dropout(dropout)
        self.norm = GroupNorm(1, out_channels, affine=affine)
        self.activation = activation_fn(activation)

    def output_lengths(self, lengths: Tensor) -> Tensor:
        return conv_output_lengths(lengths, self.kernel_size, self.stride)

    def forward(self, x: Tensor, lengths: Optional[Tensor]) -> tuple[Tensor, Optional[Tensor]]:
        x = self.dropout(self.conv(x))
        if lengths is not None:
            lengths = self.output_lengths(lengths)
        return self.activation(self.norm(x, lengths)), lengths


class ConvFeatureEncoder(ConvStackGeometry, nn.Module):
    """f: X -> Z, fairseq's ``ConvFeatureExtractionModel``.

    Blocks of Conv1d -> dropout -> GroupNorm -> activation. With ``skip_connections`` a block
    whose input and output have the same channels adds its input, subsampled to the output's
    rate (every ``T_in // T_out``-th frame), and scales the sum by sqrt(residual_scale). With
    ``log_compression`` the output is log(|z| + 1).

    The skip connections' subsampling follows the tensor shapes, as fairseq's: in a padded batch,
    the padded length's rate (vq-wav2vec has no encoder skip connections).
    """

    def __init__(self, conv_layers: list, dropout: float = 0.0, log_compression: bool = False,
                 skip_connections: bool = False, residual_scale: float = 0.5, affine: bool = True,
                 activation: str = "relu") -> None:
        super().__init__()
        blocks = []
        in_ch = 1
        for dim, kernel, stride in conv_layers:
            blocks.append(EncoderBlock(in_ch, dim, kernel, stride, dropout, affine, activation))
            in_ch = dim
        self.conv_layers = nn.ModuleList(blocks)
        self.out_channels = in_ch
        self.log_compression = log_compression
        self.skip_connections = skip_connections
        self.residual_scale = math.sqrt(residual_scale)


    def forward(self, waveforms: Tensor, lengths: Optional[Tensor] = None) -> tuple[Tensor, Optional[Tensor]]:
        """waveforms [B, L] -> z [B, C, T], lengths [B] in frames (None when not given)."""
        x = waveforms.unsqueeze(1)
        for block in self.conv_layers:
            residual = x
            x, lengths = block(x, lengths)
            if self.skip_connections and x.shape[1] == residual.shape[1]:
                t, r_t = x.shape[2], residual.shape[2]
                residual = residual[..., :: r_t // t][..., :t]
                x = (x + residual) * self.residual_scale
        if self.log_compression:
            x = (x.abs() + 1).log()
        return x, lengths


class AggregatorBlock(nn.Module):
    """One causal layer of g: left padding of k - 1 frames (zeros or, as fairseq by default,
    copies of the first frame) -> Conv1d -> dropout -> GroupNorm(1, C) -> activation. c_i sees
    ẑ_{i-k+1..i} only. ``residual`` is the 1x1 projection of a skip connection between layers of
    different widths."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int, bias: bool,
                 dropout: float, affine: bool, activation: str, zero_pad: bool, skip: bool) -> None:
        super().__init__()
        self.kernel_size = kernel_size
        self.stride = stride
        self.zero_pad = zero_pad
        # fairseq pads ka + kb = k - 1 frames on the left (ka = k // 2, kb = ka - 1 if k even else ka).
        self.padding = kernel_size - 1
        self.conv = nn.Conv1d(in_channels, out_channels, kernel_size, stride=stride, bias=bias)
        self.dropout = nn.Dropout(dropout)
        self.norm = GroupNorm(1, out_channels, affine=affine)
        self.activation = activation_fn(activation)
        self.residual: Optional[nn.Conv1d] = (
            nn.Conv1d(in_channels, out_channels, 1, bias=False) if skip and in_channels != out_channels else None
        )

    def output_lengths(self, lengths: Tensor) -> Tensor:
        return conv_output_lengths(lengths, self.kernel_size, self.stride, self.padding)

    def forward(self, x: Tensor, lengths: Optional[Tensor]) -> tuple[Tensor, Optional[Tensor]]:
        if self.padding:
            x = F.pad(x, (self.padding, 0), mode="constant" if self.zero_pad else "replicate")
        x = self.dropout(self.conv(x))
        if lengths is not None:
            lengths = self.output_lengths(lengths)
        return self.activation(self.norm(x, lengths)), lengths


class ConvAggregator(nn.Module):
    """g: Ẑ -> C, fairseq's ``ConvAggegator``: causal conv blocks; with ``skip_connections``
    each block adds its input (projected when the width changes) and scales the sum by
    sqrt(residual_scale)."""

    def __init__(self, conv_layers: list, in_channels: int, dropout: float = 0.0, skip_connections: bool = True,
                 residual_scale: float = 0.5, affine: bool = True, bias: bool = True, zero_pad: bool = False,
                 activation: str = "relu") -> None:
        super().__init__()
        blocks = []
        in_ch = in_channels
        for dim, kernel, stride in conv_layers:
            blocks.append(AggregatorBlock(in_ch, dim, kernel, stride, bias, dropout, affine, activation,
                                          zero_pad, skip_connections))
            in_ch = dim
        self.layers = nn.ModuleList(blocks)
        self.out_channels = in_ch
        self.skip_connections = skip_connections
        self.residual_scale = math.sqrt(residual_scale)

    def forward(self, x: Tensor, lengths: Optional[Tensor] = None) -> tuple[Tensor, Optional[Tensor]]:
        """ẑ [B, C, T] -> c [B, C', T'] (T' = T with stride 1), lengths [B] or None."""
        for block in self.layers:
            residual = x
            x, lengths = block(x, lengths)
            if self.skip_connections:
                if block.residual is not None:
                    residual = block.residual(residual)
                x = (x + residual) * self.residual_scale
        return x, lengths
