"""Import published wav2vec 2.0 checkpoints (transformers, fairseq) into the project's format.

Both routes rename parameters onto ``Wav2Vec2Model`` and build its ``ModelConfig`` from the
source's own configuration; nothing is executed from the source files (safetensors, or the
weights-only unpickler with an allow-list of exactly what fairseq checkpoints contain).
"""

from __future__ import annotations

import argparse
import ast
import json
import re
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

import torch
from torch import Tensor

from training.checkpoint import Checkpoint, CheckpointError, file_sha256, load_state_checked, safe_torch_load
from training.config import ModelConfig
from training.model import Wav2Vec2Model
from w2v_serve.vocab import Vocabulary

Rule = tuple[str, str]

# Both weight_norm key styles end up as our explicit weight_g / weight_v.
_WEIGHT_NORM_RULES: list[Rule] = [
    (r"\.parametrizations\.weight\.original0$", ".weight_g"),
    (r"\.parametrizations\.weight\.original1$", ".weight_v"),
]

HF_RULES: list[Rule] = _WEIGHT_NORM_RULES + [
    (r"^wav2vec2\.", ""),
    (r"^(feature_extractor\.conv_layers\.\d+)\.layer_norm\.", r"\1.norm."),
    (r"^masked_spec_embed$", "mask_embedding"),
    (r"^encoder\.pos_conv_embed\.conv\.", "encoder.pos_conv.conv."),
    (r"^(encoder\.layers\.\d+)\.layer_norm\.", r"\1.attention_layer_norm."),
    (r"^(encoder\.layers\.\d+\.feed_forward)\.intermediate_dense\.", r"\1.intermediate."),
    (r"^(encoder\.layers\.\d+\.feed_forward)\.output_dense\.", r"\1.output."),
    (r"^lm_head\.", "ctc_head."),
    (r"^project_hid\.", "project_context."),
]

FAIRSEQ_RULES: list[Rule] = _WEIGHT_NORM_RULES + [
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


def rename_state(state: Mapping[str, Tensor], rules: list[Rule],
                 ignore: Optional[re.Pattern] = None) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        if ignore is not None and ignore.search(key):
            continue
        new = key
        for pattern, repl in rules:
            new = re.sub(pattern, repl, new)
        if new in out:
            raise CheckpointError(f"two source keys map to {new!r} (one is {key!r})")
        out[new] = value
    _unfold_plain_pos_conv_weight(out)
    return out


def _unfold_plain_pos_conv_weight(state: dict[str, Tensor]) -> None:
    """A positional conv saved without weight_norm (plain ``weight``) becomes g = ||w||, v = w."""
    key = "encoder.pos_conv.conv.weight"
    if key in state:
        w = state.pop(key)
        state["encoder.pos_conv.conv.weight_v"] = w
        state["encoder.pos_conv.conv.weight_g"] = w.norm(dim=(0, 1), keepdim=True)


def _fill_unused_mask_embedding(model: Wav2Vec2Model, state: dict[str, Tensor], meta: dict) -> None:
    """Some exported CTC models drop the mask embedding (unused at inference): keep ours."""
    if "mask_embedding" not in state:
        state["mask_embedding"] = model.mask_embedding.detach().clone()
        meta["note"] = "source had no mask embedding; a fresh one was initialized (unused at inference)"


def _build_checked(config: ModelConfig, state: dict[str, Tensor], vocab: Optional[Vocabulary],
                   meta: dict[str, Any]) -> Checkpoint:
    model = Wav2Vec2Model(config)
    _fill_unused_mask_embedding(model, state, meta)
    load_state_checked(model, state)
    return Checkpoint.from_model(model, vocab, meta)


# ---------------------------------------------------------------------------- transformers
def _hf_config_to_model_config(cfg: dict[str, Any], do_normalize: bool, with_ctc: bool,
                               with_quantizer: bool) -> ModelConfig:
    model_type = cfg.get("model_type")
    if model_type not in (None, "wav2vec2"):
        raise CheckpointError(f"model_type {model_type!r} is not wav2vec2")
    for key, allowed in (("hidden_act", "gelu"), ("feat_extract_activation", "gelu")):
        if cfg.get(key, allowed) != allowed:
            raise CheckpointError(f"unsupported {key}={cfg[key]!r} (only {allowed!r})")
    if cfg.get("add_adapter"):
        raise CheckpointError("models with an adapter (add_adapter=true) are not supported")
    norm = cfg.get("feat_extract_norm", "group")
    if norm not in ("group", "layer"):
        raise CheckpointError(f"unsupported feat_extract_norm={norm!r}")
    dims, kernels, strides = cfg.get("conv_dim"), cfg.get("conv_kernel"), cfg.get("conv_stride")
    if dims is None or kernels is None or strides is None or not (len(dims) == len(kernels) == len(strides)):
        raise CheckpointError("config.json lacks consistent conv_dim / conv_kernel / conv_stride")
    return ModelConfig(
        extractor_mode="default" if norm == "group" else "layer_norm",
        conv_layers=[[d, k, s] for d, k, s in zip(dims, kernels, strides)],
        conv_bias=bool(cfg.get("conv_bias", False)),
        normalize_waveform=do_normalize,
        embed_dim=cfg["hidden_size"], num_layers=cfg["num_hidden_layers"],
        num_heads=cfg["num_attention_heads"], ffn_dim=cfg["intermediate_size"],
        layer_norm_first=bool(cfg.get("do_stable_layer_norm", False)),
        pos_conv_kernel=cfg.get("num_conv_pos_embeddings", 128),
        pos_conv_groups=cfg.get("num_conv_pos_embedding_groups", 16),
        layer_norm_eps=cfg.get("layer_norm_eps", 1e-5),
        dropout=cfg.get("hidden_dropout", 0.1), attention_dropout=cfg.get("attention_dropout", 0.1),
        activation_dropout=cfg.get("activation_dropout", 0.0),
        dropout_input=cfg.get("feat_proj_dropout", 0.0),
        dropout_features=cfg.get("feat_quantizer_dropout", 0.0),
        final_dropout=cfg.get("final_dropout", 0.0), layer_drop=cfg.get("layerdrop", 0.0),
        mask_prob=cfg.get("mask_time_prob", 0.05), mask_length=cfg.get("mask_time_length", 10),
        mask_min_masks=cfg.get("mask_time_min_masks", 2),
        mask_channel_prob=cfg.get("mask_feature_prob", 0.0),
        mask_channel_length=cfg.get("mask_feature_length", 10),
        quantizer=with_quantizer,
        num_codevector_groups=cfg.get("num_codevector_groups", 2),
        num_codevectors=cfg.get("num_codevectors_per_group", 320),
        codevector_dim=cfg.get("codevector_dim", 256), final_dim=cfg.get("proj_codevector_dim", 256),
        vocab_size=cfg.get("vocab_size") if with_ctc else None,
    )


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: cannot read: {e}") from e


def _load_hf_weights(directory: Path) -> dict[str, Tensor]:
    from safetensors.torch import load_file  # safe by design: tensors only

    single = directory / "model.safetensors"
    index = directory / "model.safetensors.index.json"
    if single.exists():
        return load_file(str(single))
    if index.exists():
        shards = sorted(set(_read_json(index)["weight_map"].values()))
        state: dict[str, Tensor] = {}
        for shard in shards:
            state.update(load_file(str(directory / shard)))
        return state
    legacy = directory / "pytorch_model.bin"
    if legacy.exists():
        return safe_torch_load(legacy)
    raise CheckpointError(f"{directory}: no model.safetensors or pytorch_model.bin")


def import_hf(directory: str | Path) -> Checkpoint:
    """A transformers ``Wav2Vec2ForCTC`` / ``Wav2Vec2ForPreTraining`` / ``Wav2Vec2Model`` directory."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: not a directory (expected what save_pretrained wrote)")
    cfg = _read_json(directory / "config.json")
    pre_path = directory / "preprocessor_config.json"
    pre = _read_json(pre_path) if pre_path.exists() else {}
    if pre.get("sampling_rate", 16000) != 16000:
        raise CheckpointError(f"{pre_path}: sampling_rate {pre['sampling_rate']} (only 16000 is supported)")
    # transformers' feature extractor normalizes by default; a checkpoint without the file is
    # taken to follow the architecture's published setting (LARGE normalizes, BASE does not).
    do_normalize = bool(pre.get("do_normalize", cfg.get("feat_extract_norm") == "layer"))

    state = rename_state(_load_hf_weights(directory), HF_RULES)
    with_ctc = any(k.startswith("ctc_head.") for k in state)
    with_quantizer = any(k.startswith("quantizer.") for k in state)
    vocab = None
    if with_ctc:
        vocab_path = directory / "vocab.json"
        if not vocab_path.exists():
            raise CheckpointError(f"{directory}: a CTC model needs its vocab.json")
        vocab = Vocabulary.from_hf_vocab_json(vocab_path)
        if len(vocab) != cfg.get("vocab_size"):
            raise CheckpointError(
                f"{vocab_path}: {len(vocab)} tokens but the CTC head has vocab_size={cfg.get('vocab_size')}"
            )
    config = _hf_config_to_model_config(cfg, do_normalize, with_ctc, with_quantizer)
    meta = {"source": "transformers", "source_path": str(directory.resolve()),
            "architectures": cfg.get("architectures")}
    return _build_checked(config, state, vocab, meta)


# ---------------------------------------------------------------------------- fairseq
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
    if not str(arch).startswith("wav2vec") and arch not in ("wav2vec_ctc",):
        raise CheckpointError(f"not a wav2vec 2.0 checkpoint (architecture {arch!r})")
    if model.get("pos_conv_depth", 1) != 1:
        raise CheckpointError("pos_conv_depth > 1 (data2vec-style positional convs) is not supported")
    final_dim = model.get("final_dim", 0) or get("encoder_embed_dim")
    latent_dim = model.get("latent_dim", 0) or final_dim
    quantized = "quantizer.codevectors" in state
    if quantized and state["quantizer.codevectors"].shape[-1] * model.get("latent_groups", 2) != latent_dim:
        raise CheckpointError("quantizer.vars does not match latent_dim / latent_groups")
    return ModelConfig(
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
    state = rename_state(ckpt["model"], FAIRSEQ_RULES, FAIRSEQ_IGNORED)
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
    return _build_checked(config, state, vocab, meta)


IMPORTERS: dict[str, Callable[..., Checkpoint]] = {"hf": import_hf, "fairseq": import_fairseq}
