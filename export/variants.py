"""Reduced-precision variants of an exported fp32 graph.

* fp16 (for GPUs, ONNX Runtime CUDA or TensorRT): weights and matrix products in half
  precision; fp32 islands where half precision loses the answer — the input normalization
  (a mean and variance over up to minutes of samples), every normalization layer (LayerNorm
  and BASE's per-channel norm), the attention softmax and the final log-softmax. Graph I/O
  stays float32, so the runtime feeds every variant the same arrays.
* int8 (for CPUs, ONNX Runtime): dynamic quantization — int8 weights, activations quantized
  per call — of the weight matrix products, and optionally of the convolutions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import onnx

# Op types that always stay float32 in the fp16 variant.
FP32_OPS = ("LayerNormalization", "Softmax", "LogSoftmax")
# Scope fragment of the conv blocks' normalization modules (ConvLayerBlock.norm), as torch's
# exporter names nodes ("/model/feature_extractor/conv_layers.0/norm/ReduceSum").
NORM_SCOPE = "/norm/"


def _producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    return {out: node for node in graph.node for out in node.output}


def upstream_nodes(graph: onnx.GraphProto, tensor: str) -> set[str]:
    """Names of every node that ``tensor`` depends on."""
    producers = _producers(graph)
    seen: set[str] = set()
    stack = [tensor]
    while stack:
        node = producers.get(stack.pop())
        if node is None or node.name in seen:
            continue
        seen.add(node.name)
        stack.extend(i for i in node.input if i)
    return seen


def fp32_island_nodes(model: onnx.ModelProto) -> list[str]:
    """Nodes the fp16 variant keeps in float32 besides ``FP32_OPS``: the conv blocks'
    normalization, and everything before the first convolution (the input normalization)."""
    graph = model.graph
    keep = {n.name for n in graph.node if NORM_SCOPE in n.name}
    first_conv = next((n for n in graph.node if n.op_type == "Conv"), None)
    audio_graph = any(i.name == "audio" for i in graph.input)
    if first_conv is not None and audio_graph:
        keep |= upstream_nodes(graph, first_conv.input[0])
    return sorted(keep)


def to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    from onnxruntime.transformers.float16 import convert_float_to_float16

    # The additive attention mask uses float32's lowest value; the converter clamps constants
    # to half's range (-65504), which still masks after the fp32 softmax.
    converted = convert_float_to_float16(
        model, keep_io_types=True, op_block_list=list(FP32_OPS),
        node_block_list=fp32_island_nodes(model), disable_shape_infer=False,
    )
    drop_duplicate_nodes(converted.graph)
    drop_round_trip_casts(converted.graph)
    topological_sort(converted.graph)
    return converted


def _cast_to(node: onnx.NodeProto) -> int | None:
    if node.op_type != "Cast":
        return None
    return next((a.i for a in node.attribute if a.name == "to"), None)


def drop_duplicate_nodes(graph: onnx.GraphProto) -> None:
    """The converter inserts the same cast once per consumer when a float16 tensor feeds
    several float32 nodes, all writing one output name; keep one of each."""
    seen: set[bytes] = set()
    keep = []
    for node in graph.node:
        key = node.SerializeToString(deterministic=True)
        if key not in seen:
            seen.add(key)
            keep.append(node)
    del graph.node[:]
    graph.node.extend(keep)


def drop_round_trip_casts(graph: onnx.GraphProto) -> None:
    """Remove float32 -> float16 -> float32 cast pairs the converter leaves at island borders
    (e.g. the audio input cast to half and straight back), which would only lose precision."""
    producers = _producers(graph)
    graph_outputs = {o.name for o in graph.output}
    rename: dict[str, str] = {}
    dead: set[int] = set()
    for node in graph.node:
        if _cast_to(node) != onnx.TensorProto.FLOAT:
            continue
        up = producers.get(node.input[0])
        if up is None or _cast_to(up) != onnx.TensorProto.FLOAT16 or node.output[0] in graph_outputs:
            continue
        source = up.input[0]
        if source in producers and _cast_to(producers[source]) is not None:
            continue  # only a genuine float32 tensor may stand in for the round trip
        rename[node.output[0]] = source
        dead.add(id(node))
    if not rename:
        return
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in rename:
                node.input[i] = rename[name]
    keep = [n for n in graph.node if id(n) not in dead]
    used = {i for n in keep for i in n.input} | graph_outputs
    keep = [n for n in keep if _cast_to(n) != onnx.TensorProto.FLOAT16 or any(o in used for o in n.output)]
    del graph.node[:]
    graph.node.extend(keep)


def topological_sort(graph: onnx.GraphProto) -> None:
    """Reorder nodes so every input is produced before use (the converter appends its casts)."""
    available = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending = list(graph.node)
    ordered: list[onnx.NodeProto] = []
    while pending:
        ready = [n for n in pending if all(i in available for i in n.input)]
        if not ready:
            raise ValueError("graph has a cycle or an input nobody produces: " + pending[0].name)
        ready_ids = {id(n) for n in ready}
        for n in ready:
            available.update(n.output)
        ordered.extend(ready)
        pending = [n for n in pending if id(n) not in ready_ids]
    del graph.node[:]
    graph.node.extend(ordered)


def write_fp16(src: str | Path, dst: str | Path) -> Path:
    onnx.save(to_fp16(onnx.load(str(src))), str(dst))
    return Path(dst)


def write_int8(src: str | Path, dst: str | Path, op_types: Iterable[str]) -> Path:
    """Dynamic int8 quantization of ``op_types`` (MatMul: only those with a weight operand,
    so attention's activation x activation products stay float)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        str(src), str(dst), op_types_to_quantize=list(op_types), weight_type=QuantType.QInt8,
        per_channel=False, extra_options={"MatMulConstBOnly": True},
    )
    return Path(dst)
