"""CTC fine-tuning on the CPU: overfitting espeak-ng speech, freezing, initialization, CTC loss."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from tests.speech_data import TINY_MODEL, write_corpus
from training.checkpoint import Checkpoint, load_checkpoint
from training.train_config import FinetuneConfig, load_config

CONFIG = str(Path(__file__).resolve().parent.parent / "configs" / "finetune_small.yaml")


pytestmark = pytest.mark.usefixtures("two_torch_threads")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """Four espeak-ng sentences (one voice) with fairseq .tsv/.ltr/.wrd manifests."""
    from tests.speech_data import SENTENCES

    return write_corpus(tmp_path_factory.mktemp("ft_audio"), SENTENCES[:4])


def base_overrides(corpus: Path, save: Path, *extra: str) -> list[str]:
    return [f"data.train={corpus}", f"data.valid={corpus}", f"run.save_dir={save}", "data.num_workers=0",
            "data.max_tokens=400000", "run.progress=false", "run.tensorboard=false", "task.init=", *TINY_MODEL,
            *extra]


def test_finetuning_overfits_espeak_utterances(corpus, tmp_path):
    """From scratch (no pre-training), no masking: a handful of utterances learned to ~0 CER."""
    from w2v_serve.cli import main as w2v

    save = tmp_path / "ft"
    args = base_overrides(corpus, save, "run.max_updates=150", "run.eval_interval=75", "run.log_interval=25",
                          "run.save_interval=1000", "optim.lr=2e-3", "schedule.kind=tri_stage",
                          "schedule.phase_ratio=[0.1,0.6,0.3]", "task.freeze_updates=0",
                          "task.freeze_feature_encoder=false", "model.mask_prob=0", "model.mask_channel_prob=0")
    assert w2v(["finetune", CONFIG, *args]) == 0
    records = [json.loads(x) for x in (save / "metrics.jsonl").read_text().splitlines()]
    valid = [r for r in records if r.get("split") == "valid"]
    assert valid[-1]["update"] == 150
    assert valid[-1]["cer"] <= 0.05, valid
    train = [r for r in records if r.get("split") == "train" and "loss" in r]
    assert train[0]["loss"] > 10 * train[-1]["loss"]  # it really learned (CTC per utterance)
    ckpt = load_checkpoint(save / "checkpoint_last.pt")
    assert ckpt.kind == "ctc" and ckpt.vocab is not None and "|" in ckpt.vocab.tokens


def test_freezing_and_initialization_from_a_pretrained_checkpoint(corpus, tmp_path):
    from training.finetune import FinetuneTask
    from training.model import Wav2Vec2Model
    from training.task import DistContext
    from training.trainer import Trainer

    # A "pre-trained" checkpoint: a quantizer model with its own random weights.
    pre_cfg = load_config(FinetuneConfig, CONFIG, base_overrides(corpus, tmp_path)).model.build(quantizer=True)
    torch.manual_seed(5)
    pre = Wav2Vec2Model(pre_cfg)
    Checkpoint.from_model(pre).save(tmp_path / "pre.pt")

    cfg = load_config(FinetuneConfig, CONFIG, base_overrides(
        corpus, tmp_path / "run", f"task.init={tmp_path / 'pre.pt'}", "task.freeze_updates=2", "run.max_updates=4",
        "optim.lr=1e-3"))
    task = FinetuneTask(cfg)
    model = task.model
    assert model.quantizer is None and model.ctc_head is not None
    assert model.config.feature_grad_mult == 0.0
    for key, value in pre.state_dict().items():
        if not key.startswith(("quantizer", "project_")):
            assert torch.equal(model.state_dict()[key], value), key
    trainer = Trainer(cfg, task, DistContext())
    loader, _ = task.loaders(1, 0, trainer.ctx)
    batch = next(iter(loader))

    def snapshot():
        return {k: v.clone() for k, v in model.state_dict().items()}

    def changed(a, b, prefix):
        return any(not torch.equal(a[k], b[k]) for k in a if k.startswith(prefix))

    s0 = snapshot()
    trainer.train_update([batch])
    s1 = snapshot()
    assert changed(s0, s1, "ctc_head")
    assert not changed(s0, s1, "encoder") and not changed(s0, s1, "feature_projection")
    trainer.train_update([batch])
    trainer.train_update([batch])  # update 3: past freeze_updates=2
    s3 = snapshot()
    assert changed(s1, s3, "encoder") and changed(s1, s3, "feature_projection")
    assert not changed(s0, s3, "feature_extractor")  # the conv encoder is frozen throughout


def test_fresh_top_layers_keep_their_initialization_and_the_rest_is_loaded(corpus, tmp_path):
    """task.fresh_top_layers=1: the last Transformer block is the fresh model's, every other
    pre-trained tensor is the checkpoint's."""
    from training.finetune import FinetuneTask
    from training.model import Wav2Vec2Model

    pre_cfg = load_config(FinetuneConfig, CONFIG, base_overrides(corpus, tmp_path)).model.build(quantizer=True)
    torch.manual_seed(5)
    pre = Wav2Vec2Model(pre_cfg)
    Checkpoint.from_model(pre).save(tmp_path / "pre.pt")
    layers = pre_cfg.num_layers
    assert layers >= 2
    overrides = base_overrides(corpus, tmp_path / "run", f"task.init={tmp_path / 'pre.pt'}", "task.fresh_top_layers=1")
    torch.manual_seed(6)
    model = FinetuneTask(load_config(FinetuneConfig, CONFIG, overrides)).model
    torch.manual_seed(6)   # the same fresh model, never initialized from the checkpoint
    fresh = FinetuneTask(load_config(FinetuneConfig, CONFIG, base_overrides(corpus, tmp_path / "run2"))).model
    top = f"encoder.layers.{layers - 1}."
    state, fresh_state = model.state_dict(), fresh.state_dict()
    top_keys = [k for k in state if k.startswith(top)]
    assert top_keys
    for key in top_keys:   # biases and norms start as constants in both; the matrices differ
        assert torch.equal(state[key], fresh_state[key]), key
        assert state[key].dim() < 2 or not torch.equal(state[key], pre.state_dict()[key]), key
    for key, value in pre.state_dict().items():
        if not key.startswith(("quantizer", "project_", top)):
            assert torch.equal(state[key], value), key
    for bad in (-1, layers + 1):
        with pytest.raises(ValueError, match=f"fresh_top_layers={bad}: the model has {layers}"):
            FinetuneTask(load_config(FinetuneConfig, CONFIG, base_overrides(
                corpus, tmp_path / "run3", f"task.init={tmp_path / 'pre.pt'}", f"task.fresh_top_layers={bad}")))


@pytest.mark.parametrize("layer_norm_first", [True, False])
def test_standardize_output_makes_every_channel_zero_mean_unit_variance_and_changes_nothing_else(
        corpus, tmp_path, layer_norm_first):
    """task.standardize_output: over the utterances it saw, each channel of c has mean 0 and
    variance 1 (a float64 computation of the model before the fold, standardized by hand); only the
    output LayerNorm's affine changed; pre-LN (encoder's last norm) and post-LN (last block's)."""
    from training.finetune import STANDARDIZE_UTTERANCES, FinetuneTask, output_layer_norm
    from training.model import Wav2Vec2Model
    from w2v_serve.audio import load_audio

    arch = f"model.layer_norm_first={str(layer_norm_first).lower()}"
    pre_cfg = load_config(FinetuneConfig, CONFIG, base_overrides(corpus, tmp_path, arch)).model.build(quantizer=True)
    torch.manual_seed(7)
    pre = Wav2Vec2Model(pre_cfg)
    with torch.no_grad():   # a shared offset and one loud channel, as a pre-trained model's c has
        norm = output_layer_norm(pre)
        norm.bias.add_(torch.linspace(-2, 2, norm.bias.numel()))
        norm.weight[3] = 8.0
    Checkpoint.from_model(pre).save(tmp_path / "pre.pt")
    init = f"task.init={tmp_path / 'pre.pt'}"
    plain = FinetuneTask(load_config(FinetuneConfig, CONFIG, base_overrides(corpus, tmp_path / "a", init, arch))).model
    task = FinetuneTask(load_config(FinetuneConfig, CONFIG, base_overrides(
        corpus, tmp_path / "b", init, arch, "task.standardize_output=true")))
    model = task.model
    assert len(task.dataset) < STANDARDIZE_UTTERANCES   # so it saw exactly these utterances
    wavs = [torch.from_numpy(load_audio(u.path)) for u in task.dataset.utterances]

    def contexts(m):
        m = m.double().eval()
        with torch.no_grad():
            return torch.cat([m.contextualize(m.encode_features(w.double()[None])[0])[0][0] for w in wavs])

    c = contexts(plain)
    expected = (c - c.mean(0)) / (c.var(0, unbiased=False) + 1e-5).sqrt()
    got = contexts(model)
    assert got.mean(0).abs().max() < 1e-4
    assert (got.std(0, unbiased=False) - 1).abs().max() < 1e-3
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)   # fp32 fold of float64 stats
    norm_keys = {k for k, v in model.state_dict().items() if v.data_ptr() in
                 {output_layer_norm(model).weight.data_ptr(), output_layer_norm(model).bias.data_ptr()}}
    assert len(norm_keys) == 2
    for key, value in plain.state_dict().items():
        if key not in norm_keys and not key.startswith("ctc_head"):
            assert torch.equal(model.state_dict()[key].double(), value), key


def test_standardize_output_without_audio_is_a_clear_error_and_changes_nothing(corpus, tmp_path):
    """Every training utterance unreadable: a ValueError naming the option, the model untouched."""
    from training.finetune import output_layer_norm, standardize_output
    from training.model import Wav2Vec2Model

    model = Wav2Vec2Model(load_config(FinetuneConfig, CONFIG, base_overrides(corpus, tmp_path)).model.build())
    before = {k: v.clone() for k, v in output_layer_norm(model).state_dict().items()}
    with pytest.raises(ValueError, match="task.standardize_output needs training audio"):
        standardize_output(model, [])
    for key, value in output_layer_norm(model).state_dict().items():
        assert torch.equal(value, before[key]), key


def test_finetuning_sets_its_own_regularization_keys_and_inherits_the_architecture(corpus, tmp_path):
    """As fairseq's Wav2VecEncoder: dropouts, layer drop and masks come from the fine-tuning recipe or
    its defaults (Wav2Vec2AsrConfig's), never from the pre-training checkpoint; the architecture does."""
    import yaml

    from training.finetune import FinetuneTask
    from training.model import Wav2Vec2Model
    from training.train_config import FINETUNE_MODEL_DEFAULTS

    pre_cfg = load_config(FinetuneConfig, CONFIG, base_overrides(corpus, tmp_path)).model.build(
        quantizer=True, num_layers=1, dropout=0.1, attention_dropout=0.1, activation_dropout=0.1, dropout_input=0.1,
        layer_drop=0.05, mask_prob=0.65, mask_length=7, require_same_masks=False, mask_channel_prob=0.2)
    Checkpoint.from_model(Wav2Vec2Model(pre_cfg)).save(tmp_path / "pre.pt")
    recipe = tmp_path / "ft.yaml"   # names only mask_prob: everything else of the list takes the defaults
    recipe.write_text(yaml.safe_dump({"model": {"preset": "small", "mask_prob": 0.3}}))
    overrides = [o for o in base_overrides(corpus, tmp_path / "run", f"task.init={tmp_path / 'pre.pt'}")
                 if not o.startswith("model.")] + ["data.min_sample_size=0", "data.max_sample_size=1000000"]
    got = FinetuneTask(load_config(FinetuneConfig, str(recipe), overrides)).model.config
    assert got.mask_prob == 0.3
    for key, default in FINETUNE_MODEL_DEFAULTS.items():
        if key != "mask_prob":
            assert getattr(got, key) == default, key
    assert (got.dropout, got.layer_drop, got.mask_length, got.require_same_masks) == (0.0, 0.0, 10, True)
    # The architecture is the checkpoint's, not the recipe's preset.
    assert (got.num_layers, got.embed_dim, got.conv_layers) == (1, pre_cfg.embed_dim, pre_cfg.conv_layers)


def test_ctc_loss_matches_reference_and_zero_infinity():
    from training.finetune import ctc_loss_sum

    torch.manual_seed(0)
    logits = torch.randn(2, 30, 8)
    lengths = torch.tensor([30, 22])
    targets = torch.tensor([1, 2, 3, 4, 5, 6, 7])
    target_lengths = torch.tensor([4, 3])
    ours = ctc_loss_sum(logits, lengths, targets, target_lengths)
    ref = sum(F.ctc_loss(F.log_softmax(logits[b:b + 1, : lengths[b]], -1).transpose(0, 1),
                         targets[sum(target_lengths[:b]):sum(target_lengths[: b + 1])].unsqueeze(0),
                         lengths[b:b + 1], target_lengths[b:b + 1], reduction="sum") for b in range(2))
    assert torch.allclose(ours, ref, rtol=1e-5)
    # A transcript longer than the input cannot be aligned: 0, not inf (zero_infinity).
    impossible = ctc_loss_sum(logits[:1, :3], torch.tensor([3]), targets[:5], torch.tensor([5]))
    assert impossible.item() == 0.0


def test_greedy_decode_and_error_rates():
    from training.finetune import greedy_transcripts
    from w2v_serve.decoding import CTCDecoder
    from w2v_serve.scoring import edit_distance, error_counts
    from w2v_serve.vocab import Vocabulary

    vocab = Vocabulary.from_characters("abc")
    decoder = CTCDecoder(vocab)  # the runtime's greedy decoder, as fine-tuning's dev evaluation uses it
    ids = [vocab.index(t) for t in ["a", "a", "<pad>", "a", "|", "b", "b", "c", "<pad>"]]
    logits = F.one_hot(torch.tensor([ids]), len(vocab)).float()
    assert greedy_transcripts(decoder, logits, torch.tensor([9])) == ["aa bc"]
    assert greedy_transcripts(decoder, logits, torch.tensor([5])) == ["aa"]
    assert edit_distance("kitten", "sitting") == 3
    counts = error_counts(["aa bc"], ["aa bd"])
    assert counts == {"char_errors": 1, "chars": 5, "word_errors": 1, "words": 2}
