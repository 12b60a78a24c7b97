"""Initialization and recipe values as fairseq's: a model trained from scratch here
starts where fairseq's starts, and the LARGE recipes say what fairseq's say.

References (facebookresearch/fairseq):
  fairseq/models/wav2vec/wav2vec2.py        ConvFeatureExtractionModel (kaiming_normal_ convs),
                                            TransformerEncoder (apply(init_bert_params), make_conv_pos)
  fairseq/modules/transformer_sentence_encoder.py   init_bert_params
  fairseq/models/wav2vec/wav2vec2_asr.py    Linear (xavier_uniform_, bias 0), Wav2Vec2AsrConfig,
                                            Wav2VecEncoder.arg_overrides
  examples/wav2vec/config/pretraining/wav2vec2_large_librivox.yaml
  examples/wav2vec/config/finetuning/vox_100h.yaml, base_100h.yaml
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from training.config import PAPER_CONV_LAYERS, large_config
from training.model import wav2vec2_base
from training.model.components import ConvolutionalPositionalEmbedding, FeatureEncoder
from training.train_config import FinetuneConfig, PretrainConfig, load_config

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


@pytest.fixture(scope="module")
def base_model():
    torch.manual_seed(0)
    return wav2vec2_base(vocab_size=32, quantizer=True)


# ---------------------------------------------------------------- (a) conv feature encoder
def fairseq_conv_encoder(seed: int) -> nn.Module:
    """fairseq's ConvFeatureExtractionModel(mode="default", conv_bias=False) in plain torch:
    Conv1d with kaiming_normal_ weight; GroupNorm(512, 512) in block 1 only; GELU."""
    torch.manual_seed(seed)
    blocks, c_in = [], 1
    for i, (dim, k, stride) in enumerate(PAPER_CONV_LAYERS):
        conv = nn.Conv1d(c_in, dim, k, stride=stride, bias=False)
        nn.init.kaiming_normal_(conv.weight)
        layers = [conv] + ([nn.GroupNorm(dim, dim, affine=True)] if i == 0 else []) + [nn.GELU()]
        blocks.append(nn.Sequential(*layers))
        c_in = dim
    return nn.Sequential(*blocks)


def test_base_conv_encoder_output_scale_matches_fairseq_init():
    """On unit-variance noise, BASE's z at init has std ≈ 0.27 in fairseq (kaiming_normal_);
    PyTorch's default conv init gives ≈ 4e-4 (each un-normalized block shrinks it ~3x)."""
    x = torch.randn(2, 16000, generator=torch.Generator().manual_seed(0))
    ours, ref = [], []
    with torch.no_grad():
        for seed in range(2):
            ref.append(fairseq_conv_encoder(seed)(x.unsqueeze(1)).std().item())
            torch.manual_seed(100 + seed)
            encoder = FeatureEncoder([list(c) for c in PAPER_CONV_LAYERS], "default", bias=False)
            ours.append(encoder(x)[0].std().item())
    ref_std, our_std = sum(ref) / len(ref), sum(ours) / len(ours)
    assert 0.15 < ref_std < 0.45, ref_std           # the reference itself: O(0.1), as fairseq's
    assert 0.15 < our_std < 0.45, (our_std, ref_std)
    assert abs(math.log(our_std / ref_std)) < math.log(1.4), (our_std, ref_std)


def test_conv_weights_are_kaiming_normal(base_model):
    for block in base_model.feature_extractor.conv_layers:
        w = block.conv.weight
        fan_in = w.shape[1] * w.shape[2]
        expected = math.sqrt(2.0 / fan_in)
        tol = 0.1 if w.numel() < 10_000 else 0.02    # block 1 has only 5120 weights
        assert abs(w.std().item() / expected - 1) < tol, (w.shape, w.std().item(), expected)


# ---------------------------------------------------------------- (b) Transformer: BERT init
def test_transformer_linears_are_bert_initialized(base_model):
    linears = [m for m in base_model.encoder.modules() if isinstance(m, nn.Linear)]
    assert len(linears) == 12 * 6     # q, k, v, out, FFN in, FFN out per block
    for m in linears:
        assert abs(m.weight.std().item() - 0.02) < 0.0005, m
        assert abs(m.weight.mean().item()) < 0.0005, m
        assert torch.count_nonzero(m.bias) == 0, m
    # LayerNorms keep (1, 0).
    for m in base_model.encoder.modules():
        if isinstance(m, nn.LayerNorm):
            assert torch.all(m.weight == 1) and torch.count_nonzero(m.bias) == 0


def test_positional_conv_init_as_fairseq(base_model):
    pos = base_model.encoder.pos_conv
    assert isinstance(pos, ConvolutionalPositionalEmbedding)
    conv, k, d = pos.conv, 128, 768
    expected = math.sqrt(4 * (1.0 - 0.0) / (k * d))     # fairseq: dropout = 0 in that formula
    assert abs(conv.weight_v.std().item() / expected - 1) < 0.01
    assert torch.count_nonzero(conv.bias) == 0
    # Weight norm over the kernel axis starts at g = ||v||, so the effective weight is v.
    with torch.no_grad():
        assert (conv.weight() - conv.weight_v).abs().max().item() <= 1e-5 * conv.weight_v.abs().max().item()


def test_modules_outside_the_transformer_keep_fairseq_inits(base_model):
    """fairseq applies init_bert_params to the TransformerEncoder only: post_extract_proj,
    project_q and final_proj keep PyTorch's default (|w| <= 1/sqrt(fan_in)); the quantizer's W is
    N(0, 1) with bias 0, its codebook and the mask embedding U[0, 1)."""
    for m in (base_model.feature_projection.projection, base_model.project_q, base_model.project_context):
        bound = 1 / math.sqrt(m.in_features)
        assert m.weight.abs().max().item() <= bound
        assert m.weight.std().item() > 0.5 * bound / math.sqrt(3)
    q = base_model.quantizer
    assert abs(q.weight_proj.weight.std().item() - 1.0) < 0.01 and torch.count_nonzero(q.weight_proj.bias) == 0
    for p in (q.codevectors, base_model.mask_embedding):
        assert p.min().item() >= 0 and p.max().item() < 1 and abs(p.mean().item() - 0.5) < 0.05


# ---------------------------------------------------------------- (c) CTC head
def test_ctc_head_is_xavier_uniform_with_zero_bias(base_model):
    head = base_model.ctc_head
    fan_in, fan_out = head.in_features, head.out_features
    bound = math.sqrt(6.0 / (fan_in + fan_out))
    assert head.weight.abs().max().item() <= bound
    assert abs(head.weight.std().item() / (bound / math.sqrt(3)) - 1) < 0.03
    assert torch.count_nonzero(head.bias) == 0


# ---------------------------------------------------------------- (e) LARGE pre-training recipe
# fairseq examples/wav2vec/config/pretraining/wav2vec2_large_librivox.yaml (commit cb747010), plus
# the Wav2Vec2Config defaults it relies on; our dotted key -> fairseq's value.
FAIRSEQ_LARGE_LIBRIVOX = {
    "run.precision": "fp16",                     # common.fp16: true
    "run.log_interval": 200,                     # common.log_interval
    "run.save_interval": 25000,                  # checkpoint.save_interval_updates
    "data.max_sample_size": 320000,              # task.max_sample_size
    "data.min_sample_size": 32000,               # task.min_sample_size
    "model.normalize_waveform": True,            # task.normalize: true
    "data.num_workers": 6,                       # dataset.num_workers
    "data.max_tokens": 1200000,                  # dataset.max_tokens
    "optim.update_freq": 1,                      # one batch per GPU (distributed_world_size 128)
    "task.diversity_weight": 0.1,                # criterion.loss_weights [0.1, 0]
    "task.feature_penalty_weight": 0.0,
    "run.max_updates": 1000000,                  # optimization.max_update
    "optim.lr": 0.005,                           # optimization.lr [0.005]
    "optim.betas": [0.9, 0.98],                  # optimizer.adam_betas
    "optim.eps": 1e-6,                           # optimizer.adam_eps
    "optim.weight_decay": 0.01,
    "optim.clip_norm": 0.0,                      # optimization.clip_norm default
    "schedule.kind": "polynomial",               # lr_scheduler polynomial_decay
    "schedule.warmup_updates": 32000,
    "schedule.end_lr": 0.0,                      # polynomial_decay end_learning_rate default
    "model.extractor_mode": "layer_norm",
    "model.layer_norm_first": True,
    "model.final_dim": 768,
    "model.codevector_dim": 768,                 # latent_dim 0 -> final_dim
    "task.latent_temp": [2.0, 0.1, 0.999995],
    "model.layer_drop": 0.0,                     # encoder_layerdrop
    "model.dropout_input": 0.0,
    "model.dropout_features": 0.0,
    "model.dropout": 0.0,
    "model.attention_dropout": 0.0,
    "model.activation_dropout": 0.0,             # Wav2Vec2Config default
    "model.conv_bias": True,
    "model.num_layers": 24,
    "model.embed_dim": 1024,
    "model.ffn_dim": 4096,
    "model.num_heads": 16,
    "model.feature_grad_mult": 1.0,
    "model.mask_prob": 0.65,                     # Wav2Vec2Config defaults from here on
    "model.mask_length": 10,
    "model.require_same_masks": True,
    "model.num_codevectors": 320,                # latent_vars
    "model.num_codevector_groups": 2,            # latent_groups
    "model.pos_conv_kernel": 128,                # conv_pos
    "model.pos_conv_groups": 16,
    "model.conv_layers": [list(c) for c in PAPER_CONV_LAYERS],
    "task.num_negatives": 100,
    "task.logit_temp": 0.1,
}


def _get(cfg, model_cfg, dotted: str):
    section, key = dotted.split(".")
    return getattr(model_cfg if section == "model" else getattr(cfg, section), key)


def test_pretrain_large_recipe_matches_fairseq():
    cfg = load_config(PretrainConfig, CONFIGS / "pretrain_large.yaml")
    model_cfg = cfg.model.build(quantizer=True)
    diffs = {k: (_get(cfg, model_cfg, k), v) for k, v in FAIRSEQ_LARGE_LIBRIVOX.items()
             if _get(cfg, model_cfg, k) != v}
    assert not diffs, f"ours vs fairseq: {diffs}"


# ---------------------------------------------------------------- (f) fine-tuning overrides
# What fairseq's fine-tuning sets in the pre-trained model's config (Wav2VecEncoder.arg_overrides):
# the recipe's value, else Wav2Vec2AsrConfig's default. Ours: dotted key -> value.
FAIRSEQ_FINETUNE_OVERRIDES = {
    "finetune_large": {            # examples/wav2vec/config/finetuning/vox_100h.yaml
        "dropout": 0.0, "activation_dropout": 0.1, "dropout_input": 0.0, "attention_dropout": 0.0,
        "final_dropout": 0.0, "mask_length": 10, "mask_prob": 0.5, "require_same_masks": True,
        "mask_channel_length": 64, "mask_channel_prob": 0.5, "layer_drop": 0.1, "feature_grad_mult": 0.0,
    },
    "finetune_base": {             # examples/wav2vec/config/finetuning/base_100h.yaml
        "dropout": 0.0, "activation_dropout": 0.1, "dropout_input": 0.0, "attention_dropout": 0.0,
        "final_dropout": 0.0, "mask_length": 10, "mask_prob": 0.65, "require_same_masks": True,
        "mask_channel_length": 64, "mask_channel_prob": 0.5, "layer_drop": 0.1, "feature_grad_mult": 0.0,
    },
}


@pytest.mark.parametrize("name", sorted(FAIRSEQ_FINETUNE_OVERRIDES))
def test_finetuning_does_not_inherit_pretraining_dropouts(name):
    """The fine-tuning model config is built on top of the checkpoint's (as FinetuneTask does);
    a pre-trained config with every dropout at 0.1 and odd masking must not leak through."""
    cfg = load_config(FinetuneConfig, CONFIGS / f"{name}.yaml")
    arch = "large" if name.endswith("large") else "base"
    pretrained = [
        large_config() if arch == "large" else wav2vec2_base_config(),
        load_config(PretrainConfig, CONFIGS / f"pretrain_{arch}.yaml").model.build(quantizer=True),
    ]
    pretrained.append(pretrained[0].replace(
        dropout=0.1, attention_dropout=0.1, activation_dropout=0.05, dropout_input=0.1, final_dropout=0.3,
        mask_prob=0.65, mask_length=7, require_same_masks=False, mask_channel_prob=0.0,
        mask_channel_length=10, layer_drop=0.05, feature_grad_mult=0.1))
    assert pretrained[0].dropout_input == 0.1        # what a LARGE checkpoint may well carry
    forced = {"quantizer": False, "vocab_size": 32}
    if cfg.task.freeze_feature_encoder:              # FinetuneTask forces this
        forced["feature_grad_mult"] = 0.0
    for base in pretrained:
        built = cfg.model.build(base, **forced)
        got = {k: getattr(built, k) for k in FAIRSEQ_FINETUNE_OVERRIDES[name]}
        assert got == FAIRSEQ_FINETUNE_OVERRIDES[name]


def wav2vec2_base_config():
    from training.config import base_config

    return base_config()
