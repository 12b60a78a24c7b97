"""Configurations of training runs: dataclasses serialized as plain dicts, read from YAML, with
``section.key=value`` overrides from the command line.

Same approach as ``training.config.ModelConfig`` (which the ``model`` section builds):

    model:                # a ModelConfig preset plus field overrides
      preset: base
      mask_prob: 0.65
    data: {...}           # DataConfig
    optim: {...}          # OptimConfig
    schedule: {...}       # ScheduleConfig
    run: {...}            # RunConfig: updates, precision, logging, checkpoints
    task: {...}           # PretrainTaskConfig | FinetuneTaskConfig

Unknown keys are errors that name the full dotted path and the keys that exist.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Optional, Union, get_args, get_origin, get_type_hints

from training.config import ConfigError, ModelConfig, preset


@dataclass
class ModelSection:
    """A ModelConfig: a preset name plus field overrides (``model.num_layers=2``). For fine-tuning
    from a checkpoint, the checkpoint's architecture is the base and the overrides apply on top."""

    preset: str = "base"
    overrides: dict = field(default_factory=dict)

    def build(self, base: Optional[ModelConfig] = None, **forced: Any) -> ModelConfig:
        cfg = base if base is not None else preset(self.preset)
        return cfg.replace(**{**self.overrides, **forced})

    def to_dict(self) -> dict[str, Any]:
        return {"preset": self.preset, **self.overrides}

    @classmethod
    def from_dict(cls, d: dict[str, Any], path: str = "model") -> "ModelSection":
        d = dict(d or {})
        name = d.pop("preset", "base")
        known = {f.name for f in fields(ModelConfig)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown key(s) {', '.join(f'{path}.{k}' for k in unknown)}; "
                              f"{path} takes 'preset' and the ModelConfig fields: {', '.join(sorted(known))}")
        section = cls(name, d)
        section.build()  # validate now, not at the first step
        return section


@dataclass
class DataConfig:
    train: str = ""                    # manifest: fairseq .tsv (+ .ltr/.wrd beside it) or .jsonl
    valid: str = ""                    # optional dev manifest (fine-tuning: greedy CER/WER)
    labels: str = "ltr"                # transcript file suffix next to a .tsv manifest
    vocab: str = ""                    # vocab.json / dict.ltr.txt / w2v vocab; "" = from the transcripts
    max_tokens: int = 1_400_000        # cap on the samples in one batch (longest row × rows)
    max_sample_size: int = 250_000     # pre-training: crop to this; fine-tuning: skip longer ones
    min_sample_size: int = 32_000      # skip shorter utterances
    crop_to_shortest: bool = True      # pre-training: crop a batch to its shortest row (no padding)
    max_batch_size: int = 0            # 0: no cap on rows per batch
    num_workers: int = 0               # DataLoader worker processes
    shuffle: bool = True


@dataclass
class OptimConfig:
    lr: float = 5e-4                   # peak learning rate
    betas: list = field(default_factory=lambda: [0.9, 0.98])
    eps: float = 1e-6
    weight_decay: float = 0.01
    clip_norm: float = 0.0             # 0: no clipping
    update_freq: int = 1               # gradient accumulation: micro-batches per update


@dataclass
class ScheduleConfig:
    kind: str = "polynomial"           # "polynomial" (warm-up, linear decay) | "tri_stage" | "constant"
    warmup_updates: int = 32_000       # polynomial
    end_lr: float = 0.0                # polynomial
    phase_ratio: list = field(default_factory=lambda: [0.1, 0.4, 0.5])  # tri_stage warm-up/hold/decay
    init_lr_scale: float = 0.01        # tri_stage: start of warm-up, × lr
    final_lr_scale: float = 0.05       # tri_stage: end of decay, × lr

    def __post_init__(self) -> None:
        if self.kind not in ("polynomial", "tri_stage", "constant"):
            raise ConfigError(f"schedule.kind must be polynomial, tri_stage or constant, not {self.kind!r}")
        if len(self.phase_ratio) != 3 or abs(sum(self.phase_ratio) - 1.0) > 1e-6:
            raise ConfigError(f"schedule.phase_ratio must be three fractions summing to 1, got {self.phase_ratio}")


@dataclass
class RunConfig:
    max_updates: int = 400_000
    seed: int = 1
    device: str = "auto"               # auto | cpu | cuda | cuda:N
    precision: str = "fp32"            # fp32 | bf16 | fp16 (autocast; fp16 with loss scaling)
    threads: int = 0                   # torch intra-op threads on CPU; 0 = torch's default
    save_dir: str = "checkpoints"
    save_interval: int = 1000          # updates between checkpoint_last.pt writes
    keep_interval_checkpoints: bool = False  # also keep checkpoint_<update>.pt
    log_interval: int = 100            # updates between metric lines
    eval_interval: int = 1000          # fine-tuning: updates between dev evaluations
    progress: bool = True              # progress bar on rank 0 (only on a terminal)
    tensorboard: bool = True           # also write TensorBoard events when tensorboard is installed
    resume: bool = True                # continue from save_dir/checkpoint_last.pt when it exists

    def __post_init__(self) -> None:
        if self.precision not in ("fp32", "bf16", "fp16"):
            raise ConfigError(f"run.precision must be fp32, bf16 or fp16, not {self.precision!r}")


@dataclass
class PretrainTaskConfig:
    num_negatives: int = 100           # K
    logit_temp: float = 0.1            # κ
    diversity_weight: float = 0.1      # α
    feature_penalty_weight: float = 10.0
    latent_temp: list = field(default_factory=lambda: [2.0, 0.5, 0.999995])  # Gumbel τ: start, end, decay
    # Std of the codebook scores' weights W at initialization (fairseq: 1.0). On small models the
    # LayerNorm'd features vary little over time at init, scores of std ≈ √C saturate the softmax
    # and the codebook starts collapsed with zero gradient; a smaller std avoids that.
    codebook_init_std: float = 1.0
    # Alarms (fairseq issues 3661, 4530, 4948): checked on every log line after alarm_after updates.
    alarm_after: int = 2000
    collapse_perplexity: float = 1.5   # per codebook: code perplexity below this = collapsed
    chance_factor: float = 1.5         # accuracy below chance × this = not learning
    alarm_fatal: bool = False          # stop the run (instead of warning) when an alarm fires


# The keys of a pre-trained model's configuration that fine-tuning sets itself, with their values
# when the fine-tuning recipe does not name them: fairseq's ``Wav2VecEncoder`` overrides exactly
# these (``arg_overrides`` in wav2vec2_asr.py) with ``Wav2Vec2AsrConfig``'s defaults, so a
# checkpoint's pre-training dropouts and masks never leak into fine-tuning. Every other key (the
# architecture) comes from the checkpoint. ``feature_grad_mult`` is on fairseq's list too; here
# ``task.freeze_feature_encoder`` (default true, fairseq's default 0.0) decides it.
FINETUNE_MODEL_DEFAULTS: dict[str, Any] = {
    "dropout": 0.0, "activation_dropout": 0.0, "dropout_input": 0.0, "attention_dropout": 0.0,
    "final_dropout": 0.0, "layer_drop": 0.0, "mask_prob": 0.5, "mask_length": 10, "require_same_masks": True,
    "mask_channel_prob": 0.0, "mask_channel_length": 10,
}


def finetuning_base(pretrained: ModelConfig) -> ModelConfig:
    """A checkpoint's model config with fine-tuning's own keys reset to their fine-tuning defaults
    (the recipe's ``model`` section then applies on top)."""
    return pretrained.replace(**FINETUNE_MODEL_DEFAULTS)


@dataclass
class FinetuneTaskConfig:
    init: str = ""                     # pre-trained / imported checkpoint to start from ("": scratch)
    freeze_updates: int = 0            # Transformer frozen (only the CTC head trains) this long
    freeze_feature_encoder: bool = True
    fresh_top_layers: int = 0          # the last N Transformer blocks start fresh, not from init
    standardize_output: bool = False   # fold per-channel standardization of c into the output LayerNorm


@dataclass
class TrainConfig:
    model: ModelSection = field(default_factory=ModelSection)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    run: RunConfig = field(default_factory=RunConfig)


@dataclass
class PretrainConfig(TrainConfig):
    task: PretrainTaskConfig = field(default_factory=PretrainTaskConfig)


@dataclass
class FinetuneConfig(TrainConfig):
    task: FinetuneTaskConfig = field(default_factory=FinetuneTaskConfig)


# ---------------------------------------------------------------------------- dict <-> dataclass
def to_dict(cfg: Any) -> Any:
    if isinstance(cfg, ModelSection):
        return cfg.to_dict()
    if dataclasses.is_dataclass(cfg):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in fields(cfg)}
    if isinstance(cfg, (list, tuple)):
        return [to_dict(v) for v in cfg]
    return cfg


def _coerce(value: Any, hint: Any, path: str) -> Any:
    origin = get_origin(hint)
    if origin is Union:
        args = [a for a in get_args(hint) if a is not type(None)]
        return None if value is None else _coerce(value, args[0], path)
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{path} must be true or false, not {value!r}")
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
            raise ConfigError(f"{path} must be an integer, not {value!r}")
        return int(value)
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path} must be a number, not {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{path} must be a string, not {value!r}")
        return str(value)
    if hint is list or origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path} must be a list, not {value!r}")
        return list(value)
    return value


def from_dict(cls: type, d: Optional[dict[str, Any]], path: str = "") -> Any:
    """Build dataclass ``cls`` from a (nested) dict; unknown keys and wrong types are errors."""
    if cls is ModelSection:
        return ModelSection.from_dict(d or {}, path or "model")
    d = d or {}
    if not isinstance(d, dict):
        raise ConfigError(f"{path or 'config'} must be a mapping, not {type(d).__name__}")
    hints = get_type_hints(cls)
    names = [f.name for f in fields(cls)]
    unknown = sorted(set(d) - set(names))
    if unknown:
        where = f"{path}." if path else ""
        raise ConfigError(f"unknown key(s) {', '.join(where + k for k in unknown)}; "
                          f"{path or 'the config'} has: {', '.join(names)}")
    kwargs = {}
    for name in names:
        if name not in d:
            continue
        sub = f"{path}.{name}" if path else name
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = from_dict(hint, d[name], sub)
        else:
            kwargs[name] = _coerce(d[name], hint, sub)
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise ConfigError(f"{path or 'config'}: {e}") from e


def parse_override(text: str) -> tuple[list[str], Any]:
    """``optim.lr=1e-4`` -> (["optim", "lr"], 1e-4); the value is read as YAML."""
    import yaml

    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r} is not key=value (e.g. optim.lr=1e-4)")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"override {text!r}: cannot read the value: {e}") from e
    # YAML 1.1 reads "1e-4" as a string; numbers written that way are meant as numbers.
    if isinstance(value, str):
        try:
            value = float(value) if any(c in value for c in ".eE") else int(value)
        except ValueError:
            pass
    return key.strip().split("."), value


def apply_overrides(d: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set dotted keys in a nested dict (validated when the dataclasses are built)."""
    for text in overrides:
        keys, value = parse_override(text)
        node = d
        for i, k in enumerate(keys[:-1]):
            nxt = node.get(k)
            if nxt is None:
                nxt = node[k] = {}
            if not isinstance(nxt, dict):
                raise ConfigError(f"override {text!r}: {'.'.join(keys[:i + 1])} is not a section")
            node = nxt
        node[keys[-1]] = value
    return d


def load_config(cls: type, path: Optional[str | Path] = None, overrides: Optional[list[str]] = None) -> Any:
    """Read a YAML file (or start from the defaults), apply overrides, build ``cls``."""
    import yaml

    d: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.exists():
            raise ConfigError(f"{p}: no such config file")
        try:
            d = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{p}: not valid YAML: {e}") from e
        if not isinstance(d, dict):
            raise ConfigError(f"{p}: a config file must be a mapping of sections")
    d = apply_overrides(d, list(overrides or []))
    return from_dict(cls, d)


def save_config(cfg: Any, path: str | Path) -> None:
    import yaml

    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
