"""The three exported graphs as torch modules, and their ONNX export.

Each wrapper calls the model's own passes (``encode_features``, ``contextualize``,
``ctc_logits``), so the graphs compute exactly what training and the parity tests check;
the wrappers only fix the I/O of the model directory contract (w2v_serve/model_dir.py) and
append the log-softmax. The model is exported from an eval-mode copy whose weight-normed
positional convolution is folded into a plain Conv1d, so no dropout, masking, layer drop or
weight-norm arithmetic reaches the graph.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from training.model import Wav2Vec2Model
from training.model.components import (ConvLayerBlock, FeatureEncoder, MaskedInstanceNorm, SelfAttention,
                                       WeightNormConv1d, lengths_to_mask)
from w2v_serve.model_dir import ENCODER_GRAPH, FULL_GRAPH, GRAPH_IO, TRANSFORMER_GRAPH


def fold_weight_norm(conv: WeightNormConv1d) -> nn.Conv1d:
    """A plain Conv1d holding g * v / ||v||, computed once."""
    channels = conv.weight_v.shape[0]
    plain = nn.Conv1d(channels, channels, conv.kernel_size, padding=conv.kernel_size // 2, groups=conv.groups)
    with torch.no_grad():
        plain.weight.copy_(conv.weight())
        plain.bias.copy_(conv.bias)
    return plain


class EdgeCorrectedInstanceNorm(nn.Module):
    """``MaskedInstanceNorm`` of a conv's output, for export: the statistics over each row's valid
    frames taken as sums over *all* frames, corrected for the frames past the end.

    With a bias-free conv whose input is zero beyond each row's length (``EdgeCorrectedConvBlock``
    makes both so), of the frames past the valid ones (j >= frames, the conv arithmetic) only the
    next ``ceil(kernel / stride)`` see valid samples; every later one is exactly 0. So, per row
    and channel, with s1 = sum(x) and s2 = sum(x^2) over the whole width and e those edge frames,
    mean = (s1 - sum(e)) / frames and var = (s2 - sum(e^2)) / frames - mean^2: the masked
    statistics, read off the tensor by two reductions (ReduceSum, ReduceL2) with no masked copy,
    then one multiply-add that runtimes fuse with the GELU. That is the work of an unmasked
    normalization (transformers' export: InstanceNormalization), so one unpadded row pays what
    an export without padding support pays. The one-pass variance is safe here: the conv output's
    per-channel mean is small against its spread (the float32 parity tests hold).
    """

    def __init__(self, norm: MaskedInstanceNorm, kernel_size: int, stride: int) -> None:
        super().__init__()
        self.eps = norm.eps
        self.edge = -(-kernel_size // stride)
        self.weight = nn.Parameter(norm.weight.detach().clone())
        self.bias = nn.Parameter(norm.bias.detach().clone())

    def forward(self, x: Tensor, lengths: Optional[Tensor]) -> Tensor:
        """x: [B, C, T] (zero where no valid sample reaches); lengths: [B] valid frames or None."""
        b, c, t = x.shape
        s1 = x.sum(dim=2, keepdim=True)
        s2 = torch.linalg.vector_norm(x, 2, dim=2, keepdim=True).pow(2)
        if lengths is None:
            count = torch.full((b, 1, 1), t, dtype=x.dtype, device=x.device)
        else:
            index = lengths.unsqueeze(1) + torch.arange(self.edge, device=x.device)          # [B, E]
            inside = (index < t).to(x.dtype).unsqueeze(1)                                    # [B, 1, E]
            edge = torch.gather(x, 2, index.clamp(max=t - 1).unsqueeze(1).expand(b, c, self.edge)) * inside
            s1 = s1 - edge.sum(dim=2, keepdim=True)
            s2 = s2 - (edge * edge).sum(dim=2, keepdim=True)
            count = lengths.to(x.dtype).clamp(min=1).view(-1, 1, 1)
        mean = s1 / count
        var = (s2 / count - mean * mean).clamp(min=0.0)
        scale = self.weight.view(1, -1, 1) / torch.sqrt(var + self.eps)
        return x * scale + (self.bias.view(1, -1, 1) - mean * scale)


class EdgeCorrectedConvBlock(nn.Module):
    """A ``ConvLayerBlock`` with per-channel normalization, for export: its input zeroed beyond
    each row's length (a [B, 1, samples] multiply, far smaller than the conv output), then the
    conv, ``EdgeCorrectedInstanceNorm`` and the GELU."""

    def __init__(self, block) -> None:
        super().__init__()
        if block.norm_kind != "instance":
            raise ValueError("EdgeCorrectedConvBlock takes a conv block with per-channel normalization")
        self.kernel_size, self.stride, self.norm_kind = block.kernel_size, block.stride, block.norm_kind
        # The normalization subtracts each channel's mean: a conv bias cancels, so it is left out
        # (which also keeps the frames past the end exactly 0 and the one-pass variance's mean small).
        self.conv = nn.Conv1d(block.conv.in_channels, block.conv.out_channels, block.kernel_size,
                              stride=block.stride, bias=False)
        with torch.no_grad():
            self.conv.weight.copy_(block.conv.weight)
        self.norm = EdgeCorrectedInstanceNorm(block.norm, block.kernel_size, block.stride)

    def output_lengths(self, lengths: Tensor) -> Tensor:
        return ConvLayerBlock.output_lengths(self, lengths)  # type: ignore[arg-type]

    def forward(self, x: Tensor, lengths: Optional[Tensor]) -> tuple[Tensor, Optional[Tensor]]:
        """x: [B, C_in, L] -> [B, C_out, L']; lengths follow the convolution arithmetic."""
        if lengths is not None:
            x = x * lengths_to_mask(lengths, x.shape[2]).unsqueeze(1).to(x.dtype)
            lengths = self.output_lengths(lengths)
        return F.gelu(self.norm(self.conv(x), lengths)), lengths


class ConvAsMatMul(nn.Module):
    """A Conv1d (no padding, no groups) on *time-major* input, written as one MatMul.

    Same numbers as the convolution; the point is the op: ONNX Runtime's dynamic int8
    quantization turns a MatMul with a weight operand into its fast integer kernel, while its
    ConvInteger kernel is several times slower than the float convolution. The patch of frame
    t is x[t*stride : t*stride + k] flattened (tap-major); taps 0..stride-1 of every frame are a
    free reshape of the input, the remaining k - stride taps one strided slice each.
    """

    def __init__(self, conv: nn.Conv1d) -> None:
        super().__init__()
        if conv.groups != 1 or conv.padding not in (0, (0,)) or conv.dilation not in (1, (1,)):
            raise ValueError("ConvAsMatMul handles plain convolutions without padding, groups or dilation")
        c_out, c_in, k = conv.weight.shape
        if k < conv.stride[0]:
            raise ValueError("ConvAsMatMul needs kernel_size >= stride")
        self.kernel_size, self.stride, self.in_channels = k, conv.stride[0], c_in
        # [C_out, C_in, k] -> [k * C_in, C_out], row j * C_in + c = tap j of channel c.
        self.weight = nn.Parameter(conv.weight.detach().permute(2, 1, 0).reshape(k * c_in, c_out).clone())
        self.bias = None if conv.bias is None else nn.Parameter(conv.bias.detach().clone())

    def forward(self, x: Tensor) -> Tensor:
        """x [B, L, C] -> [B, T, C_out] with T = (L - k) // stride + 1."""
        k, s = self.kernel_size, self.stride
        frames = torch.div(x.shape[1] - k, s, rounding_mode="floor") + 1
        span = (frames - 1) * s + 1
        taps = [x[:, : frames * s].reshape(x.shape[0], -1, s * self.in_channels)]
        taps += [x[:, j : j + span : s] for j in range(s, k)]
        y = torch.matmul(torch.cat(taps, dim=-1) if len(taps) > 1 else taps[0], self.weight)
        return y if self.bias is None else y + self.bias


class MatMulFeatureEncoder(nn.Module):
    """The conv encoder with every block after the first as ``ConvAsMatMul``, run time-major
    (so LayerNorm needs no transposes). The first block (one input channel: nothing for a
    MatMul to gain) and its normalization run as they are."""

    def __init__(self, encoder: FeatureEncoder) -> None:
        super().__init__()
        first, *rest = encoder.conv_layers
        if any(b.norm_kind == "instance" for b in rest):
            raise ValueError("per-channel normalization is only supported in the first conv block")
        self.first = first
        self.blocks = nn.ModuleList(rest)
        self.matmuls = nn.ModuleList(ConvAsMatMul(b.conv) for b in rest)

    def output_lengths(self, lengths: Tensor) -> Tensor:
        for block in [self.first, *self.blocks]:
            lengths = block.output_lengths(lengths)
        return lengths

    def forward(self, waveforms: Tensor, lengths: Optional[Tensor] = None) -> tuple[Tensor, Optional[Tensor]]:
        x, lengths = self.first(waveforms.unsqueeze(1), lengths)
        x = x.transpose(1, 2)
        for block, matmul in zip(self.blocks, self.matmuls):
            x = matmul(x)
            if lengths is not None:
                lengths = block.output_lengths(lengths)
            if block.norm_kind == "layer":
                x = block.norm(x)
            x = F.gelu(x)
        return x, lengths


class FoldedScaleAttention(nn.Module):
    """``SelfAttention`` for export: softmax(Q K^T / sqrt(d_k) + bias) V with the 1/sqrt(d_k)
    folded into the query projection's weight and bias (exact when d_k is a power of 4, as 64
    is for BASE and LARGE: the scale is then a power of two), and the products written out.

    Same numbers; what changes is the graph. ``F.scaled_dot_product_attention`` exports its
    scale as a value computed at run time from Q's shape (Shape, Slice, Cast, Sqrt, Div, Sqrt)
    and multiplies both Q and K^T by its square root, two elementwise passes per block that a
    runtime cannot fold into the products because the factor is not a constant; OpenVINO then
    also keeps K's Transpose apart from the product. Here K is laid out [B, H, d_k, T] by one
    Transpose, which OpenVINO and ONNX Runtime fuse into the MatMul. The additive ``attention_bias``
    (padding) is kept."""

    def __init__(self, attention: SelfAttention) -> None:
        super().__init__()
        self.num_heads, self.head_dim = attention.num_heads, attention.head_dim
        scale = self.head_dim ** -0.5
        self.q_proj = copy.deepcopy(attention.q_proj)
        with torch.no_grad():
            self.q_proj.weight.mul_(scale)
            self.q_proj.bias.mul_(scale)
        self.k_proj, self.v_proj, self.out_proj = attention.k_proj, attention.v_proj, attention.out_proj
        self.gate = attention.gate      # WavLM's gated relative position bias (None elsewhere)

    def forward(self, x: Tensor, attention_bias: Optional[Tensor],
                position_bias: Optional[Tensor] = None) -> Tensor:
        """x: [B, T, d]; attention_bias: additive [B, 1, 1, T] or None; position_bias: WavLM's
        [1, H, T, T] relative position bias, gated per query (``SelfAttention``)."""
        b, t, d = x.shape
        if position_bias is not None and self.gate is not None:
            bias = self.gate(x, self.num_heads) * position_bias
            attention_bias = bias if attention_bias is None else bias + attention_bias
        q = self.q_proj(x).view(b, t, self.num_heads, self.head_dim).transpose(1, 2)      # [B, H, T, d_k]
        k = self.k_proj(x).view(b, t, self.num_heads, self.head_dim).transpose(1, 2)      # [B, H, T, d_k]
        v = self.v_proj(x).view(b, t, self.num_heads, self.head_dim).transpose(1, 2)      # [B, H, T, d_k]
        scores = torch.matmul(q, k.transpose(-2, -1))
        if attention_bias is not None:
            scores = scores + attention_bias
        y = torch.matmul(torch.softmax(scores, dim=-1), v)
        return self.out_proj(y.transpose(1, 2).reshape(b, t, d))


def inference_copy(model: Wav2Vec2Model, conv_as_matmul: bool = False) -> Wav2Vec2Model:
    """An eval-mode, float32 copy of ``model`` with every weight norm folded, the per-channel
    normalization as ``EdgeCorrectedConvBlock`` and self-attention as ``FoldedScaleAttention``
    (the original is untouched). ``conv_as_matmul``:
    the conv encoder as ``MatMulFeatureEncoder`` (for the int8 variant)."""
    model = copy.deepcopy(model).float().eval()
    for module in list(model.modules()):
        for name, child in module.named_children():
            if isinstance(child, WeightNormConv1d):
                setattr(module, name, fold_weight_norm(child))
            elif isinstance(child, ConvLayerBlock) and child.norm_kind == "instance":
                setattr(module, name, EdgeCorrectedConvBlock(child))
            elif isinstance(child, SelfAttention):
                setattr(module, name, FoldedScaleAttention(child))
    if conv_as_matmul:
        model.feature_extractor = MatMulFeatureEncoder(model.feature_extractor)  # type: ignore[assignment]
    for p in model.parameters():
        p.requires_grad_(False)
    return model


class FullGraph(nn.Module):
    """audio [B, S], lengths [B] -> CTC log-probabilities [B, T, V], logit_lengths [B]."""

    def __init__(self, model: Wav2Vec2Model) -> None:
        super().__init__()
        self.model = model

    def forward(self, audio: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        features, frame_lengths = self.model.encode_features(audio, lengths)
        context, _ = self.model.contextualize(features, frame_lengths)
        return F.log_softmax(self.model.ctc_logits(context), dim=-1), frame_lengths


class EncoderGraph(nn.Module):
    """audio [B, S], lengths [B] -> conv features [B, T, C] (before LayerNorm), feature_lengths [B]."""

    def __init__(self, model: Wav2Vec2Model) -> None:
        super().__init__()
        self.model = model

    def forward(self, audio: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        return self.model.encode_features(audio, lengths)


class TransformerGraph(nn.Module):
    """features [B, T, C], feature_lengths [B] -> log-probabilities [B, T, V], logit_lengths [B]."""

    def __init__(self, model: Wav2Vec2Model) -> None:
        super().__init__()
        self.model = model

    def forward(self, features: Tensor, feature_lengths: Tensor) -> tuple[Tensor, Tensor]:
        context, _ = self.model.contextualize(features, feature_lengths)
        # Identity-like op so the length output is a node of its own, not the graph input.
        return F.log_softmax(self.model.ctc_logits(context), dim=-1), feature_lengths.clone()


WRAPPERS = {FULL_GRAPH: FullGraph, ENCODER_GRAPH: EncoderGraph, TRANSFORMER_GRAPH: TransformerGraph}

# Dynamic axes per I/O name: batch everywhere, time (samples or frames) where there is one.
_DYNAMIC_AXES = {
    "audio": {0: "batch", 1: "samples"},
    "lengths": {0: "batch"},
    "features": {0: "batch", 1: "frames"},
    "feature_lengths": {0: "batch"},
    "logits": {0: "batch", 1: "frames"},
    "logit_lengths": {0: "batch"},
}


def example_inputs(graph: str, model: Wav2Vec2Model) -> tuple[Tensor, Tensor]:
    """Trace inputs: two rows of different lengths, so nothing specializes to one length or
    to a batch of one."""
    samples = torch.tensor([8000, 6400], dtype=torch.int64)
    audio = torch.randn(2, int(samples.max()), generator=torch.Generator().manual_seed(0)) * 0.1
    if graph != TRANSFORMER_GRAPH:
        return audio, samples
    with torch.no_grad():
        return model.encode_features(audio, samples)  # type: ignore[return-value]


def export_graph(model: Wav2Vec2Model, graph: str, path: str | Path, opset: int,
                 external_data: bool = False) -> Path:
    """Export one graph of an ``inference_copy`` model to ``path`` (ONNX, fp32).

    ``external_data``: trace into a folder of its own (torch writes the weights of a model over
    2 GB as one file per tensor there), then store the graph at ``path`` with its weights in
    one ``<name>.data`` file beside it."""
    inputs, outputs = GRAPH_IO[graph]
    wrapper = WRAPPERS[graph](model).eval()
    args = example_inputs(graph, model)
    path = Path(path)
    target = path
    scratch = None
    if external_data:
        import tempfile

        scratch = Path(tempfile.mkdtemp(prefix=f".{path.stem}.", dir=path.parent))
        target = scratch / path.name
    try:
        with torch.no_grad():
            torch.onnx.export(
                wrapper, args, str(target), input_names=list(inputs), output_names=list(outputs),
                dynamic_axes={n: _DYNAMIC_AXES[n] for n in inputs + outputs},
                opset_version=opset, do_constant_folding=True, dynamo=False,
            )
        if scratch is not None:
            import onnx

            onnx_model = onnx.load(str(target))
            data = path.with_name(path.name + ".data")
            data.unlink(missing_ok=True)
            onnx.save_model(onnx_model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                            location=data.name, size_threshold=1024)
    finally:
        if scratch is not None:
            import shutil

            shutil.rmtree(scratch, ignore_errors=True)
    return path
