"""Checkpoint import: fairseq layouts against the transformers route, both weight-norm key
styles, both config styles, and the errors a user meets with a checkpoint that does not fit."""

from __future__ import annotations

import argparse
import json
import pickle
import re
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.conftest import ARCHS, HF_TOKENS, save_hf_model, small_hf_config, speech_like
from tests.test_model_parity import assert_close_rel
from training.checkpoint import CheckpointError, load_checkpoint
from training.convert import import_fairseq, import_hf, parse_conv_layers
from w2v_serve.cli import main as w2v

# transformers -> fairseq parameter names, written out independently of training/convert.py.
HF_TO_FAIRSEQ = [
    (r"^wav2vec2\.feature_extractor\.conv_layers\.(\d+)\.conv\.", r"feature_extractor.conv_layers.\1.0."),
    (r"^wav2vec2\.feature_projection\.layer_norm\.", "layer_norm."),
    (r"^wav2vec2\.feature_projection\.projection\.", "post_extract_proj."),
    (r"^wav2vec2\.masked_spec_embed$", "mask_emb"),
    (r"^wav2vec2\.encoder\.pos_conv_embed\.conv\.", "encoder.pos_conv.0."),
    (r"^wav2vec2\.encoder\.layer_norm\.", "encoder.layer_norm."),
    (r"^wav2vec2\.encoder\.layers\.(\d+)\.attention\.", r"encoder.layers.\1.self_attn."),
    (r"^wav2vec2\.encoder\.layers\.(\d+)\.layer_norm\.", r"encoder.layers.\1.self_attn_layer_norm."),
    (r"^wav2vec2\.encoder\.layers\.(\d+)\.feed_forward\.intermediate_dense\.", r"encoder.layers.\1.fc1."),
    (r"^wav2vec2\.encoder\.layers\.(\d+)\.feed_forward\.output_dense\.", r"encoder.layers.\1.fc2."),
    (r"^wav2vec2\.encoder\.layers\.(\d+)\.final_layer_norm\.", r"encoder.layers.\1.final_layer_norm."),
    (r"^quantizer\.codevectors$", "quantizer.vars"),
    (r"^project_hid\.", "final_proj."),
    (r"^lm_head\.", "w2v_encoder.proj."),
]


def to_fairseq_state(hf_state: dict, arch: str, weight_norm_style: str, ctc: bool) -> dict:
    out = {}
    for key, value in hf_state.items():
        new = key
        m = re.match(r"^wav2vec2\.feature_extractor\.conv_layers\.(\d+)\.layer_norm\.(.*)$", key)
        if m:  # GroupNorm sits at Sequential index 2; LayerNorm inside Sequential(T, LN, T) at 2.1
            new = f"feature_extractor.conv_layers.{m[1]}.2.{m[2]}" if arch == "group" else \
                  f"feature_extractor.conv_layers.{m[1]}.2.1.{m[2]}"
        for pattern, repl in HF_TO_FAIRSEQ:
            new = re.sub(pattern, repl, new)
        if weight_norm_style == "legacy":
            new = new.replace("parametrizations.weight.original0", "weight_g")
            new = new.replace("parametrizations.weight.original1", "weight_v")
        if ctc and not new.startswith("w2v_encoder."):
            new = "w2v_encoder.w2v_model." + new
        out[new] = value.clone()
    out["encoder.version" if not ctc else "w2v_encoder.w2v_model.encoder.version"] = torch.tensor([3.0])
    return out


def fairseq_model_cfg(hf_cfg, arch: str) -> dict:
    conv = "[(32, 10, 5)] + [(32, 3, 2)] * 4 + [(32, 2, 2)] * 2"
    return {
        "_name": "wav2vec2", "extractor_mode": "default" if arch == "group" else "layer_norm",
        "conv_feature_layers": conv, "conv_bias": True,
        "encoder_layers": hf_cfg.num_hidden_layers, "encoder_embed_dim": hf_cfg.hidden_size,
        "encoder_ffn_embed_dim": hf_cfg.intermediate_size, "encoder_attention_heads": hf_cfg.num_attention_heads,
        "layer_norm_first": arch == "layer", "conv_pos": hf_cfg.num_conv_pos_embeddings,
        "conv_pos_groups": hf_cfg.num_conv_pos_embedding_groups, "final_dim": hf_cfg.proj_codevector_dim,
        "latent_vars": hf_cfg.num_codevectors_per_group, "latent_groups": hf_cfg.num_codevector_groups,
        "latent_dim": hf_cfg.codevector_dim, "dropout": 0.1, "encoder_layerdrop": 0.05,
    }


def write_fairseq_ckpt(path, state, model_cfg, normalize, ctc, config_style):
    if ctc:
        outer = {"_name": "wav2vec_ctc", "w2v_args": {"model": model_cfg, "task": {"normalize": normalize}},
                 "dropout": 0.0}
    else:
        outer = model_cfg
    if config_style == "cfg":
        ckpt = {"cfg": {"model": outer, "task": {"_name": "audio_pretraining", "normalize": normalize}},
                "args": None, "model": state, "extra_state": {"best": 1.5}}
    else:  # fairseq < 0.10: an argparse Namespace
        inner = argparse.Namespace(**model_cfg, normalize=normalize)
        args = argparse.Namespace(**{**outer, "w2v_args": inner}, normalize=normalize) if ctc else inner
        ckpt = {"args": args, "model": state}
    torch.save(ckpt, path)


@pytest.mark.parametrize("arch", sorted(ARCHS))
@pytest.mark.parametrize("weight_norm_style,config_style", [("parametrizations", "cfg"), ("legacy", "args")])
def test_fairseq_ctc_imports_to_same_numbers_as_transformers(arch, weight_norm_style, config_style,
                                                             hf_ctc_factory, tmp_path):
    do_normalize = arch == "layer"
    ref_model, directory = hf_ctc_factory(arch, do_normalize)
    via_hf = import_hf(directory).build_model()
    state = to_fairseq_state(load_file(str(directory / "model.safetensors")), arch, weight_norm_style, ctc=True)
    fs_path = tmp_path / "checkpoint_best.pt"
    write_fairseq_ckpt(fs_path, state, fairseq_model_cfg(ref_model.config, arch), do_normalize, True, config_style)
    (tmp_path / "dict.ltr.txt").write_text("".join(f"{t} {1000 - i}\n" for i, t in enumerate(HF_TOKENS[4:])))
    out = tmp_path / "fs.ckpt"
    assert w2v(["import", "fairseq", str(fs_path), "--out", str(out)]) == 0
    ckpt = load_checkpoint(out)
    assert list(ckpt.vocab.tokens) == HF_TOKENS
    assert ckpt.model_config.normalize_waveform == do_normalize
    assert ckpt.meta["source"] == "fairseq" and len(ckpt.meta["source_sha256"]) == 64
    via_fs = ckpt.build_model()
    x = torch.from_numpy(speech_like(13000, seed=7, scale=0.2, dc=0.05))[None]
    with torch.no_grad():
        a, _ = via_hf(x)
        b, _ = via_fs(x)
    assert_close_rel(b, a, rtol=1e-6)


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_fairseq_pretraining_checkpoint_matches_transformers(arch, tmp_path):
    from transformers import Wav2Vec2ForPreTraining

    torch.manual_seed(3)
    hf = Wav2Vec2ForPreTraining(small_hf_config(arch)).eval()
    d = save_hf_model(hf, tmp_path / "hf", do_normalize=False, vocab=False)
    via_hf = import_hf(d).build_model()
    state = to_fairseq_state(load_file(str(d / "model.safetensors")), arch, "legacy", ctc=False)
    fs_path = tmp_path / "pre.pt"
    write_fairseq_ckpt(fs_path, state, fairseq_model_cfg(hf.config, arch), False, False, "cfg")
    via_fs = import_fairseq(fs_path).build_model()
    assert via_fs.quantizer is not None and via_fs.ctc_head is None
    x = torch.from_numpy(speech_like(9000, seed=8))[None]
    with torch.no_grad():
        fa, fb = via_hf.extract(x), via_fs.extract(x)
        assert_close_rel(via_fs.project_context(fb.context), via_hf.project_context(fa.context), rtol=1e-6)
        qa, qb = via_hf.quantizer(fa.normed_features), via_fs.quantizer(fb.normed_features)
        assert torch.equal(qa.codes, qb.codes)


def copy_dir(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_mismatching_checkpoint_names_first_key_and_shape(hf_ctc_factory, tmp_path):
    _, directory = hf_ctc_factory("group", False)
    bad = copy_dir(directory, tmp_path / "bad")
    state = load_file(str(bad / "model.safetensors"))
    key = "wav2vec2.encoder.layers.1.feed_forward.intermediate_dense.weight"
    state[key] = torch.zeros(96, 64)
    save_file(state, str(bad / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"encoder\.layers\.1\.feed_forward\.intermediate\.weight.*\(96, 64\).*\(128, 64\)"):
        import_hf(bad)
    # And through the CLI: a clear one-line error, exit code 2, nothing written.
    out = tmp_path / "x.ckpt"
    assert w2v(["import", "hf", str(bad), "--out", str(out)]) == 2
    assert not out.exists()


def test_vocab_that_does_not_match_head_is_refused(hf_ctc_factory, tmp_path):
    _, directory = hf_ctc_factory("group", False)
    bad = copy_dir(directory, tmp_path / "bad")
    (bad / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(HF_TOKENS[:-2])}))
    with pytest.raises(CheckpointError, match="vocab_size"):
        import_hf(bad)


def test_fairseq_import_refuses_pickled_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (open, (str(tmp_path / "pwned"), "w"))

    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"model": {}, "args": Evil()}, f)
    with pytest.raises(CheckpointError, match="safely"):
        import_fairseq(path)
    assert not (tmp_path / "pwned").exists()


def test_fairseq_ctc_without_dictionary_is_a_clear_error(hf_ctc_factory, tmp_path):
    ref_model, directory = hf_ctc_factory("group", False)
    state = to_fairseq_state(load_file(str(directory / "model.safetensors")), "group", "legacy", ctc=True)
    path = tmp_path / "ctc.pt"
    write_fairseq_ckpt(path, state, fairseq_model_cfg(ref_model.config, "group"), False, True, "cfg")
    with pytest.raises(CheckpointError, match="dict"):
        import_fairseq(path)


def test_conv_layer_spec_is_parsed_without_eval():
    assert parse_conv_layers("[(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512,2,2)] * 2") == \
        [[512, 10, 5]] + [[512, 3, 2]] * 4 + [[512, 2, 2]] * 2
    with pytest.raises(CheckpointError):
        parse_conv_layers("__import__('os').system('true')")


@pytest.mark.slow
def test_fairseq_hubert_ctc_imports_to_transformers_numbers(tmp_path):
    """A fairseq hubert_ctc checkpoint (the same graph as wav2vec_ctc; HuBERT's pre-training
    label embeddings and projection are dropped) gives transformers' HubertForCTC numbers."""
    from tests import hf_families as fam

    model, _ = fam.build("hubert", tmp_path / "src", vocab="english", do_normalize=False, seed=12)
    hf_state = {re.sub(r"^hubert\.", "wav2vec2.", k): v for k, v in load_file(str(tmp_path / "src" / "model.safetensors")).items()}
    state = to_fairseq_state(hf_state, "group", "legacy", ctc=True)
    state["w2v_encoder.w2v_model.label_embs_concat"] = torch.zeros(3, 8)
    c = model.config
    cfg = {"_name": "hubert", "extractor_mode": "default", "conv_bias": False,
           "encoder_layers": c.num_hidden_layers, "encoder_embed_dim": c.hidden_size,
           "encoder_ffn_embed_dim": c.intermediate_size, "encoder_attention_heads": c.num_attention_heads,
           "layer_norm_first": False, "conv_pos": c.num_conv_pos_embeddings,
           "conv_pos_groups": c.num_conv_pos_embedding_groups, "final_dim": 8,
           "conv_feature_layers": "[(16, 10, 5)] + [(16, 3, 2)] * 4 + [(16, 2, 2)] * 2"}
    fs_path = tmp_path / "hubert_ctc.pt"
    write_fairseq_ckpt(fs_path, state, cfg, False, True, "cfg")
    torch.save({**torch.load(fs_path, weights_only=False),
                "cfg": {"model": {"_name": "hubert_ctc", "w2v_args": {"model": cfg, "task": {"normalize": False}}},
                        "task": {"normalize": False}}}, fs_path)
    tokens = list(fam.ENGLISH_VOCAB)
    (tmp_path / "dict.ltr.txt").write_text("".join(f"{t} {1000 - i}\n" for i, t in enumerate(tokens[4:])))
    ckpt = import_fairseq(fs_path)
    assert ckpt.model_config.family == "hubert" and list(ckpt.vocab.tokens) == tokens
    x = torch.from_numpy(speech_like(13000, seed=7, scale=0.2))[None]
    with torch.no_grad():
        ref = model(x).logits
        got, _ = ckpt.build_model()(x)
    assert_close_rel(got, ref, rtol=1e-5)
