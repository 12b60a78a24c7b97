"""Export-time checks: ONNX Runtime against PyTorch on fresh random audio.

Every variant is run on the same batches — several lengths and batch sizes, rows of a batch
padded to its longest — and compared with the PyTorch model on the valid frames of each row:

* ``max_rel_error``: max |onnx - torch| / max |torch| over all valid log-probabilities;
* ``argmax_agreement``: fraction of valid frames whose best token is the same;
* ``lengths_equal``: the graph's frame counts equal the model's.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import onnxruntime as ort
import torch

from training.model import Wav2Vec2Model

# Rows per batch, in samples at 16 kHz: one utterance alone, two of different lengths, three.
PARITY_BATCHES: tuple[tuple[int, ...], ...] = ((16000,), (24000, 9600), (6400, 32000, 13000))


def random_batch(rng: np.random.Generator, lengths: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Zero-padded random audio in [-1, 1]: noise at a random level plus a random DC offset per row."""
    audio = np.zeros((len(lengths), max(lengths)), dtype=np.float32)
    for row, n in enumerate(lengths):
        level = rng.uniform(0.01, 0.5)
        audio[row, :n] = np.clip(level * rng.standard_normal(n) + rng.uniform(-0.1, 0.1), -1, 1)
    return audio, np.asarray(lengths, dtype=np.int64)


def torch_log_probs(model: Wav2Vec2Model, audio: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    with torch.no_grad():
        logits, frames = model(torch.from_numpy(audio), torch.from_numpy(lengths))
        return torch.log_softmax(logits.float(), dim=-1).numpy(), frames.numpy()


def compare(got: np.ndarray, ref: np.ndarray, frames: np.ndarray) -> tuple[float, float, float, int]:
    """(max abs error, max |ref|, agreeing frames, valid frames) over the valid frames of each row."""
    err = scale = 0.0
    agree = total = 0
    for row, t in enumerate(frames.tolist()):
        g, r = got[row, :t].astype(np.float64), ref[row, :t].astype(np.float64)
        if t == 0:
            continue
        err = max(err, float(np.abs(g - r).max()))
        scale = max(scale, float(np.abs(r).max()))
        agree += int((g.argmax(-1) == r.argmax(-1)).sum())
        total += t
    return err, scale, agree, total


def check_session(session: ort.InferenceSession, model: Wav2Vec2Model, seed: int,
                  batches: Sequence[Sequence[int]] = PARITY_BATCHES) -> dict[str, Any]:
    """Parity of a full-graph session (audio, lengths -> log-probs, lengths) with ``model``."""
    rng = np.random.default_rng(seed)
    err = scale = 0.0
    agree = total = 0
    lengths_equal = True
    for lengths in batches:
        audio, lens = random_batch(rng, lengths)
        ref, ref_frames = torch_log_probs(model, audio, lens)
        got, got_frames = session.run(None, {"audio": audio, "lengths": lens})
        lengths_equal &= bool(np.array_equal(got_frames, ref_frames))
        e, s, a, t = compare(got, ref, ref_frames)
        err, scale, agree, total = max(err, e), max(scale, s), agree + a, total + t
    return {
        "max_rel_error": err / scale if scale else 0.0,
        "max_abs_error": err,
        "argmax_agreement": agree / total if total else 1.0,
        "frames": total,
        "lengths_equal": lengths_equal,
        "batches": [list(b) for b in batches],
        "seed": seed,
    }


def check_composition(encoder: ort.InferenceSession, transformer: ort.InferenceSession,
                      full: ort.InferenceSession, seed: int) -> dict[str, Any]:
    """Encoder graph then transformer graph against the full graph, same batches."""
    rng = np.random.default_rng(seed)
    err = scale = 0.0
    for lengths in PARITY_BATCHES:
        audio, lens = random_batch(rng, lengths)
        features, feature_lengths = encoder.run(None, {"audio": audio, "lengths": lens})
        got, got_frames = transformer.run(None, {"features": features, "feature_lengths": feature_lengths})
        ref, ref_frames = full.run(None, {"audio": audio, "lengths": lens})
        if not np.array_equal(got_frames, ref_frames):
            return {"max_rel_error": float("inf"), "lengths_equal": False}
        e, s, _, _ = compare(got, ref, ref_frames)
        err, scale = max(err, e), max(scale, s)
    return {"max_rel_error": err / scale if scale else 0.0, "lengths_equal": True}
