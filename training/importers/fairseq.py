"""Import fairseq wav2vec 2.0 checkpoints: ``wav2vec2`` (pre-training) and ``wav2vec_ctc``
(fine-tuned), and HuBERT's ``hubert`` / ``hubert_ctc`` (the same graph), both config styles (``cfg`` dataclass dicts and the legacy ``args`` Namespace),
both weight-norm key styles. Loaded with the weights-only unpickler and an allow-list of
exactly what fairseq checkpoints hold."""

from __future__ import annotations

import argparse
import ast
import re
from pathlib import Path
from typing import Any, Mapping, Optional

from torch import Tensor

from training.checkpoint import Checkpoint, CheckpointError, file_sha256, safe_torch_load
from training.config import ModelConfig
from training.importers.common import WEIGHT_NORM_RULES, Rule, build_checked, rename_state
from w2v_serve.vocab import Vocabulary

FAIRSEQ_RULES: list[Rule] = WEIGHT_NORM_RULES + [
    (r"^w2v_encoder\.proj\.", "ctc_head."),
    (r"^w2v_encoder\.w2v_model\.", ""),
    (r"^(feature_extractor\.conv_layers\.\d+)\.0\.", r"\1.conv."),
    (r"^(feature_extractor\.conv_layers\.\d+)\.2\.1\.", r"\1.norm."),   # layer_norm mode
    (r"^(feature_extractor\.conv_layers\.\d+)\.2\.", r"\1.norm."),      # GroupNorm, block 0
    (r"^layer_norm\.", "feature_projection.layer_norm."),
    (r"^post_extract_proj\.", "feature_projection.projection."),
    (r"^mask_emb$", "mask_embedding"),
    (r"^encoder\.pos_conv\.0\.", "encoder.pos_conv.conv."),
    (r"^(encoder\.layers\.\d+)\.self_attn\.", r"\1.attention."),
    (r"^(encoder\.layers\.\d+)\.self_attn_layer_norm\.", r"\1.attention_layer_norm."),
    (r"^(encoder\.layers\.\d+)\.fc1\.", r"\1.feed_forward.intermediate."),
    (r"^(encoder\.layers\.\d+)\.fc2\.", r"\1.feed_forward.output."),
    (r"^quantizer\.vars$", "quantizer.codevectors"),
    (r"^final_proj\.", "project_context."),
]
# Buffers and bookkeeping that carry no weights.
FAIRSEQ_IGNORED = re.compile(r"(^|\.)(_float_tensor|version)$")
# HuBERT's pre-training heads (cluster label embeddings and their projection): unused for CTC.
HUBERT_IGNORED = re.compile(r"(^|\.)(_float_tensor|version|label_embs_concat|final_proj\.(weight|bias))$")
HUBERT_ARCHS = ("hubert", "hubert_ctc")


def _fairseq_allowed_globals() -> tuple:
    """Exactly what fairseq checkpoints pickle besides tensors and containers: the legacy
    ``args`` Namespace, and numpy scalars in the trainer's extra state."""
    import numpy as np

    allowed: list[Any] = [argparse.Namespace, np.dtype]
    try:
        from numpy.core.multiarray import scalar  # numpy 1.x
    except ImportError:  # pragma: no cover - numpy 2
        from numpy._core.multiarray import scalar  # type: ignore[no-redef]
    allowed.append(scalar)
    allowed.extend(type(np.dtype(t)) for t in ("float64", "float32", "int64", "int32"))
    return tuple(allowed)


def _as_dict(obj: Any) -> dict[str, Any]:
    if obj is None:
        return {}
    if isinstance(obj, argparse.Namespace):
        return vars(obj)
    if isinstance(obj, Mapping):
        return dict(obj)
    raise CheckpointError(f"unexpected config object of type {type(obj).__name__}")


def parse_conv_layers(spec: str) -> list[list[int]]:
    """fairseq's ``conv_feature_layers`` string, e.g. ``"[(512,10,5)] + [(512,3,2)] * 4"``,
    evaluated as list arithmetic over literals only (never ``eval``)."""

    def ev(node: ast.AST) -> Any:
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
            return node.value
        if isinstance(node, (ast.List, ast.Tuple)):
            return [ev(e) for e in node.elts]
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Mult)):
            left, right = ev(node.left), ev(node.right)
            return left + right if isinstance(node.op, ast.Add) else left * right
        raise CheckpointError(f"unsupported conv_feature_layers expression: {spec!r}")

    try:
        layers = ev(ast.parse(spec, mode="eval"))
    except SyntaxError as e:
        raise CheckpointError(f"cannot parse conv_feature_layers {spec!r}: {e}") from e
    if not isinstance(layers, list) or not all(isinstance(c, list) and len(c) == 3 for c in layers):
        raise CheckpointError(f"conv_feature_layers {spec!r} is not a list of (dim, kernel, stride)")
    return [[int(x) for x in c] for c in layers]


def _fairseq_configs(ckpt: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(model cfg of the wav2vec2 network, task cfg), for both the ``cfg`` and ``args`` styles."""
    if ckpt.get("cfg") is not None:
        cfg = _as_dict(ckpt["cfg"])
        model, task = _as_dict(cfg.get("model")), _as_dict(cfg.get("task"))
    elif ckpt.get("args") is not None:
        model = task = _as_dict(ckpt["args"])
    else:
        raise CheckpointError("fairseq checkpoint has neither 'cfg' nor 'args'")
    w2v_args = model.get("w2v_args")
    if w2v_args is not None:  # wav2vec_ctc: the network's own config is nested
        inner = _as_dict(w2v_args)
        if "model" in inner:
            inner_model, inner_task = _as_dict(inner["model"]), _as_dict(inner.get("task"))
        else:
            inner_model = inner_task = inner
        # The fine-tuning task's normalize must match pre-training's; fairseq asserts it.
        task = {**inner_task, **{k: v for k, v in task.items() if k == "normalize"}}
        model = {**inner_model, **{k: model[k] for k in ("dropout", "attention_dropout",
                 "activation_dropout", "layerdrop", "final_dropout", "feature_grad_mult") if k in model}}
    return model, task


def _fairseq_model_config(model: dict[str, Any], task: dict[str, Any], state: Mapping[str, Tensor],
                          vocab_size: Optional[int]) -> ModelConfig:
    def get(key: str, default: Any = None) -> Any:
        value = model.get(key, default)
        if value is None and default is None:
            raise CheckpointError(f"fairseq config lacks {key!r}")
        return value

    arch = model.get("_name") or model.get("arch") or "wav2vec2"
    if arch == "wav2vec":   # fairseq's name of wav2vec (2019) and vq-wav2vec, both without a Transformer
        raise CheckpointError("a wav2vec / vq-wav2vec checkpoint (architecture 'wav2vec'), not wav2vec 2.0: "
                              "`w2v codes --checkpoint` reads it as it is (training.vq_wav2vec.convert imports it)")
    if not str(arch).startswith("wav2vec") and arch not in HUBERT_ARCHS:
        raise CheckpointError(f"architecture {arch!r} is not supported (fairseq: wav2vec2, wav2vec_ctc, "
                              f"hubert, hubert_ctc; data2vec: import its transformers conversion with `w2v import hf`)")
    if model.get("pos_conv_depth", 1) != 1:
        raise CheckpointError("pos_conv_depth > 1 (data2vec-style positional convs) is not supported")
    final_dim = model.get("final_dim", 0) or get("encoder_embed_dim")
    latent_dim = model.get("latent_dim", 0) or final_dim
    quantized = "quantizer.codevectors" in state
    if quantized and state["quantizer.codevectors"].shape[-1] * model.get("latent_groups", 2) != latent_dim:
        raise CheckpointError("quantizer.vars does not match latent_dim / latent_groups")
    return ModelConfig(
        family="hubert" if arch in HUBERT_ARCHS else "wav2vec2",
        extractor_mode=model.get("extractor_mode", "default"),
        conv_layers=parse_conv_layers(model.get("conv_feature_layers", "[(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512,2,2)] * 2")),
        conv_bias=bool(model.get("conv_bias", False)),
        normalize_waveform=bool(task.get("normalize", False)),
        feature_grad_mult=float(model.get("feature_grad_mult", 0.1)),
        embed_dim=get("encoder_embed_dim"), num_layers=get("encoder_layers"),
        num_heads=get("encoder_attention_heads"), ffn_dim=get("encoder_ffn_embed_dim"),
        layer_norm_first=bool(model.get("layer_norm_first", False)),
        pos_conv_kernel=model.get("conv_pos", 128), pos_conv_groups=model.get("conv_pos_groups", 16),
        dropout=model.get("dropout", 0.1), attention_dropout=model.get("attention_dropout", 0.1),
        activation_dropout=model.get("activation_dropout", 0.0),
        dropout_input=model.get("dropout_input", 0.0), dropout_features=model.get("dropout_features", 0.0),
        final_dropout=model.get("final_dropout", 0.0),
        layer_drop=model.get("encoder_layerdrop", model.get("layerdrop", 0.0)),
        mask_prob=model.get("mask_prob", 0.65), mask_length=model.get("mask_length", 10),
        require_same_masks=bool(model.get("require_same_masks", True)),
        mask_channel_prob=model.get("mask_channel_prob", 0.0),
        mask_channel_length=model.get("mask_channel_length", 10),
        quantizer=quantized,
        num_codevector_groups=model.get("latent_groups", 2), num_codevectors=model.get("latent_vars", 320),
        codevector_dim=latent_dim, final_dim=final_dim,
        vocab_size=vocab_size,
    )


def import_fairseq(path: str | Path, dictionary: Optional[str | Path] = None) -> Checkpoint:
    """A fairseq ``wav2vec2`` (pre-training) or ``wav2vec_ctc`` (fine-tuned) checkpoint.

    A CTC checkpoint needs its letter dictionary: ``dictionary`` or ``dict.ltr.txt`` beside it.
    """
    path = Path(path)
    ckpt = safe_torch_load(path, _fairseq_allowed_globals())
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise CheckpointError(f"{path}: not a fairseq checkpoint (no 'model' state)")
    model_cfg, task_cfg = _fairseq_configs(ckpt)
    hubert = (model_cfg.get("_name") or model_cfg.get("arch")) in HUBERT_ARCHS
    state = rename_state(ckpt["model"], FAIRSEQ_RULES, HUBERT_IGNORED if hubert else FAIRSEQ_IGNORED)
    vocab = None
    vocab_size = None
    if "ctc_head.weight" in state:
        vocab_size = state["ctc_head.weight"].shape[0]
        dict_path = Path(dictionary) if dictionary else path.with_name("dict.ltr.txt")
        if not dict_path.exists():
            raise CheckpointError(f"{path}: a wav2vec_ctc checkpoint needs its dictionary; pass --dict (looked for {dict_path})")
        vocab = Vocabulary.from_fairseq_dict(dict_path)
        if len(vocab) != vocab_size:
            raise CheckpointError(f"{dict_path}: {len(vocab)} tokens (with fairseq's 4 specials) but the CTC head has {vocab_size} outputs")
    config = _fairseq_model_config(model_cfg, task_cfg, state, vocab_size)
    meta = {"source": "fairseq", "source_path": str(path.resolve()), "source_sha256": file_sha256(path)}
    return build_checked(config, state, vocab, meta)
