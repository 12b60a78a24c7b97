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
    text = processor.tokenizer.batch_decode(ids)[0]   # what Wav2Vec2Processor.batch_decode runs
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


MMS_LANGUAGES = {
    "eng": ["<pad>", "<s>", "</s>", "<unk>", "|", *"abcdefghijklmnopqrstuvwxyz'"],
    "fra": ["<pad>", "<s>", "</s>", "<unk>", "|", *"abcdefghijklmnopqrstuvwxyzéèàçô'"],
}


def build_mms(directory: Path, seed: int = 7):
    """An MMS-style checkpoint: stable-layer-norm wav2vec2 with ``adapter_attn_dim``, a nested
    per-language vocab.json, and ``adapter.<lang>.safetensors`` per language (the adapters and
    the language's CTC head; model.safetensors holds English's). Returns the directory."""
    import torch
    import transformers as tf
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    nested = {lang: {t: i for i, t in enumerate(tokens)} for lang, tokens in MMS_LANGUAGES.items()}
    path = directory / "_vocab_src.json"
    path.write_text(json.dumps(nested))
    tokenizer = tf.Wav2Vec2CTCTokenizer(str(path), target_lang="eng")
    path.unlink()
    torch.manual_seed(seed)
    config = tf.Wav2Vec2Config(**dict(TINY, vocab_size=len(nested["eng"]), pad_token_id=0, adapter_attn_dim=8,
                                      feat_extract_norm="layer", do_stable_layer_norm=True, conv_bias=True))
    model = tf.Wav2Vec2ForCTC(config).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(8.0)
    model.save_pretrained(directory)
    adapters = {k: v.detach().clone().contiguous() for k, v in model._get_adapters().items()}
    save_file(adapters, str(directory / "adapter.eng.safetensors"))
    generator = torch.Generator().manual_seed(seed + 1)
    fra = {}
    for k, v in adapters.items():
        if k.startswith("lm_head."):
            shape = (len(nested["fra"]),) + tuple(v.shape[1:])
            fra[k] = torch.randn(shape, generator=generator) * (0.5 if k.endswith("weight") else 0.1)
        else:
            fra[k] = v + torch.randn(v.shape, generator=generator) * 0.1
    save_file(fra, str(directory / "adapter.fra.safetensors"))
    feature_extractor = tf.Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=True)
    tf.Wav2Vec2Processor(feature_extractor=feature_extractor, tokenizer=tokenizer).save_pretrained(directory)
    return directory


def mms_reference(directory: Path, language: str):
    """transformers' model and processor for one language of an MMS directory."""
    import transformers as tf

    model = tf.Wav2Vec2ForCTC.from_pretrained(directory, target_lang=language, ignore_mismatched_sizes=True).eval()
    processor = tf.Wav2Vec2Processor.from_pretrained(directory)
    processor.tokenizer.set_target_lang(language)
    return model, processor


LM_WORDS = {"the": -0.6, "cat": -1.0, "sat": -1.0, "on": -0.9, "mat": -1.1, "hat": -1.3}


def write_arpa(path: Path, words: dict[str, float] = LM_WORDS) -> Path:
    """A bigram ARPA file: unigrams ``words`` (log10 probabilities) and the bigrams of
    "the cat sat on the mat"."""
    bigrams = ["<s> the", "the cat", "cat sat", "sat on", "on the", "the mat", "mat </s>"]
    lines = ["\\data\\", f"ngram 1={len(words) + 3}", f"ngram 2={len(bigrams)}", "", "\\1-grams:",
             "-2.0\t<unk>\t0", "-99\t<s>\t-0.3", "-1.0\t</s>\t0"]
    lines += [f"{p}\t{w}\t-0.3" for w, p in words.items()]
    lines += ["", "\\2-grams:"] + [f"-0.2\t{b}" for b in bigrams]
    path.write_text("\n".join(lines + ["", "\\end\\", ""]), encoding="utf-8")
    return path


def build_with_lm(family: str, directory: Path, *, alpha: float = 0.7, beta: float = 2.0,
                  unk_score_offset: float = -8.0, score_boundary: bool = False, **kwargs: Any):
    """A ``Wav2Vec2ProcessorWithLM`` repository: ``build``'s model and tokenizer, and a pyctcdecode
    decoder with a KenLM ARPA model saved as ``language_model/`` + ``alphabet.json``. Returns
    (model, processor with LM)."""
    import transformers as tf
    from pyctcdecode import build_ctcdecoder

    model, processor = build(family, directory, **kwargs)
    vocab = processor.tokenizer.get_vocab()
    labels = [t.lower() for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])][: model.config.vocab_size]
    arpa = write_arpa(directory / "_lm.arpa")
    decoder = build_ctcdecoder(labels, kenlm_model_path=str(arpa), alpha=alpha, beta=beta,
                               unk_score_offset=unk_score_offset, lm_score_boundary=score_boundary)
    with_lm = tf.Wav2Vec2ProcessorWithLM(feature_extractor=processor.feature_extractor,
                                         tokenizer=processor.tokenizer, decoder=decoder)
    with_lm.save_pretrained(directory)
    arpa.unlink()
    return model, with_lm
