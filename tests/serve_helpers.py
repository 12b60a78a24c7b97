"""Helpers for the runtime tests: hand-made CTC log-probabilities, espeak-ng speech, a reference
greedy decode written independently of w2v_serve.decoding."""

from __future__ import annotations

import itertools
import subprocess
from pathlib import Path

import numpy as np

from w2v_serve.vocab import Vocabulary

VOCAB = Vocabulary.from_characters("abcdefghijklmnopqrstuvwxyz'")
FRAME_S = 0.02


def peaky(frames: list, vocab: Vocabulary = VOCAB, p: float = 0.95) -> np.ndarray:
    """Log-probs with most mass on one token per frame.

    ``frames`` items: a character, "_" for blank, "|" for the delimiter, or a dict
    {token: probability} for an ambiguous frame (the rest of the mass spread evenly).
    """
    V = len(vocab)
    out = np.empty((len(frames), V), dtype=np.float32)
    for t, f in enumerate(frames):
        want = f if isinstance(f, dict) else {f: p}
        row = np.full(V, (1.0 - sum(want.values())) / (V - len(want)), dtype=np.float64)
        for tok, q in want.items():
            row[token_id(tok, vocab)] = q
        out[t] = np.log(row)
    return out


def token_id(tok: str, vocab: Vocabulary = VOCAB) -> int:
    return vocab.blank_id if tok == "_" else vocab.index(tok)


def spell(text: str, frames_per_char: int = 2, gap: int = 2) -> list:
    """A plausible CTC frame sequence for ``text``: each character for some frames then blanks,
    words separated by blank / delimiter / blank."""
    seq: list = ["_"] * gap
    for w, word in enumerate(text.split()):
        if w:
            seq += ["_", "|", "_"]
        for ch in word:
            seq += [ch] * frames_per_char + ["_"]
    return seq + ["_"] * gap


def reference_greedy(log_probs: np.ndarray, vocab: Vocabulary = VOCAB) -> str:
    """argmax -> collapse repeats -> drop blanks -> tokens to text; specials dropped."""
    ids = [k for k, _ in itertools.groupby(np.asarray(log_probs).argmax(axis=1).tolist())]
    text = ""
    for i in ids:
        tok = vocab.tokens[i]
        if i == 0 or tok.startswith("<"):
            continue
        text += " " if tok == "|" else tok
    return " ".join(text.split())


def espeak(text: str, path: Path, voice: str = "en-us", speed: int = 160) -> Path:
    subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-w", str(path), text], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return path


def trim_silence(audio: np.ndarray, threshold: float = 0.01) -> np.ndarray:
    """Cut leading and trailing samples below ``threshold`` (espeak-ng pads its output)."""
    loud = np.flatnonzero(np.abs(audio) > threshold)
    return audio[loud[0]: loud[-1] + 1]


# ---------------------------------------------------------------------------- tiny exported models
TINY = dict(conv_layers=[[32, 10, 5]] + [[32, 3, 2]] * 4 + [[32, 2, 2]] * 2, embed_dim=64, num_layers=2,
            num_heads=4, ffn_dim=128, pos_conv_kernel=16, pos_conv_groups=4)
_MODEL_DIRS: dict = {}


def tiny_model_dir(kind: str = "attention") -> Path:
    """A randomly initialised ~0.1 M-parameter CTC model over VOCAB, exported with export_model
    (cached per process).

    kind "attention": as initialised (every frame sees the whole input).
    kind "local": attention and positional convolution switched off (out_proj / weight_g = 0), so
    each frame depends only on its own 400 samples; and the head centred so that silence decodes
    to the word delimiter. Windowed inference must then reproduce whole-input logits exactly, and a
    recording made by joining utterances separated by silence must transcribe to the joined
    transcripts of the utterances.
    """
    if kind in _MODEL_DIRS:
        return _MODEL_DIRS[kind]
    import tempfile

    import torch

    from export.exporter import export_model
    from training.checkpoint import Checkpoint
    from training.model import wav2vec2_small

    torch.manual_seed(7)
    model = wav2vec2_small(vocab_size=len(VOCAB), **TINY).eval()
    if kind == "local":
        with torch.no_grad():
            state = model.state_dict()
            for name, value in state.items():
                if ".attention.out_proj." in name or name == "encoder.pos_conv.conv.weight_g":
                    value.zero_()
            # Centre the CTC head on silence's hidden state and scale it up: silence (zeros) gives
            # the word delimiter by a margin of 3 (as a trained model does at pauses), speech frames
            # get varied labels (a random model's raw logits hardly change from frame to frame).
            hidden = {}
            hook = model.ctc_head.register_forward_hook(lambda m, i, o: hidden.update(h=i[0]))
            model(torch.zeros(1, 4000))
            hook.remove()
            h_silence = hidden["h"][0, 0]
            weight = state["ctc_head.weight"]
            weight.mul_(8.0)
            state["ctc_head.bias"].copy_(-(weight @ h_silence))
            state["ctc_head.bias"][VOCAB.word_delimiter_id] += 3.0
            model.load_state_dict(state)
    out = Path(tempfile.mkdtemp(prefix=f"w2v-tiny-{kind}-")) / "model"
    export_model(Checkpoint.from_model(model, VOCAB), out, check=False)
    _MODEL_DIRS[kind] = out
    return out


def start_tritonserver_or_skip(repo: Path, log_dir: Path):
    """A started tritonserver on ``repo`` (free ports, its log in ``log_dir``); the test is
    skipped when this installation has no tritonserver."""
    import pytest

    from w2v_serve.triton.launcher import TritonError, TritonServer, free_port

    try:
        server = TritonServer(repo, grpc_port=free_port(), http_port=free_port(), metrics_port=free_port(),
                              log_file=log_dir / "tritonserver.log")
    except TritonError as e:
        pytest.skip(f"no tritonserver here: {e}")
    return server.start(timeout_s=180)
