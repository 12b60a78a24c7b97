"""wav2vec-U (training.wav2vec_u): phonemizer and folding, k-means, PCA, segment pooling, the GAN's
penalties on hand-worked values, the linear probe and the GAN on a toy problem, the CLI."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from training.wav2vec_u.features import (
    FeatureSet,
    assign,
    kmeans,
    layer_features,
    mean_pool,
    merge_clusters,
    pca_apply,
    pca_fit,
)
from training.wav2vec_u.gan import (
    Discriminator,
    GanConfig,
    GanData,
    Generator,
    code_penalty,
    gradient_penalty,
    join_segments,
    load_gan,
    phone_error_rate,
    smoothness_penalty,
    train_gan,
)
from training.wav2vec_u.lm import PhoneLM
from training.wav2vec_u.phonemize import (
    SIL,
    PhoneSet,
    build_phone_set,
    corpus_sentences,
    espeak_mnemonics,
    fold_mnemonic,
    fold_sequence,
    unpaired_sentences,
)
from training.wav2vec_u.probe import ProbeConfig, evaluate_probe, train_probe
from w2v_serve.cli import main as w2v

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---------------------------------------------------------------------------- text
@needs_espeak
def test_espeak_mnemonics_are_what_espeak_ng_prints():
    # $ espeak-ng -q -x --sep='|' -v en-us "hello world"  ->  h|@|l|'oU w|'3:|l|d
    raw = espeak_mnemonics(["hello world", "the cat sat on the mat", "church judge thing"])
    assert raw[0] == ["h", "@", "l", "'oU", "w", "'3:", "l", "d"]
    assert raw[1] == ["D", "@2", "k", "'a", "t", "s", "'a", "t", "O2", "n", "D", "@2", "m", "'a", "t"]
    assert raw[2] == ["tS", "'3:", "tS", "dZ", "'V", "dZ", "T", "'I", "N"]
    table: dict = {}
    assert fold_sequence(raw[0], table) == ["h", "@", "l", "oU", "w", "3", "l", "d"]
    assert fold_sequence(raw[1], table) == ["D", "@", "k", "a", "t", "s", "a", "t", "O", "n", "D", "@", "m", "a", "t"]
    assert fold_sequence(raw[2], table) == ["tS", "3", "tS", "dZ", "V", "dZ", "T", "I", "N"]
    assert table["'oU"] == "oU" and table["@2"] == "@"   # the table records every mnemonic seen


def test_folding_rules_on_hand_examples():
    cases = {"'oU": "oU", ",i:": "i", "@2": "@", "t#": "t", "I#": "I", "a#": "@", "r-": "r", "n-": "n",
             "'aa": "a", "'aI3": "aI", "aI@": "aI", "'i@3": "i@", "?": "t", "x": "k", "@L": "@L", "3:": "3",
             "'O:": "O", "O2": "O", "0": "0", "tS": "tS", "_:": SIL, "_!": SIL, "_": SIL, ";": None, "": None}
    for raw, folded in cases.items():
        assert fold_mnemonic(raw) == folded, raw
    assert fold_mnemonic("_:", keep_pauses=False) is None
    # silence: none at the ends, one per run
    assert fold_sequence(["_:", "h", "_:", "_!", "'@", ";", "_:"], {}) == ["h", SIL, "@"]


def test_phone_set_inventory_counts_and_json(tmp_path):
    seqs = [["a", "b", "a"], ["a", SIL, "c"], ["b", "z"]]
    ps = build_phone_set(seqs, {"'a": "a"}, min_count=2)
    assert ps.phones == ["a", "b", SIL]            # by count (3, 2), <SIL> kept though seen once
    assert ps.dropped == {"c": 1, "z": 1}
    assert ps.index(["a", SIL, "b"]) == [0, 2, 1] and ps.index(["a", "c"]) is None
    assert ps.silence == 2
    ps.save(tmp_path / "phones.json")
    back = PhoneSet.load(tmp_path / "phones.json")
    assert back.phones == ps.phones and back.table == {"'a": "a"} and back.dropped == ps.dropped
    assert json.loads((tmp_path / "phones.json").read_text())["silence"] == SIL


def test_unpaired_text_excludes_the_corpus_transcripts(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "train.wrd").write_text("the cat sat on the mat\n")
    (corpus / "test.jsonl").write_text(json.dumps({"path": "x.wav", "text": "a big dog ran home"}) + "\n")
    text = tmp_path / "text.txt"
    text.write_text("The cat sat on the mat.\nA big dog ran home.\nWe like green tea every day.\n"
                    "Birds fly over the hills.\n")
    exclude = corpus_sentences(corpus)
    assert exclude == {"the cat sat on the mat", "a big dog ran home"}
    got = unpaired_sentences(exclude, text_files=[text], seed=1)
    assert sorted(got) == ["birds fly over the hills", "we like green tea every day"]


# ---------------------------------------------------------------------------- k-means, PCA, pooling
def test_kmeans_finds_the_known_optimum_of_three_squares():
    squares = [(0.0, 0.0), (10.0, 10.0), (0.0, 10.0)]
    pts = torch.tensor([(x + dx, y + dy) for x, y in squares for dx in (0, 1) for dy in (0, 1)])
    centroids, objective = kmeans(pts, 3, niter=20, nredo=3, seed=0)
    got = sorted(tuple(round(v, 6) for v in c.tolist()) for c in centroids)
    assert got == [(0.5, 0.5), (0.5, 10.5), (10.5, 10.5)]
    assert objective == pytest.approx(6.0, abs=1e-5)   # each square: 4 points at squared distance 0.5
    ids, d = assign(pts, centroids)
    assert len(set(ids[:4].tolist())) == 1 and d.sum().item() == pytest.approx(6.0, abs=1e-5)


def test_kmeans_is_a_lloyd_fixed_point_in_float64():
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(300, 5, generator=g) + 4 * torch.randn(1, 5, generator=g) for _ in range(6)])
    c, objective = kmeans(x, 6, niter=50, seed=1)
    x64, c64 = x.double(), c.double()
    dist = torch.cdist(x64, c64) ** 2
    ids = dist.argmin(1)
    means = torch.stack([x64[ids == k].mean(0) for k in range(6)])
    assert torch.allclose(means, c64, atol=1e-4)
    assert objective == pytest.approx(dist.min(1).values.sum().item(), rel=1e-5)


def test_pca_matches_numpy_svd_in_float64():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((400, 8)) @ rng.standard_normal((8, 8)) + rng.standard_normal(8) * 3
    a, b = pca_fit(torch.tensor(x), 3)
    mean = x.mean(0)
    _, s, vt = np.linalg.svd(x - mean, full_matrices=False)
    v = vt[:3].T
    signs = np.sign(v[np.abs(v).argmax(0), np.arange(3)])   # the same sign rule as pca_fit
    v = v * signs
    assert np.allclose(a.numpy(), v, atol=1e-5)
    assert np.allclose(b.numpy(), -mean @ v, atol=1e-4)
    proj = pca_apply(torch.tensor(x, dtype=torch.float32), a, b).numpy()
    assert np.allclose(proj, (x - mean) @ v, atol=1e-3)
    assert np.allclose(proj.var(0), s[:3] ** 2 / len(x), rtol=1e-4)


def test_merge_clusters_and_mean_pool_on_a_hand_example():
    feats = torch.tensor([[1.0, 0.0], [3.0, 2.0], [5.0, 4.0], [7.0, 6.0], [9.0, 8.0], [0.0, 1.0]])
    clusters = torch.tensor([4, 4, 2, 2, 2, 4])    # cluster 4 comes back: a new segment
    seg = merge_clusters(feats, clusters)
    assert seg.tolist() == [[2.0, 1.0], [7.0, 6.0], [0.0, 1.0]]
    # fairseq's mean_pool.py at rate 0.5: pairs; an odd tail is paired with a copy of itself
    assert mean_pool(seg).tolist() == [[4.5, 3.5], [0.0, 1.0]]
    assert mean_pool(seg[:2]).tolist() == [[4.5, 3.5]]
    assert mean_pool(seg[:1]).tolist() == [[2.0, 1.0]]
    fs = FeatureSet.from_list([seg.numpy(), seg[:1].numpy()])
    assert fs.lengths == [3, 1] and fs[1].tolist() == [[2.0, 1.0]]


def test_layer_features_of_the_last_block_match_the_model_before_its_final_layer_norm():
    from training.model import wav2vec2_small

    torch.manual_seed(0)
    model = wav2vec2_small(conv_layers=[[32, 10, 5]] + [[32, 3, 2]] * 4 + [[32, 2, 2]] * 2, embed_dim=32,
                           num_layers=2, num_heads=2, ffn_dim=64, pos_conv_kernel=8, pos_conv_groups=4).eval()
    audio = torch.randn(2, 8000)
    lengths = torch.tensor([8000, 6000])
    full, _ = model(audio, lengths)
    last, frames = layer_features(model, audio, lengths, 1)
    assert torch.allclose(model.encoder.layer_norm(last), full, atol=1e-5)   # pre-LN: the final LN comes after
    first, _ = layer_features(model, audio[1:, :6000], None, 0)
    row, _ = layer_features(model, audio, lengths, 0)
    assert torch.allclose(row[1, : int(frames[1])], first[0], atol=1e-4)       # padding does not leak


# ---------------------------------------------------------------------------- GAN pieces
def test_smoothness_penalty_hand_example():
    logits = torch.tensor([[[0.0, 0.0], [1.0, 1.0], [3.0, 1.0]]])
    none = torch.zeros(1, 3, dtype=torch.bool)
    # differences (1,1) and (2,0): squares 1+1+4+0 = 6 over 4 entries
    assert smoothness_penalty(logits, none).item() == pytest.approx(1.5)
    last_padded = torch.tensor([[False, False, True]])
    assert smoothness_penalty(logits, last_padded).item() == pytest.approx(0.5)


def test_code_penalty_hand_example():
    flat = torch.zeros(1, 2, 2)
    pen, prob_ppl, code_ppl = code_penalty(flat, None)
    assert prob_ppl.item() == pytest.approx(2.0, abs=1e-5) and pen.item() == pytest.approx(0.0, abs=1e-5)
    logits = torch.tensor([[[10.0, 0.0], [10.0, 0.0], [0.0, 10.0]]])
    pen, prob_ppl, code_ppl = code_penalty(logits, torch.tensor([[False, False, True]]))  # 3rd padded
    p = np.exp([10.0, 0.0]) / np.exp([10.0, 0.0]).sum()
    ppl = math.exp(-(p * np.log(p + 1e-7)).sum())
    assert prob_ppl.item() == pytest.approx(ppl, rel=1e-5)
    assert pen.item() == pytest.approx((2 - ppl) / 2, rel=1e-5)
    assert code_ppl.item() == pytest.approx(1.0, abs=1e-5)


class _LinearD(torch.nn.Module):
    """D(x) = mean over time of x[t] . w: its gradient is w / T at every position."""

    def __init__(self, w):
        super().__init__()
        self.w = torch.tensor(w)

    def forward(self, x, padding):
        return (x @ self.w).mean(1)


def test_gradient_penalty_hand_example():
    # grad wrt x[b, t, c] = w_c / T; its norm over time is |w_c| / sqrt(T) = |w_c| / 2 for T = 4:
    # (1 - 1)^2 + (0 - 1)^2 + (2 - 1)^2 = 2 per row; real and fake are cut to 3 rows x 4 steps.
    real = torch.rand(3, 4, 3)
    fake = torch.rand(5, 6, 3)
    gp = gradient_penalty(_LinearD([2.0, 0.0, -4.0]), real, fake)
    assert gp.item() == pytest.approx(6.0, rel=1e-5)


def test_discriminator_ignores_padding_and_is_causal():
    torch.manual_seed(0)
    d = Discriminator(5, GanConfig(discriminator_dim=16))
    x = torch.softmax(torch.randn(2, 8, 5), -1)
    pad = torch.zeros(2, 8, dtype=torch.bool)
    pad[0, 5:] = True
    garbage = x.clone()
    garbage[0, 5:] = 100.0
    both = d(garbage, pad)
    assert both[0].item() == pytest.approx(d(x[:1, :5], None)[0].item(), abs=1e-5)
    assert both[1].item() == pytest.approx(d(x[1:], None)[0].item(), abs=1e-5)


def test_generator_output_length_and_padding_shift_and_join():
    g = Generator(3, 4, GanConfig())
    pad = torch.tensor([[False, False, False, True, True]])
    logits, out_pad = g(torch.randn(1, 5, 3), pad)
    assert logits.shape == (1, 6, 4)                       # kernel 4, padding 2: T + 1
    assert out_pad.tolist() == [[False, False, False, False, True, True]]
    runs = torch.tensor([[[2.0, 0.0], [4.0, 0.0], [0.0, 1.0], [0.0, 5.0], [9.0, 0.0]]])
    joined, jpad = join_segments(runs, torch.tensor([[False, False, False, False, True]]), training=False)
    # as fairseq, the width counts the padding run too: one padded position remains
    assert joined.tolist() == [[[3.0, 0.0], [0.0, 3.0], [0.0, 0.0]]] and jpad.tolist() == [[False, False, True]]
    torch.manual_seed(0)
    picked, _ = join_segments(runs, torch.tensor([[False, False, False, False, True]]), training=True)
    assert picked[0, 0].tolist() in ([2.0, 0.0], [4.0, 0.0]) and picked[0, 1].tolist() in ([0.0, 1.0], [0.0, 5.0])


def test_phone_lm_scores_like_an_ngram_model():
    lm = PhoneLM([["a", "b"], ["a", "b"], ["b", "a"]], order=2)
    assert lm.score(["a", "b"]) > lm.score(["b", "b"])
    total = sum(lm.prob(("a",), t) for t in lm.vocab)
    assert 0.95 < total <= 1.0   # what is left goes to unseen tokens


# ---------------------------------------------------------------------------- toy problem
P, DIM = 8, 16


def _toy_language(seed: int = 0):
    """A phone 'language': a Markov chain over P phones, each followed by one of 3 others
    (0.6 / 0.3 / 0.1), no phone twice in a row."""
    rng = np.random.default_rng(100 + seed)
    trans = np.zeros((P, P))
    for i in range(P):
        nxt = rng.choice([j for j in range(P) if j != i], 3, replace=False)
        trans[i, nxt] = [0.6, 0.3, 0.1]

    def sentences(n: int, r: np.random.Generator) -> list[list[int]]:
        out = []
        for _ in range(n):
            s = [int(r.integers(P))]
            for _ in range(int(r.integers(7, 19))):
                s.append(int(r.choice(P, p=trans[s[-1]])))
            out.append(s)
        return out

    mapping = rng.standard_normal((P, DIM))        # the fixed random linear map phone -> "audio"
    return sentences, mapping


class _Phones:
    phones = [f"p{i}" for i in range(P)]
    silence = None

    def to_dict(self):
        return {"phones": self.phones}


def _chance_per(refs, seed=0):
    """PER of the right segments under a random relabeling of the phones (what a GAN that
    learned nothing about the mapping scores), averaged over 20 relabelings."""
    rng = np.random.default_rng(seed)
    pers = []
    for _ in range(20):
        perm = rng.permutation(P)
        hyps = []
        for r in refs:
            h = [int(perm[p]) for p in r]
            hyps.append([p for i, p in enumerate(h) if i == 0 or p != h[i - 1]])
        pers.append(phone_error_rate(refs, hyps)[0])
    return float(np.mean(pers))


def test_linear_probe_recovers_phones_from_frames():
    sentences, mapping = _toy_language()
    r = np.random.default_rng(5)
    utts = sentences(240, np.random.default_rng(2))

    def frames(s):  # each phone lasts 2-4 frames, noisy
        ids = np.repeat(s, r.integers(2, 5, len(s)))
        return (mapping[ids] + 0.3 * r.standard_normal((len(ids), DIM))).astype(np.float32)

    feats = FeatureSet.from_list([frames(s) for s in utts])
    train = FeatureSet.from_list([feats[i] for i in range(200)])
    test = FeatureSet.from_list([feats[i] for i in range(200, 240)])
    probe, info = train_probe(train, utts[:200], P, ProbeConfig(updates=300, lr=1e-2, batch_size=16))
    res = evaluate_probe(probe, test, utts[200:])
    assert res["per"] < 0.05, res["per"]


def test_gan_recovers_the_mapping_without_labels(tmp_path):
    """Unpaired text and 'audio' (one noisy feature vector per phone, through a fixed random linear
    map) of the same toy language, different sentences. As fairseq's recipe: several seeds, the
    checkpoint with the best unsupervised metric (LM perplexity / vocabulary usage^2) is kept; its
    PER is far below chance (about 0.1 against 0.79 here; about half the seeds converge in 600
    updates, and the metric tells them apart: about 4.4 against 6-7). The features are one segment
    per phone, so the JOIN segmenter is off (fairseq's segmentation NONE), and the smoothness
    penalty too (on this toy both push seeds into collapse)."""
    sentences, mapping = _toy_language()
    text = sentences(2000, np.random.default_rng(1))
    audio = sentences(600, np.random.default_rng(2))
    r = np.random.default_rng(3)
    feats = FeatureSet.from_list([(mapping[s] + 0.3 * r.standard_normal((len(s), DIM))).astype(np.float32)
                                  for s in audio])
    train = FeatureSet.from_list([feats[i] for i in range(100, 500)])
    valid = FeatureSet.from_list([feats[i] for i in range(100)])
    test = FeatureSet.from_list([feats[i] for i in range(500, 600)])
    lm = PhoneLM([[f"p{i}" for i in s] for s in text], order=3)
    data = GanData(train, text, None, valid)
    runs = []
    for seed in (0, 1, 2):
        cfg = GanConfig(discriminator_dim=64, batch_size=64, max_updates=600, lr_generator=2e-3, lr_discriminator=2e-3,
                        smoothness_weight=0.0, join_segments=False, seed=seed)
        res = train_gan(data, _Phones(), cfg, tmp_path / f"s{seed}", lm, log_interval=0, eval_interval=200)
        runs.append((res["best_weighted_lm_ppl"], seed))
    best_seed = min(runs)[1]
    model, state = load_gan(tmp_path / f"s{best_seed}" / "checkpoint_best.pt")
    per = phone_error_rate(audio[500:], model.decode(list(test)))[0]
    chance = _chance_per(audio[500:])
    assert chance > 0.7
    assert per < 0.3, (per, runs)


# ---------------------------------------------------------------------------- the CLI
def _tiny_checkpoint(path: Path) -> Path:
    from training.checkpoint import Checkpoint
    from training.model import wav2vec2_small

    torch.manual_seed(0)
    model = wav2vec2_small(conv_layers=[[32, 10, 5]] + [[32, 3, 2]] * 4 + [[32, 2, 2]] * 2, embed_dim=32,
                           num_layers=2, num_heads=2, ffn_dim=64, pos_conv_kernel=8, pos_conv_groups=4)
    Checkpoint.from_model(model).save(path)
    return path


TEXT = """The quick brown fox jumps over the lazy dog. A stitch in time saves nine.
Every cloud has a silver lining. Actions speak louder than words. The early bird catches the worm.
Birds of a feather flock together. Practice makes perfect in the long run. Knowledge is power.
Time and tide wait for no man. Where there is smoke there is fire. The pen is mightier than the sword.
All that glitters is not gold. Better late than never they say. Fortune favors the bold and the brave.
"""


def test_cli_error_paths(tmp_path, capsys):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    assert w2v(["wav2vec-u", "prepare", "--checkpoint", str(tmp_path / "missing.pt"), "--corpus", str(corpus),
                "--out", str(tmp_path / "work")]) == 2
    assert "no such checkpoint" in capsys.readouterr().err
    ckpt = _tiny_checkpoint(tmp_path / "tiny.pt")
    assert w2v(["wav2vec-u", "prepare", "--checkpoint", str(ckpt), "--corpus", str(corpus),
                "--out", str(tmp_path / "work"), "--layer", "2"]) == 2
    err = capsys.readouterr().err
    assert "--layer 2 is out of range" in err and "2 Transformer blocks" in err
    assert w2v(["wav2vec-u", "prepare", "--checkpoint", str(ckpt), "--corpus", str(corpus),
                "--out", str(tmp_path / "work")]) == 2
    assert "--pca-dim 128 must be 1..32" in capsys.readouterr().err
    assert w2v(["wav2vec-u", "prepare", "--checkpoint", str(ckpt), "--corpus", str(corpus),
                "--out", str(tmp_path / "work"), "--pca-dim", "8"]) == 2
    assert "no train.tsv" in capsys.readouterr().err
    assert w2v(["wav2vec-u", "probe", str(tmp_path / "nowork")]) == 2
    assert "not a prepared wav2vec-U folder" in capsys.readouterr().err
    assert not (tmp_path / "work" / "train.npy").exists()


@needs_espeak
def test_cli_prepare_probe_train_eval_end_to_end(tmp_path, capsys):
    from tests.speech_data import write_corpus

    corpus = tmp_path / "corpus"
    write_corpus(corpus, voices=("en-us", "en-us+f3"), name="train")
    write_corpus(corpus, sentences=["open the red door now", "we like green tea"], name="test")
    (tmp_path / "text.txt").write_text(TEXT)
    ckpt = _tiny_checkpoint(tmp_path / "tiny.pt")
    work, model_dir = tmp_path / "work", tmp_path / "model"
    assert w2v(["wav2vec-u", "prepare", "--checkpoint", str(ckpt), "--corpus", str(corpus), "--out", str(work),
                "--clusters", "6", "--pca-dim", "8", "--text", str(tmp_path / "text.txt"),
                "--min-phone-count", "1", "--voices", "all", "--kmeans-iters", "5"]) == 0
    summary = json.loads((work / "prepare.json").read_text())
    assert summary["layer"] == 1 and summary["splits"]["train"]["selected"] == 16
    assert summary["splits"]["test"]["selected"] == 2
    phones = json.loads((work / "phones.json").read_text())
    assert "table" in phones and len(phones["phones"]) > 10
    assert FeatureSet.load(work / "segments" / "train").dim == 8
    text = (work / "text.txt").read_text().splitlines()
    assert "the quick brown fox jumps over the lazy dog" in text
    assert not set(text) & set((corpus / "train.wrd").read_text().lower().splitlines())
    # the gate comes first
    assert w2v(["wav2vec-u", "train", str(work), "--out", str(model_dir)]) == 2
    assert "run the gate first" in capsys.readouterr().err
    assert w2v(["wav2vec-u", "probe", str(work), "--updates", "10"]) == 0
    probe = json.loads((work / "probe.json").read_text())
    assert 0.0 <= probe["per"] and probe["updates"] == 10
    out = capsys.readouterr().out
    assert "linear CTC probe: PER" in out
    args = ["wav2vec-u", "train", str(work), "--out", str(model_dir), "--updates", "6", "--batch-size", "4",
            "--disc-dim", "8", "--eval-interval", "3", "--valid-utts", "2", "--ignore-gate"]
    assert w2v(args) == 0
    assert (model_dir / "checkpoint_best.pt").exists() and (model_dir / "phones.json").exists()
    _, state = load_gan(model_dir / "checkpoint_last.pt")
    assert state["update"] == 6
    assert w2v(args[:6] + ["8"] + args[7:]) == 0          # resumes from update 6 to 8
    _, state = load_gan(model_dir / "checkpoint_last.pt")
    assert state["update"] == 8
    assert w2v(["wav2vec-u", "eval", str(model_dir), "--work", str(work)]) == 0
    result = json.loads((model_dir / "eval_test.json").read_text())
    assert result["utterances"] == 2 and result["probe_per"] == probe["per"] and 0.0 <= result["gan_per"]
