"""Import transformers checkpoints of the wav2vec 2.0 family, as the Hub publishes them.

Families (``config.json``'s ``model_type``): ``wav2vec2`` (BASE/LARGE, stable-layer-norm,
XLS-R, MMS with ``adapter_attn_dim``), ``hubert``, ``wavlm``, ``data2vec-audio``; heads: CTC
(``*ForCTC``), none (``*Model``), pre-training (``Wav2Vec2ForPreTraining``). Any other model
type is refused with one line naming these.

Layouts read: ``model.safetensors`` (or sharded, with ``model.safetensors.index.json``),
``pytorch_model.bin`` (or sharded; weights-only unpickler), both weight-norm key styles
(``weight_g``/``weight_v`` and ``parametrizations.weight.original0/1``), the feature
extractor's ``do_normalize`` from ``preprocessor_config.json`` or transformers 5's
``processor_config.json``, the tokenizer files (``vocab.json`` flat or per language,
``added_tokens.json``, ``tokenizer_config.json``, ``special_tokens_map.json``: see
``Vocabulary.from_hf_tokenizer``), MMS's ``adapter.<lang>.safetensors`` and a
``Wav2Vec2ProcessorWithLM``'s ``language_model/`` (its KenLM file, unigrams and alpha/beta
travel in the checkpoint's meta and reach the model directory at export).

``SRC`` is a directory or a Hub id, resolved offline in the local Hugging Face cache
(``training.importers.hub``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Optional

from torch import Tensor

from training.checkpoint import Checkpoint, CheckpointError, safe_torch_load
from training.config import ModelConfig
from training.importers.common import WEIGHT_NORM_RULES, Rule, build_checked, read_json, rename_state
from training.importers.hub import resolve_source
from w2v_serve.vocab import Vocabulary, VocabularyError, hf_vocab_languages

# model_type -> (ModelConfig.family, parameter prefix of the base model)
FAMILIES: dict[str, tuple[str, str]] = {
    "wav2vec2": ("wav2vec2", "wav2vec2"),
    "hubert": ("hubert", "hubert"),
    "wavlm": ("wavlm", "wavlm"),
    "data2vec-audio": ("data2vec_audio", "data2vec_audio"),
}
SUPPORTED_TYPES = ", ".join(FAMILIES)

HF_RULES: list[Rule] = WEIGHT_NORM_RULES + [
    (r"^(wav2vec2|hubert|wavlm|data2vec_audio)\.", ""),
    (r"^(feature_extractor\.conv_layers\.\d+)\.layer_norm\.", r"\1.norm."),
    (r"^masked_spec_embed$", "mask_embedding"),
    (r"^encoder\.pos_conv_embed\.conv\.", "encoder.pos_conv.conv."),
    (r"^encoder\.pos_conv_embed\.layers\.(\d+)\.conv\.", r"encoder.pos_conv.layers.\1."),   # data2vec-audio
    (r"^encoder\.layers\.0\.attention\.rel_attn_embed\.", "encoder.relative_position.embedding."),  # WavLM
    (r"^(encoder\.layers\.\d+\.attention)\.gru_rel_pos_linear\.", r"\1.gate.linear."),
    (r"^(encoder\.layers\.\d+\.attention)\.gru_rel_pos_const$", r"\1.gate.const"),
    (r"^(encoder\.layers\.\d+)\.adapter_layer\.", r"\1.adapter."),                           # MMS
    (r"^(encoder\.layers\.\d+)\.layer_norm\.", r"\1.attention_layer_norm."),
    (r"^(encoder\.layers\.\d+\.feed_forward)\.intermediate_dense\.", r"\1.intermediate."),
    (r"^(encoder\.layers\.\d+\.feed_forward)\.output_dense\.", r"\1.output."),
    (r"^lm_head\.", "ctc_head."),
    (r"^project_hid\.", "project_context."),
]
# A base model's weights saved inside a head model's checkpoint are sometimes prefixed twice
# (never seen on the Hub) — not handled; unknown keys fail the strict load with their names.


# ---------------------------------------------------------------------------- config
def model_config_from_hf(cfg: dict[str, Any], do_normalize: bool, with_ctc: bool, with_quantizer: bool,
                         vocab_size: Optional[int] = None) -> ModelConfig:
    """``ModelConfig`` for a transformers ``config.json`` of a supported family."""
    model_type = cfg.get("model_type") or "wav2vec2"
    if model_type not in FAMILIES:
        raise CheckpointError(f"model_type {model_type!r} is not supported (supported: {SUPPORTED_TYPES})")
    family = FAMILIES[model_type][0]
    for key, allowed in (("hidden_act", "gelu"), ("feat_extract_activation", "gelu")):
        if cfg.get(key, allowed) != allowed:
            raise CheckpointError(f"unsupported {key}={cfg[key]!r} (only {allowed!r})")
    if cfg.get("add_adapter"):
        raise CheckpointError("models with a downsampling adapter (add_adapter=true) are not supported")
    if cfg.get("conv_pos_batch_norm"):
        raise CheckpointError("HuBERT with conv_pos_batch_norm=true is not supported")
    norm = "layer" if family == "data2vec_audio" else cfg.get("feat_extract_norm", "group")
    if norm not in ("group", "layer"):
        raise CheckpointError(f"unsupported feat_extract_norm={norm!r}")
    dims, kernels, strides = cfg.get("conv_dim"), cfg.get("conv_kernel"), cfg.get("conv_stride")
    if dims is None or kernels is None or strides is None or not (len(dims) == len(kernels) == len(strides)):
        raise CheckpointError("config.json lacks consistent conv_dim / conv_kernel / conv_stride")
    stable = bool(cfg.get("do_stable_layer_norm", False))
    adapter_dim = cfg.get("adapter_attn_dim")
    if adapter_dim is not None and not stable:
        raise CheckpointError("adapter_attn_dim needs do_stable_layer_norm=true (MMS)")
    if family == "data2vec_audio":
        pos = dict(pos_conv_kernel=cfg.get("conv_pos_kernel_size", 19), pos_conv_depth=cfg.get("num_conv_pos_embeddings", 5))
    else:
        pos = dict(pos_conv_kernel=cfg.get("num_conv_pos_embeddings", 128), pos_conv_depth=0)
    relative = {}
    if family == "wavlm":
        relative = dict(relative_position_buckets=cfg.get("num_buckets", 320),
                        relative_position_max_distance=cfg.get("max_bucket_distance", 800))
    return ModelConfig(
        family=family,
        extractor_mode="default" if norm == "group" else "layer_norm",
        conv_layers=[[d, k, s] for d, k, s in zip(dims, kernels, strides)],
        conv_bias=bool(cfg.get("conv_bias", False)),
        normalize_waveform=do_normalize,
        embed_dim=cfg["hidden_size"], num_layers=cfg["num_hidden_layers"],
        num_heads=cfg["num_attention_heads"], ffn_dim=cfg["intermediate_size"],
        layer_norm_first=stable,
        pos_conv_groups=cfg.get("num_conv_pos_embedding_groups", 16), **pos, **relative,
        feature_projection_layer_norm=bool(cfg.get("feat_proj_layer_norm", True)) if family == "hubert" else True,
        adapter_dim=adapter_dim,
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
        vocab_size=(vocab_size or cfg.get("vocab_size")) if with_ctc else None,
    )


def feature_extractor_config(directory: Path) -> tuple[dict[str, Any], Optional[Path]]:
    """The feature extractor's settings: ``preprocessor_config.json`` (transformers 4, and the
    Hub's usual file) or ``processor_config.json``'s ``feature_extractor`` (transformers 5)."""
    pre = directory / "preprocessor_config.json"
    if pre.exists():
        return read_json(pre), pre
    proc = directory / "processor_config.json"
    if proc.exists():
        section = read_json(proc).get("feature_extractor")
        if isinstance(section, dict):
            return section, proc
    return {}, None


# ---------------------------------------------------------------------------- weights
def load_hf_weights(directory: Path) -> dict[str, Tensor]:
    """All tensors of a saved model: safetensors (single or sharded) first, else the legacy
    pickle (single or sharded) through the weights-only unpickler."""
    from safetensors.torch import load_file  # safe by design: tensors only

    for single, index, load in (("model.safetensors", "model.safetensors.index.json", load_file),
                                ("pytorch_model.bin", "pytorch_model.bin.index.json", safe_torch_load)):
        if (directory / single).exists():
            return dict(load(str(directory / single)))
        if (directory / index).exists():
            weight_map = read_json(directory / index).get("weight_map")
            if not isinstance(weight_map, dict):
                raise CheckpointError(f"{directory / index}: no weight_map")
            state: dict[str, Tensor] = {}
            for shard in sorted(set(weight_map.values())):
                shard_path = (directory / shard).resolve()
                if shard_path.parent != directory.resolve():
                    raise CheckpointError(f"{directory / index}: shard {shard!r} is outside the directory")
                state.update(load(str(shard_path)))
            return state
    raise CheckpointError(f"{directory}: no model.safetensors or pytorch_model.bin (nor a sharded index)")


def _adapter_languages(directory: Path) -> list[str]:
    return sorted(m[1] for f in directory.iterdir()
                  if (m := re.fullmatch(r"adapter\.(.+)\.(safetensors|bin)", f.name)))


def _load_adapter(directory: Path, language: str) -> dict[str, Tensor]:
    from safetensors.torch import load_file

    for name, load in ((f"adapter.{language}.safetensors", load_file), (f"adapter.{language}.bin", safe_torch_load)):
        if (directory / name).exists():
            return dict(load(str(directory / name)))
    raise CheckpointError(f"{directory}: no adapter for language {language!r} "
                          f"(available: {', '.join(_adapter_languages(directory)) or 'none'})")


# ---------------------------------------------------------------------------- language model
LM_SUFFIXES = (".arpa", ".bin", ".binary")


def processor_lm(directory: Path) -> Optional[dict[str, Any]]:
    """A ``Wav2Vec2ProcessorWithLM``'s language model (``language_model/``: the KenLM file,
    ``unigrams.txt``, ``attrs.json``), as the decoding section of a model card will name it:
    ``{"source_lm": path, "source_unigrams": path, "alpha", "beta", "unk_score_offset",
    "score_boundary"}``; None when the repository has none."""
    lm_dir = directory / "language_model"
    if not lm_dir.is_dir():
        return None
    files = [f for f in lm_dir.iterdir() if f.suffix in LM_SUFFIXES and not f.name.startswith(".")]
    if len(files) != 1:
        raise CheckpointError(f"{lm_dir}: expected one KenLM file ({', '.join(LM_SUFFIXES)}), found "
                              f"{sorted(f.name for f in files) or 'none'}")
    unigrams = lm_dir / "unigrams.txt"
    attrs = read_json(lm_dir / "attrs.json") if (lm_dir / "attrs.json").exists() else {}
    out: dict[str, Any] = {"source_lm": str(files[0].resolve()),
                           "source_unigrams": str(unigrams.resolve()) if unigrams.exists() else None}
    for key, default, kind in (("alpha", 0.5, float), ("beta", 1.5, float),
                               ("unk_score_offset", -10.0, float), ("score_boundary", True, bool)):
        value = attrs.get(key, default)
        try:
            out[key] = kind(value)
        except (TypeError, ValueError):
            raise CheckpointError(f"{lm_dir / 'attrs.json'}: {key}={value!r} is not a {kind.__name__}") from None
    return out


def _check_alphabet(directory: Path, vocab: Vocabulary) -> None:
    """``alphabet.json`` (pyctcdecode's labels) must list the same number of labels as the CTC head."""
    path = directory / "alphabet.json"
    if not path.exists():
        return
    labels = read_json(path).get("labels")
    if isinstance(labels, list) and len(labels) != len(vocab):
        raise CheckpointError(f"{path}: {len(labels)} labels but the CTC head has {len(vocab)} outputs")


# ---------------------------------------------------------------------------- import
def import_hf(source: str | Path, *, revision: Optional[str] = None, language: Optional[str] = None) -> Checkpoint:
    """A transformers checkpoint of the wav2vec 2.0 family: a directory written by
    ``save_pretrained`` or a Hub id in the local cache. ``language`` picks an MMS adapter and
    its vocabulary."""
    directory = resolve_source(source, revision)
    cfg = read_json(directory / "config.json")
    model_type = cfg.get("model_type") or "wav2vec2"
    if model_type not in FAMILIES:
        raise CheckpointError(f"model_type {model_type!r} is not supported (supported: {SUPPORTED_TYPES})")
    architectures = cfg.get("architectures") or []
    heads = [a for a in architectures if not re.search(r"(ForCTC|ForPreTraining|Model)$", a)]
    if heads:
        raise CheckpointError(f"{directory}: architecture {heads[0]} is not supported "
                              f"(a CTC model, its base model, or Wav2Vec2ForPreTraining)")
    pre, pre_path = feature_extractor_config(directory)
    if pre.get("sampling_rate", 16000) != 16000:
        raise CheckpointError(f"{pre_path}: sampling_rate {pre['sampling_rate']} (only 16000 is supported)")
    # transformers' feature extractor normalizes by default; a checkpoint without its file is
    # taken to follow the architecture's published setting (LARGE normalizes, BASE does not).
    do_normalize = bool(pre.get("do_normalize", cfg.get("feat_extract_norm") == "layer"))

    raw = load_hf_weights(directory)
    meta: dict[str, Any] = {"source": "transformers", "source_path": str(directory.resolve()),
                            "model_type": model_type, "architectures": architectures}
    if cfg.get("adapter_attn_dim") is not None:
        languages = _adapter_languages(directory)
        vocab_languages = hf_vocab_languages(directory / "vocab.json") if (directory / "vocab.json").exists() else []
        available = sorted(set(languages) | set(vocab_languages))
        if language is None and available:
            raise CheckpointError(f"{directory}: an MMS checkpoint with language adapters; choose one with "
                                  f"--language CODE (available: {', '.join(available)})")
        if language is not None:
            if language not in languages:
                raise CheckpointError(f"{directory}: no adapter for language {language!r} "
                                      f"(available: {', '.join(available) or 'none'})")
            adapter = _load_adapter(directory, language)
            raw = {k: v for k, v in raw.items() if k not in ("lm_head.weight", "lm_head.bias")}
            prefix = FAMILIES[model_type][1] + "."
            raw.update({(k if k.startswith("lm_head.") or k.startswith(prefix) else prefix + k): v
                        for k, v in adapter.items()})
            meta["language"] = language
    elif language is not None and not (
            (directory / "vocab.json").exists() and hf_vocab_languages(directory / "vocab.json")):
        raise CheckpointError("--language is for MMS checkpoints (language adapters, a vocabulary per "
                              "language); this one has neither")

    state = rename_state(raw, HF_RULES)
    with_ctc = any(k.startswith("ctc_head.") for k in state)
    with_quantizer = any(k.startswith("quantizer.") for k in state)
    vocab = None
    head_size = int(state["ctc_head.weight"].shape[0]) if with_ctc else None
    if with_ctc:
        if not (directory / "vocab.json").exists():
            raise CheckpointError(f"{directory}: a CTC model needs its vocab.json")
        try:
            vocab = Vocabulary.from_hf_tokenizer(directory, vocab_size=head_size,
                                                 pad_token_id=cfg.get("pad_token_id"), language=language)
        except VocabularyError as e:
            raise CheckpointError(str(e)) from None
        _check_alphabet(directory, vocab)
        lm = processor_lm(directory)
        if lm is not None:
            meta["decoding"] = lm
    config = model_config_from_hf(cfg, do_normalize, with_ctc, with_quantizer, head_size)
    return build_checked(config, state, vocab, meta)
