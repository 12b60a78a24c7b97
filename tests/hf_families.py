"""Tiny random-weight transformers checkpoints of the wav2vec 2.0 family, saved the way the Hub
publishes them, and speech to run them on. Shared by tests/test_import_families.py and the
Triton/service test.

Each builder writes a directory with ``save_pretrained`` of the model and of its processor (or
tokenizer + feature extractor), as transformers 5 writes them; ``transformers4_files`` rewrites
a directory the way transformers 4 wrote it (``preprocessor_config.json``,
``special_tokens_map.json``, ``added_tokens.json``, ``pytorch_model.bin`` with
``weight_g``/``weight_v``), which is what most Hub repositories hold.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np

SENTENCE = "the cat sat on the mat"
# The XLSR fine-tuning recipe's vocabulary: letters, the delimiter, then [UNK] and [PAD] last.
XLSR_VOCAB = {c: i for i, c in enumerate("abcdefghijklmnopqrstuvwxyz'")}
XLSR_VOCAB.update({"|": len(XLSR_VOCAB)})
XLSR_VOCAB.update({"[UNK]": len(XLSR_VOCAB), "[PAD]": len(XLSR_VOCAB) + 1})
# transformers' English models (facebook/wav2vec2-base-960h): <pad> <s> </s> <unk> first.
ENGLISH_VOCAB = {t: i for i, t in enumerate(["<pad>", "<s>", "</s>", "<unk>", "|", *"ETAONIHSRDLUMWCFGYPBVK'XJQZ"])}

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
            conv_dim=(16,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
            layerdrop=0.0, hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
            feat_proj_dropout=0.0, final_dropout=0.0, mask_time_prob=0.0)


def speech_wav(directory: Path, text: str = SENTENCE) -> tuple[Path, np.ndarray]:
    """espeak-ng speech as a 16 kHz mono 16-bit WAV, and its samples as the loader reads them."""
    import soundfile as sf

    directory.mkdir(parents=True, exist_ok=True)
    raw, wav = directory / "raw.wav", directory / "speech.wav"
    subprocess.run(["espeak-ng", "-v", "en-us", "-w", str(raw), text], check=True, capture_output=True)
    subprocess.run(["sox", str(raw), "-r", "16000", "-c", "1", "-b", "16", str(wav)], check=True, capture_output=True)
    audio, rate = sf.read(str(wav), dtype="float32")
    assert rate == 16000
    return wav, audio


def _tokenizer(directory: Path, vocab: dict[str, int], **kwargs: Any):
    from transformers import Wav2Vec2CTCTokenizer

    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "_vocab_src.json"
    path.write_text(json.dumps(vocab))
    tok = Wav2Vec2CTCTokenizer(str(path), **kwargs)
    path.unlink()
    return tok


def xlsr_tokenizer(directory: Path):
    return _tokenizer(directory, XLSR_VOCAB, unk_token="[UNK]", pad_token="[PAD]", word_delimiter_token="|")


def english_tokenizer(directory: Path):
    return _tokenizer(directory, ENGLISH_VOCAB)


def build(family: str, directory: Path, *, stable: bool = False, vocab: str = "xlsr", do_normalize: bool = True,
          seed: int = 0, **overrides: Any):
    """A random ``*ForCTC`` of ``family`` saved with its processor in ``directory``; returns
    (model in eval mode, processor). ``vocab``: "xlsr" ([PAD] last, <s></s> added: the head
    covers the tokenizer's full length) or "english" (<pad> at 0)."""
    import torch
    import transformers as tf

    tokenizer = xlsr_tokenizer(directory) if vocab == "xlsr" else english_tokenizer(directory)
    params = dict(TINY, vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id)
    if stable:
        params.update(feat_extract_norm="layer", do_stable_layer_norm=True, conv_bias=True)
    params.update(overrides)
    config_cls, model_cls = {
        "wav2vec2": (tf.Wav2Vec2Config, tf.Wav2Vec2ForCTC),
        "hubert": (tf.HubertConfig, tf.HubertForCTC),
        "wavlm": (tf.WavLMConfig, tf.WavLMForCTC),
        "data2vec-audio": (tf.Data2VecAudioConfig, tf.Data2VecAudioForCTC),
    }[family]
    if family == "data2vec-audio":
        params.update(num_conv_pos_embeddings=2, conv_pos_kernel_size=5)
        params.pop("feat_extract_norm", None)
    if family == "wavlm":
        params.update(num_buckets=32, max_bucket_distance=64)
    torch.manual_seed(seed)
    model = model_cls(config_cls(**params)).eval()
    with torch.no_grad():
        # Sharper outputs than the random init's near-uniform ones, so argmax is well defined.
        model.lm_head.weight.mul_(8.0)
    feature_extractor = tf.Wav2Vec2FeatureExtractor(do_normalize=do_normalize, return_attention_mask=stable)
    processor = tf.Wav2Vec2Processor(feature_extractor=feature_extractor, tokenizer=tokenizer)
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return model, processor


def transformers4_files(directory: Path, *, legacy_bin: bool = True) -> Path:
    """Rewrite a transformers 5 save the way transformers 4 wrote it: the feature extractor in
    ``preprocessor_config.json``, ``special_tokens_map.json``, ``added_tokens.json``, a
    ``tokenizer_config.json`` without ``added_tokens_decoder``, and (``legacy_bin``) the weights
    as ``pytorch_model.bin`` with the old ``weight_g``/``weight_v`` keys."""
    import torch
    from safetensors.torch import load_file

    proc = json.loads((directory / "processor_config.json").read_text())
    (directory / "preprocessor_config.json").write_text(json.dumps(proc["feature_extractor"], indent=2))
    (directory / "processor_config.json").unlink()
    config = json.loads((directory / "tokenizer_config.json").read_text())
    decoder = config.pop("added_tokens_decoder", {})
    vocab = json.loads((directory / "vocab.json").read_text())
    added = {e["content"]: int(i) for i, e in decoder.items() if e["content"] not in vocab}
    if added:
        (directory / "added_tokens.json").write_text(json.dumps(added))
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    (directory / "special_tokens_map.json").write_text(json.dumps(
        {k: config[k] for k in ("bos_token", "eos_token", "unk_token", "pad_token") if config.get(k)}))
    if legacy_bin:
        state = load_file(str(directory / "model.safetensors"))
        state = {k.replace("parametrizations.weight.original0", "weight_g")
                  .replace("parametrizations.weight.original1", "weight_v"): v for k, v in state.items()}
        torch.save(state, directory / "pytorch_model.bin")
        (directory / "model.safetensors").unlink()
    return directory


def reference(model, processor, audio: np.ndarray) -> tuple[np.ndarray, str]:
    """transformers' log-probabilities [frames, vocab] and greedy ``batch_decode`` text."""
    import torch

    inputs = processor(audio, sampling_rate=16000, return_tensors="pt")
    with torch.no_grad():
        logits = model(inputs.input_values.float()).logits
    ids = logits.argmax(-1)
    text = processor.batch_decode(ids)[0]
    return torch.log_softmax(logits.double(), -1)[0].numpy(), text


def without_specials(text: str, tokenizer) -> str:
    """``batch_decode``'s text with the tokenizer's special tokens (other than the word
    delimiter) removed: what a transcript shows. ``batch_decode`` keeps e.g. ``[UNK]`` and
    ``<s>`` in its text; CTC collapsing is the same (specials separate repeats in both)."""
    for token in tokenizer.all_special_tokens:
        if token != tokenizer.word_delimiter_token:
            text = text.replace(token, "")
    return " ".join(text.split())


def hub_cache_layout(cache: Path, repo_id: str, source: Path, commit: str = "0" * 40) -> Path:
    """Copy ``source`` into a Hugging Face hub cache at ``cache`` as ``repo_id`` (refs/main ->
    ``commit``), the layout ``hf download`` writes; returns the snapshot folder."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    shutil.copytree(source, snapshot)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return snapshot
