"""Our model against transformers' Wav2Vec2 (the numeric reference), imported with `w2v import hf`.

Tolerance: |ours - reference| <= 1e-4 * max|reference| + 1e-6 elementwise, fp32, eval mode.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.conftest import ARCHS, save_hf_model, small_hf_config, speech_like
from training.checkpoint import load_checkpoint
from w2v_serve.cli import main as w2v

RTOL = 1e-4


def assert_close_rel(got: torch.Tensor, ref: torch.Tensor, rtol: float = RTOL) -> None:
    assert got.shape == ref.shape, (got.shape, ref.shape)
    scale = ref.abs().max().item()
    err = (got - ref).abs().max().item()
    assert err <= rtol * scale + 1e-6, f"max abs error {err:.3g} vs allowed {rtol * scale:.3g}"


def import_cli(directory, tmp_path, name="model.ckpt"):
    out = tmp_path / name
    assert w2v(["import", "hf", str(directory), "--out", str(out)]) == 0
    return load_checkpoint(out)


# DC offsets and scales that a real front end produces; the reference gets exactly what
# transformers' own feature extractor makes of them.
SIGNALS = [(16000, 1.0, 0.0), (12345, 0.01, 0.3), (20480, 3.0, -0.7)]


@pytest.mark.parametrize("arch", sorted(ARCHS))
@pytest.mark.parametrize("do_normalize", [True, False])
def test_ctc_logits_match_transformers(arch, do_normalize, hf_ctc_factory, tmp_path):
    from transformers import Wav2Vec2FeatureExtractor

    ref_model, directory = hf_ctc_factory(arch, do_normalize)
    ckpt = import_cli(directory, tmp_path)
    assert ckpt.kind == "ctc" and ckpt.model_config.normalize_waveform == do_normalize
    assert list(ckpt.vocab.tokens)[:5] == ["<pad>", "<s>", "</s>", "<unk>", "|"]
    ours = ckpt.build_model()
    fe = Wav2Vec2FeatureExtractor.from_pretrained(directory)
    for i, (n, scale, dc) in enumerate(SIGNALS):
        x = speech_like(n, seed=i, scale=scale, dc=dc)
        ref_in = fe(x, sampling_rate=16000, return_tensors="pt").input_values
        with torch.no_grad():
            ref = ref_model(ref_in).logits
            got, frames = ours(torch.from_numpy(x)[None], torch.tensor([n]))
        assert frames.tolist() == [ref.shape[1]]
        assert_close_rel(got, ref)
        assert torch.equal(got.argmax(-1), ref.argmax(-1))


def test_padded_batch_matches_transformers_attention_mask(hf_ctc_factory, tmp_path):
    """The stable-layer-norm architecture supports padded batches in transformers."""
    from transformers import Wav2Vec2FeatureExtractor

    ref_model, directory = hf_ctc_factory("layer", True)
    ours = import_cli(directory, tmp_path).build_model()
    xs = [speech_like(n, seed=10 + n, scale=s, dc=d) for n, s, d in SIGNALS]
    fe = Wav2Vec2FeatureExtractor.from_pretrained(directory)
    ref_in = fe(xs, sampling_rate=16000, return_tensors="pt", padding=True, return_attention_mask=True)
    with torch.no_grad():
        ref = ref_model(ref_in.input_values, attention_mask=ref_in.attention_mask).logits
        batch = torch.zeros(len(xs), max(len(x) for x in xs))
        for i, x in enumerate(xs):
            batch[i, : len(x)] = torch.from_numpy(x)
        lengths = torch.tensor([len(x) for x in xs])
        got, frames = ours(batch, lengths)
    for i in range(len(xs)):
        assert_close_rel(got[i, : frames[i]], ref[i, : frames[i]])


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_padded_batch_rows_equal_single_runs(arch, hf_ctc_factory, tmp_path):
    """Each row of a padded batch equals that utterance alone, GroupNorm models included
    (the first block's normalization runs over each row's valid frames only)."""
    ref_model, directory = hf_ctc_factory(arch, arch == "layer")
    ours = import_cli(directory, tmp_path).build_model()
    xs = [speech_like(n, seed=20 + n, scale=s, dc=d) for n, s, d in SIGNALS]
    batch = torch.zeros(len(xs), max(len(x) for x in xs))
    for i, x in enumerate(xs):
        batch[i, : len(x)] = torch.from_numpy(x)
    with torch.no_grad():
        got, frames = ours(batch, torch.tensor([len(x) for x in xs]))
        for i, x in enumerate(xs):
            alone, _ = ours(torch.from_numpy(x)[None])
            assert frames[i] == alone.shape[1]
            assert_close_rel(got[i, : frames[i]], alone[0])


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_pretraining_model_matches_transformers(arch, tmp_path):
    """Wav2Vec2ForPreTraining: context vectors (project_hid), quantized targets (project_q, eval
    argmax), code perplexity — with and without a time mask."""
    from transformers import Wav2Vec2FeatureExtractor, Wav2Vec2ForPreTraining

    torch.manual_seed(99)
    ref_model = Wav2Vec2ForPreTraining(small_hf_config(arch)).eval()
    directory = save_hf_model(ref_model, tmp_path / "hf_pre", do_normalize=True, vocab=False)
    ckpt = import_cli(directory, tmp_path)
    assert ckpt.kind == "pretrain" and ckpt.vocab is None
    ours = ckpt.build_model()
    x = speech_like(16000, seed=5, scale=0.5, dc=0.1)
    ref_in = Wav2Vec2FeatureExtractor.from_pretrained(directory)(x, sampling_rate=16000, return_tensors="pt").input_values
    frames = int(ours.frame_lengths(torch.tensor([16000]))[0])
    gen = torch.Generator().manual_seed(0)
    mask = torch.rand(1, frames, generator=gen) < 0.4
    for m in (None, mask):
        with torch.no_grad():
            ref = ref_model(ref_in, mask_time_indices=m)
            feats = ours.extract(torch.from_numpy(x)[None], mask=m)
            q = ours.quantizer(feats.normed_features, frame_mask=m)
            got_context = ours.project_context(feats.context)
            got_quantized = ours.project_q(q.quantized)
        assert_close_rel(got_context, ref.projected_states)
        assert_close_rel(got_quantized, ref.projected_quantized_states)
        assert torch.allclose(q.code_perplexity, ref.codevector_perplexity, rtol=1e-4)


def test_param_counts_match_published_architectures():
    """Builders against transformers' own BASE and LARGE (LV-60) definitions, counted on meta."""
    from transformers import Wav2Vec2Config, Wav2Vec2Model as HFModel

    from training.model import wav2vec2_base, wav2vec2_large, wav2vec2_small

    with torch.device("meta"):
        base, large = wav2vec2_base(), wav2vec2_large()
        hf_base = HFModel(Wav2Vec2Config())
        hf_large = HFModel(Wav2Vec2Config(
            hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
            feat_extract_norm="layer", do_stable_layer_norm=True, conv_bias=True))
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(base) == count(hf_base)
    assert count(large) == count(hf_large)
    assert 90e6 < count(base) < 100e6 and 300e6 < count(large) < 330e6
    small = wav2vec2_small(vocab_size=32)
    assert 1e6 < small.num_parameters() < 10e6
    assert (small.receptive_field, small.hop_length) == (400, 320)
    assert (base.receptive_field, base.hop_length) == (400, 320)


def test_mask_embedding_replaces_only_masked_steps():
    from training.model import wav2vec2_small

    torch.manual_seed(0)
    model = wav2vec2_small().eval()
    x = torch.from_numpy(speech_like(8000, seed=3))[None]
    with torch.no_grad():
        feats, _ = model.encode_features(x)
        projected, _ = model.feature_projection(feats)
        mask = torch.zeros(1, feats.shape[1], dtype=torch.bool)
        mask[0, 5:15] = True
        captured = {}
        hook = model.encoder.register_forward_pre_hook(lambda mod, inp: captured.setdefault("x", inp[0]))
        model.contextualize(feats, mask=mask)
        hook.remove()
    assert torch.equal(captured["x"][0, 5:15], model.mask_embedding.expand(10, -1))
    assert torch.equal(captured["x"][0, ~mask[0]], projected[0, ~mask[0]])


def test_layer_drop_only_in_training():
    from training.model import wav2vec2_small

    torch.manual_seed(0)
    model = wav2vec2_small(layer_drop=1.0, dropout=0.0, attention_dropout=0.0, dropout_input=0.0)
    x = torch.from_numpy(speech_like(8000, seed=4))[None]
    called = []
    for layer in model.encoder.layers:
        layer.register_forward_hook(lambda *a: called.append(1))
    model.train()
    model(x)
    assert called == []          # p=1: every block dropped
    model.eval()
    model(x)
    assert len(called) == len(model.encoder.layers)


def test_small_preset_encoder_sees_quiet_input():
    """No conv bias + per-frame LayerNorm in the first block: the conv encoder's output does not
    depend on input gain (down to where LayerNorm's eps acts as a noise floor). With a conv bias,
    quiet audio is swamped by it and every frame looks alike (training from scratch stalled)."""
    from training.model import wav2vec2_small

    x = torch.from_numpy(speech_like(16000, seed=12, scale=1.0))[None]

    def loud_and_quiet(**overrides):
        torch.manual_seed(0)
        model = wav2vec2_small(**overrides).eval()
        with torch.no_grad():
            return model.encode_features(x)[0][0], model.encode_features(0.05 * x)[0][0]  # -26 dB

    loud, quiet = loud_and_quiet()
    assert quiet.std(0).mean() > 0.9 * loud.std(0).mean()            # time variation survives
    assert (quiet - loud).abs().median() < 0.02 * loud.abs().max()    # same features
    loud_b, quiet_b = loud_and_quiet(conv_bias=True)
    assert quiet_b.std(0).mean() < 0.5 * loud_b.std(0).mean()         # the failure this prevents
