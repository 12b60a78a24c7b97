"""vq-wav2vec (training/vq_wav2vec) against fairseq's own module code (tests/reference), the
fairseq checkpoint import, the quantizers' gradients, the prediction loss, and `w2v codes`."""

from __future__ import annotations

import argparse
import re

import numpy as np
import pytest
import soundfile as sf
import torch

from tests.conftest import speech_like
from tests.reference.fairseq_vq_wav2vec import base_wav2vec_architecture, build_wav2vec_model, wav2vec_criterion_loss
from training.checkpoint import Checkpoint, CheckpointError
from training.convert import import_fairseq, rename_state
from training.model import wav2vec2_small
from training.vq_wav2vec import VQWav2VecModel, sample_negative_indices, vq_wav2vec, vq_wav2vec_tiny
from training.vq_wav2vec.convert import (
    FAIRSEQ_VQ_RULES,
    fairseq_vq_wav2vec_config,
    import_fairseq_vq_wav2vec,
    load_vq_wav2vec_checkpoint,
)
from w2v_serve.cli import main as w2v

TOL = 1e-5          # max abs difference of float32 activations (features, ẑ, context, scores)
LOSS_RTOL = 1e-5    # relative difference of summed losses (summation order differs)
GRAD_RTOL = 1e-4    # max abs gradient difference / max abs gradient

TINY_ENCODER = "[(32, 10, 5), (32, 8, 4), (32, 4, 2), (32, 4, 2), (32, 4, 2), (32, 1, 1)]"
TINY_AGGREGATOR = "[(32, 2, 1), (32, 3, 1), (32, 4, 1)]"
PAPER_ENCODER = "[(512, 10, 5), (512, 8, 4), (512, 4, 2), (512, 4, 2), (512, 4, 2), (512, 1, 1), (512, 1, 1), (512, 1, 1)]"
PAPER_AGGREGATOR = ("[(512, 2, 1), (512, 3, 1), (512, 4, 1), (512, 5, 1), (512, 6, 1), (512, 7, 1), (512, 8, 1), "
                    "(512, 9, 1), (512, 10, 1), (512, 11, 1), (512, 12, 1), (512, 13, 1)]")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These models are tiny: one thread is fastest, and stays fast on a busy 2-core machine
    (two OpenMP threads there spin in barriers, up to 100x slower)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def fairseq_args(vq_type: str, encoder: str = TINY_ENCODER, aggregator: str = TINY_AGGREGATOR,
                 **overrides) -> argparse.Namespace:
    """The ``args`` of fairseq's vq-wav2vec training command (examples/wav2vec/README.md), as the
    published vq-wav2vec.pt carries them (with the trainer's keys that do not concern the model)."""
    args = argparse.Namespace(
        arch="wav2vec", task="audio_pretraining", criterion="wav2vec", optimizer="adam", lr=[1e-05],
        max_update=400000, sample_rate=16000, normalize=False, max_sample_size=150000, seed=2,
        conv_feature_layers=encoder, conv_aggregator_layers=aggregator, activation="gelu", offset="auto",
        skip_connections_agg=True, residual_scale=0.5, log_keys=["prob_perplexity", "code_perplexity", "temp"],
        vq_type=vq_type, vq_groups=2, vq_depth=2, combine_groups=True, vq_vars=16 if encoder == TINY_ENCODER else 320,
        vq_temp="(2,0.5,0.999995)", prediction_steps=4 if encoder == TINY_ENCODER else 12, num_negatives=5
        if encoder == TINY_ENCODER else 10, cross_sample_negatives=0,
        loss_weights=[1.0] if vq_type == "kmeans" else None,
    )
    for k, v in overrides.items():
        setattr(args, k, v)
    base_wav2vec_architecture(args)
    return args


def save_fairseq(path, ref, args, style: str = "args"):
    """fairseq's checkpoint layout: ``args`` (argparse era) or ``cfg`` (hydra era, plain dicts)."""
    extra = {"optimizer_history": [{"criterion_name": "Wav2vecCriterion", "optimizer_name": "Adam", "num_updates": 7}],
             "extra_state": {"epoch": 3, "val_loss": np.float64(2.5)}, "last_optimizer_state": None}
    if style == "args":
        torch.save({"args": args, "model": ref.state_dict(), **extra}, path)
    else:
        model = {k: v for k, v in vars(args).items() if k not in ("arch", "task", "criterion", "optimizer", "lr",
                                                                   "normalize", "sample_rate", "loss_weights")}
        model["_name"] = "wav2vec"
        model["infonce"] = False
        # Keys at the hydra era's defaults are left out, as a saved cfg may lack them.
        for key, default in (("log_compression", True), ("num_negatives", 10), ("skip_connections_agg", True)):
            if model.get(key) == default:
                del model[key]
        cfg = {"_name": None, "common": {"seed": 2}, "model": model,
               "task": {"_name": "audio_pretraining", "normalize": False, "sample_rate": 16000},
               "criterion": {"_name": "wav2vec", "infonce": False, "loss_weights": args.loss_weights}}
        torch.save({"cfg": cfg, "model": ref.state_dict(), **extra}, path)
    return path


def batch(n: int = 2, samples: int = 12000, seed: int = 0) -> torch.Tensor:
    return torch.stack([torch.from_numpy(speech_like(samples, seed + i, scale=0.5)) for i in range(n)])


def reference_draws(ref, x: torch.Tensor, seed: int, with_noise: bool):
    """The random draws of one training-mode fairseq forward after ``torch.manual_seed(seed)``: the
    Gumbel noise (as F.gumbel_softmax draws it) and the negatives' frame indices, recovered by
    sampling "negatives" of features that hold their own flat index."""
    with torch.no_grad():
        t = ref.feature_extractor(x).shape[2]
    b = x.shape[0]
    torch.manual_seed(seed)
    noise = None
    if with_noise:
        q = ref.vector_quantizer
        noise = -torch.empty(b * t * q.groups, q.num_vars).exponential_().log()
        noise = noise.view(b, t, q.groups, q.num_vars)
    coded = torch.arange(b * t, dtype=torch.float32).view(b, 1, t)
    negs = ref.wav2vec_predictions.sample_negatives(coded)          # [N, B, 1, T]
    return noise, negs[:, :, 0, :].permute(1, 0, 2).round().long()


def fairseq_order(scores: list[torch.Tensor]) -> torch.Tensor:
    """Our per-step [B, 1+N, T_k] scores in fairseq's flat cpc_logits order (step, copy, row, frame)."""
    return torch.cat([s.permute(1, 0, 2).flatten() for s in scores])


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


# ---------------------------------------------------------------------------- import parity
@pytest.mark.parametrize("vq_type", ["gumbel", "kmeans"])
@pytest.mark.parametrize("style", ["args", "cfg"])
def test_fairseq_checkpoint_imports_to_fairseq_numbers(vq_type, style, tmp_path):
    torch.manual_seed(11)
    args = fairseq_args(vq_type, log_compression=(style == "cfg"))   # cfg: left out, hydra default True
    ref = build_wav2vec_model(args).eval()
    ckpt = import_fairseq_vq_wav2vec(save_fairseq(tmp_path / "vq.pt", ref, args, style))
    cfg = ckpt.config
    assert (cfg.vq_type, cfg.vq_groups, cfg.vq_vars, cfg.combine_groups, cfg.activation) == (vq_type, 2, 16, True, "gelu")
    assert cfg.log_compression == (style == "cfg") and cfg.prediction_offset == ref.wav2vec_predictions.offset == 3
    assert cfg.loss_weights == ([1.0] if vq_type == "kmeans" else None)
    ours = ckpt.build_model()
    x = batch()

    with torch.no_grad():
        z_ref = ref.feature_extractor(x)
        _, codes_ref = ref.vector_quantizer.forward_idx(z_ref)
        codes, _ = ours.quantize(x)
        assert torch.equal(codes, codes_ref)                              # exact, [B, T, G]

        seed = 5
        _, neg_idx = reference_draws(ref, x, seed, with_noise=False)
        torch.manual_seed(seed)
        out_ref = ref(x)
        loss_ref, sample_size = wav2vec_criterion_loss(ref, out_ref, loss_weights=args.loss_weights)
        q_ref = ref.vector_quantizer(z_ref)["x"]
        c_ref = ref.feature_aggregator(q_ref)
        out = ours(x, negative_indices=neg_idx)
        loss = ours.loss(out)

    assert max_diff(out.features, z_ref.transpose(1, 2)) <= TOL
    assert max_diff(out.quantized, q_ref.transpose(1, 2)) <= TOL
    assert max_diff(out.context, c_ref.transpose(1, 2)) <= TOL
    assert torch.equal(out.quantizer.codes, codes_ref)
    assert max_diff(fairseq_order(out.predictions.scores), out_ref["cpc_logits"]) <= TOL
    assert loss.sample_size.item() == sample_size
    assert abs(loss.loss.item() - loss_ref.item()) <= LOSS_RTOL * abs(loss_ref.item())
    assert torch.allclose(out.quantizer.code_perplexity, out_ref["code_perplexity"], rtol=1e-5)

    # The project's vq-wav2vec file keeps config and weights.
    ckpt.save(tmp_path / "ours.ckpt")
    again = load_vq_wav2vec_checkpoint(tmp_path / "ours.ckpt")
    assert again.config == ckpt.config and again.meta["source"] == "fairseq"
    with torch.no_grad():
        assert torch.equal(again.build_model().quantize(x)[0], codes_ref)


@pytest.mark.parametrize("vq_type,loss_weights", [("gumbel", [0.5]), ("kmeans", [1.0])])
def test_training_step_matches_fairseq_for_the_same_draws(vq_type, loss_weights):
    """Training mode: the same Gumbel noise and negatives give fairseq's codes, loss and gradients."""
    torch.manual_seed(12)
    args = fairseq_args(vq_type, loss_weights=loss_weights)
    ref = build_wav2vec_model(args).train()
    a = vars(args)
    ours = VQWav2VecModel(fairseq_vq_wav2vec_config(a, a, a, "legacy"))
    ours.load_state_dict(rename_state(ref.state_dict(), FAIRSEQ_VQ_RULES))
    assert ours.config.loss_weights == loss_weights
    ours.train()
    if vq_type == "gumbel":
        ref.vector_quantizer.set_num_updates(100_000)
        ours.set_num_updates(100_000)
        assert ours.quantizer.temperature == pytest.approx(ref.vector_quantizer.curr_temp)
    x = batch(3, 8000, seed=4)
    noise, neg_idx = reference_draws(ref, x, 9, with_noise=vq_type == "gumbel")

    torch.manual_seed(9)
    out_ref = ref(x)
    loss_ref, _ = wav2vec_criterion_loss(ref, out_ref, loss_weights=loss_weights)
    loss_ref.backward()
    out = ours(x, negative_indices=neg_idx, gumbel_noise=noise)
    loss = ours.loss(out)
    loss.loss.backward()

    if vq_type == "gumbel":
        z = ref.feature_extractor(x)
        torch.manual_seed(9)
        _, codes_ref = ref.vector_quantizer.forward_idx(z)                 # the same noise again
        assert torch.equal(out.quantizer.codes, codes_ref)
        assert torch.allclose(out.quantizer.prob_perplexity, out_ref["prob_perplexity"], rtol=1e-5)
    assert abs(loss.loss.item() - loss_ref.item()) <= LOSS_RTOL * abs(loss_ref.item())
    ref_grads = rename_state({k: p.grad for k, p in ref.named_parameters() if p.grad is not None}, FAIRSEQ_VQ_RULES)
    ours_grads = {k: p.grad for k, p in ours.named_parameters() if p.grad is not None}
    assert set(ref_grads) == set(ours_grads)
    for key, g_ref in ref_grads.items():
        scale = g_ref.abs().max().item()
        assert max_diff(ours_grads[key], g_ref) <= GRAD_RTOL * max(scale, 1e-12), key


@pytest.mark.parametrize("vq_type", ["gumbel", "kmeans"])
def test_paper_builder_is_fairseqs_vq_wav2vec(vq_type):
    """vq_wav2vec(): the published models' architecture, parameter for parameter."""
    torch.manual_seed(0)
    ref = build_wav2vec_model(fairseq_args(vq_type, PAPER_ENCODER, PAPER_AGGREGATOR))
    ours = vq_wav2vec(vq_type)
    ref_shapes = {k: tuple(v.shape) for k, v in rename_state(ref.state_dict(), FAIRSEQ_VQ_RULES).items()}
    assert ref_shapes == {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    assert (ours.receptive_field, ours.hop_length, ours.config.prediction_offset) == (465, 160, 3)
    assert ours.predictions.offset == ref.wav2vec_predictions.offset
    if vq_type == "gumbel":
        assert ours.num_parameters() == sum(p.numel() for p in ref.parameters()) == 34_063_488


def test_padded_batch_gives_each_row_its_own_result():
    torch.manual_seed(1)
    for vq_type in ("gumbel", "kmeans"):
        model = vq_wav2vec_tiny(vq_type).eval()
        a, b = speech_like(9000, 1), speech_like(6000, 2)
        x = torch.zeros(2, 9000)
        x[0], x[1, :6000] = torch.from_numpy(a), torch.from_numpy(b)
        with torch.no_grad():
            out = model(x, torch.tensor([9000, 6000]))
            for row, wave in enumerate((a, b)):
                alone = model(torch.from_numpy(wave)[None])
                n = alone.context.shape[1]
                assert out.lengths[row].item() == n
                assert torch.equal(out.quantizer.codes[row, :n], alone.quantizer.codes[0])
                assert max_diff(out.context[row, :n], alone.context[0]) <= 1e-4
                assert max_diff(out.quantized[row, :n], alone.quantized[0]) <= 1e-4


def test_negatives_come_from_the_rows_valid_frames_never_the_target():
    torch.manual_seed(3)
    lengths = torch.tensor([40, 7, 25])
    idx = sample_negative_indices(3, 40, lengths, num_negatives=20, cross_sample_negatives=10)
    assert idx.shape == (3, 30, 40)
    own = torch.arange(3).view(3, 1, 1) * 40 + torch.arange(40).view(1, 1, 40)
    row, frame = idx // 40, idx % 40
    for b in range(3):
        valid = slice(0, int(lengths[b]))
        assert (row[b, :20, valid] == b).all() and (frame[b, :20, valid] < lengths[b]).all()
        assert (frame[b, 20:, valid] < lengths[row[b, 20:, valid]]).all()        # any row, its valid frames
    assert not (idx == own)[..., :7].any()


# ---------------------------------------------------------------------------- gradients
def test_kmeans_straight_through_reaches_the_encoder_and_the_codebook_only_its_loss():
    """vq-wav2vec's k-means (section 3.2 / fairseq's KmeansVectorQuantizer): the prediction loss
    reaches the encoder straight through ẑ and never the codebook; the codebook moves only by
    ‖sg(z) - ẑ‖²; the commitment term γ‖z - sg(ẑ)‖² reaches the encoder, not the codebook."""
    torch.manual_seed(2)
    model = vq_wav2vec_tiny("kmeans").train()
    x = batch(2, 8000)
    encoder_w = model.feature_extractor.conv_layers[0].conv.weight
    codebook = model.quantizer.codevectors

    def grads(loss_of):
        model.zero_grad(set_to_none=True)
        torch.manual_seed(0)
        out = model(x)
        loss_of(out).backward()
        return (None if encoder_w.grad is None else encoder_w.grad.clone(),
                None if codebook.grad is None else codebook.grad.clone())

    enc, book = grads(lambda o: model.loss(o).prediction_loss)
    assert enc is not None and enc.abs().max() > 0
    assert book is None or not book.any()

    model.quantizer.gamma = 0.0                        # the codebook term alone
    enc_cb, book_cb = grads(lambda o: o.quantizer.kmeans_loss)
    assert enc_cb is None or not enc_cb.any()
    assert book_cb is not None and book_cb.abs().max() > 0
    model.quantizer.gamma = 0.25                       # + the commitment term
    enc_k, book_k = grads(lambda o: o.quantizer.kmeans_loss)
    assert enc_k is not None and enc_k.abs().max() > 0
    assert torch.allclose(book_k, book_cb, rtol=0, atol=0)

    # The codebook gradient is d/de ‖sg(z) - e_i‖² (mean over frames and channels): 2(e_i - z)/(T·C)
    # summed over the frames that chose e_i.
    with torch.no_grad():
        z = model.feature_extractor(x)[0]
        ze = model.quantizer.projection_norm(model.quantizer.projection(z))
        b, c, t = ze.shape
        codes = model(x).quantizer.codes                                  # [B, T, G]
        zg = ze.view(b, 2, c // 2, t).permute(0, 3, 1, 2)                 # [B, T, G, d]
        expected = torch.zeros_like(codebook)                             # [V, 1, d] (groups share it)
        e = codebook[codes, 0]                                            # [B, T, G, d]
        expected[:, 0].index_add_(0, codes.flatten(), (2 * (e - zg) / (b * t * c)).reshape(-1, c // 2))
    assert max_diff(book_cb, expected) <= 1e-6


def test_gumbel_forward_is_one_codeword_backward_trains_the_scores():
    torch.manual_seed(4)
    model = vq_wav2vec_tiny("gumbel").train()
    x = batch(2, 8000)
    out = model(x)
    q = model.quantizer
    entries = q.entries()                                                # [G, V, d]
    chosen = entries[torch.arange(2), out.quantizer.codes]               # [B, T, G, d]
    assert max_diff(out.quantized, chosen.flatten(2)) <= 1e-6           # forward: exactly e_i
    model.loss(out).loss.backward()
    assert q.logits.weight.grad.abs().max() > 0 and q.hidden[0].weight.grad.abs().max() > 0
    used = torch.zeros(q.num_vars, dtype=torch.bool)
    used[out.quantizer.codes.flatten()] = True
    book = q.codevectors.grad[0]                                         # [V, d]
    assert book[used].abs().sum(dim=1).gt(0).all() and not book[~used].any()
    model.set_num_updates(10**6)
    assert q.temperature == 0.5
    model.set_num_updates(1000)
    assert q.temperature == pytest.approx(2 * 0.999995 ** 1000)


def train_tiny(quantizer: str, updates: int = 50) -> list[float]:
    """Prediction loss per target over ``updates`` Adam updates of a tiny model on a fixed batch."""
    torch.manual_seed(0)
    model = vq_wav2vec_tiny(quantizer).train()
    x = batch(3, 8000, seed=20)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    history = []
    for step in range(updates):
        model.set_num_updates(step)
        loss = model.loss(model(x))
        (loss.loss / loss.sample_size).backward()
        opt.step()
        opt.zero_grad()
        history.append((loss.prediction_loss / loss.sample_size).item())
    return history


@pytest.mark.parametrize("quantizer", ["gumbel", "kmeans"])
def test_prediction_loss_falls_on_speech_like_audio(quantizer):
    history = train_tiny(quantizer)
    first, last = np.mean(history[:5]), np.mean(history[-5:])
    assert last < 0.85 * first, (first, last)


def test_prediction_loss_learns_more_than_the_prior():
    """Within 50 updates the tiny quantized models reach the loss of scores that cannot tell the
    target from its N = 5 distractors (log 6 + 5 log 6/5 = 2.70 per target: one utterance of
    speech_like audio gives them few distinct codewords yet); the same network without the
    quantizer, on the same audio, gets well below it: the future-step task carries signal."""
    chance = np.log(6) + 5 * np.log(6 / 5)
    history = train_tiny("none")
    assert np.mean(history[-5:]) < chance - 0.3, history[-5:]


# ---------------------------------------------------------------------------- bad input
def test_wrong_model_family_is_a_clear_error(tmp_path):
    torch.manual_seed(0)
    args = fairseq_args("gumbel")
    vq_path = save_fairseq(tmp_path / "vq.pt", build_wav2vec_model(args), args)
    with pytest.raises(CheckpointError, match=r"vq-wav2vec checkpoint \(architecture 'wav2vec'\), not wav2vec 2\.0"):
        import_fairseq(vq_path)

    w2v2 = tmp_path / "wav2vec2.pt"
    torch.save({"args": argparse.Namespace(arch="wav2vec2", encoder_embed_dim=64),
                "model": {"feature_extractor.conv_layers.0.0.weight": torch.zeros(4, 1, 10)}}, w2v2)
    with pytest.raises(CheckpointError, match=r"is a wav2vec 2\.0 checkpoint \(architecture 'wav2vec2'\), not vq-wav2vec"):
        import_fairseq_vq_wav2vec(w2v2)

    ours = tmp_path / "pretrain.pt"
    Checkpoint.from_model(wav2vec2_small(quantizer=True)).save(ours)
    with pytest.raises(CheckpointError, match="is a w2v wav2vec 2.0 checkpoint"):
        load_vq_wav2vec_checkpoint(ours)

    broken = fairseq_args("gumbel", vq_vars=8)     # config says V=8, weights have V=16
    torch.save({"args": broken, "model": build_wav2vec_model(args).state_dict()}, tmp_path / "misfit.pt")
    with pytest.raises(CheckpointError, match="does not fit the model"):
        import_fairseq_vq_wav2vec(tmp_path / "misfit.pt")


# ---------------------------------------------------------------------------- w2v codes
@pytest.fixture(scope="module")
def audio_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("codes_audio")
    a, b = d / "a.wav", d / "b.flac"
    sf.write(a, speech_like(12000, 31), 16000)
    sf.write(b, speech_like(8000, 32), 8000)                       # resampled to 16 kHz by the loader
    bad = d / "corrupt.wav"
    bad.write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt garbage that is not audio")
    return a, bad, b


def test_codes_from_fairseq_vq_wav2vec(audio_files, tmp_path, capsys):
    from w2v_serve.audio import load_audio

    a, bad, b = audio_files
    torch.manual_seed(21)
    args = fairseq_args("gumbel")
    ref = build_wav2vec_model(args).eval()
    ckpt = save_fairseq(tmp_path / "vq.pt", ref, args)

    assert w2v(["codes", "--checkpoint", str(ckpt), str(a), str(bad), str(b)]) == 1
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert [ln.split("\t")[0] for ln in lines] == [str(a), str(b)]
    assert re.search(r"w2v codes: .*corrupt\.wav: not a readable audio file", captured.err)
    assert "1 of 3 file(s) failed" in captured.err
    for line, path in zip(lines, (a, b)):
        with torch.no_grad():
            _, idx = ref.vector_quantizer.forward_idx(ref.feature_extractor(torch.from_numpy(load_audio(path))[None]))
        # fairseq's vq-wav2vec_featurize.py line for this file.
        expected = " ".join("-".join(map(str, frame.tolist())) for frame in idx[0])
        assert line.split("\t")[1] == expected

    # Flat indices g1 * V + g2, a manifest input, units only, to a file.
    manifest = tmp_path / "train.tsv"
    manifest.write_text(f"{a.parent}\n{a.name}\t12000\n{bad.name}\t100\n{b.name}\t16000\n")
    out = tmp_path / "units" / "train.src"
    assert w2v(["codes", "-c", str(ckpt), str(manifest), "--format", "flat", "--no-path", "--output", str(out)]) == 1
    flat = out.read_text().split("\n")
    assert flat[1] == "" and len(flat) == 4 and flat[3] == ""      # the failed file keeps its line
    pairs = lines[0].split("\t")[1].split()
    assert flat[0].split() == [str(int(p.split("-")[0]) * 16 + int(p.split("-")[1])) for p in pairs]


def test_codes_from_wav2vec2_pretraining_checkpoint(audio_files, tmp_path, capsys):
    from w2v_serve.audio import load_audio

    a, _, b = audio_files
    torch.manual_seed(22)
    model = wav2vec2_small(quantizer=True, num_layers=1).eval()
    ckpt = tmp_path / "pretrain.pt"
    Checkpoint.from_model(model).save(ckpt)
    assert w2v(["codes", "-c", str(ckpt), str(a), str(b)]) == 0
    lines = capsys.readouterr().out.splitlines()
    with torch.no_grad():
        feats = model.extract(torch.from_numpy(load_audio(a))[None])
        codes = model.quantizer(feats.normed_features).codes[0]
    g = model.config.num_codevector_groups
    assert lines[0] == f"{a}\t" + " ".join("-".join(map(str, c)) for c in codes.tolist())
    assert all(len(u.split("-")) == g for u in lines[1].split("\t")[1].split())

    encoder_only = tmp_path / "ctc.pt"
    Checkpoint.from_model(wav2vec2_small(num_layers=1)).save(encoder_only)
    assert w2v(["codes", "-c", str(encoder_only), str(a)]) == 2
    assert "without the quantizer" in capsys.readouterr().err
