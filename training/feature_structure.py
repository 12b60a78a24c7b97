"""Does the conv encoder's output have temporal structure? A pre-training health check.

The contrastive task asks the Transformer to pick q_t, the quantized LayerNorm(z_t) of a masked
step, among distractors from the same utterance. At initialization the targets are only
predictable if z carries the signal's slow structure: adjacent 20 ms frames must resemble each
other more than two random frames of the same utterance do. A randomly initialized encoder whose
every block LayerNorms each output position over its channels (the bundled `small` model, with no
conv bias) normalizes away the amplitude envelope of each 10-sample window before any
rectification, and its features are phase noise: measured on the synthetic corpus, the cosine of
adjacent frames equals that of random frames (0.490 vs 0.484), and pre-training sat at chance for
1,153 updates. BASE's first block (GroupNorm over time, per channel) keeps the envelope (0.26 vs
0.19; with conv bias 0.44 vs 0.30), and with the bias the loss left chance within 200 updates
(docs/low_resource.md).

``temporal_structure`` measures it; ``python -m training.feature_structure MANIFEST [CONFIG]``
prints it for a pre-training recipe's model at initialization, over a few seeds.
"""

from __future__ import annotations

import argparse
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from training.model import Wav2Vec2Model

# Below this gap (adjacent minus random-frame cosine) the targets are close to unpredictable at
# init. Measured for the per-position-LayerNorm encoder that sat at chance: 0.006 (synthetic
# corpus, 3 inits), 0.028 (clean espeak-ng), up to 0.048 on one short batch; 0.07-0.18 for BASE's
# first block. A gap is necessary, not sufficient: BASE's first block without conv bias (gap 0.07)
# was still at chance after 300 updates, with bias (0.14) it had left it by 200.
MIN_GAP = 0.06


class TemporalStructure(NamedTuple):
    adjacent: float     # mean cosine of LayerNorm(z_t) and LayerNorm(z_{t+1})
    random: float       # mean cosine of LayerNorm(z_t) and a random frame of the same utterance
    gap: float          # adjacent - random


@torch.no_grad()
def temporal_structure(model: Wav2Vec2Model, waveforms: Tensor, generator: Optional[torch.Generator] = None
                       ) -> TemporalStructure:
    """Cosines of the quantizer's input (LayerNorm'd conv features) between adjacent frames and
    between random frames of the same utterance. waveforms: [B, L], unpadded."""
    was_training = model.training
    model.eval()
    try:
        features, _ = model.encode_features(waveforms)
        _, normed = model.feature_projection(features)
    finally:
        model.train(was_training)
    adjacent = F.cosine_similarity(normed[:, 1:], normed[:, :-1], dim=-1).mean()
    perm = torch.randperm(normed.shape[1], generator=generator)
    random = F.cosine_similarity(normed, normed[:, perm], dim=-1).mean()
    return TemporalStructure(float(adjacent), float(random), float(adjacent - random))


def _load_batch(manifest: str, count: int, max_samples: int) -> Tensor:
    from training.manifest import read_manifest
    from w2v_serve.audio import load_audio

    utts = read_manifest(manifest, labels=None)[:count]
    if not utts:
        raise SystemExit(f"{manifest}: no utterances")
    waves = [torch.from_numpy(load_audio(u.path)) for u in utts]
    length = min(max_samples, min(len(w) for w in waves))
    return torch.stack([w[:length] for w in waves])


def main(argv: Optional[list[str]] = None) -> int:
    from training.train_config import PretrainConfig, load_config

    p = argparse.ArgumentParser(prog="python -m training.feature_structure", description=__doc__.split("\n\n")[0])
    p.add_argument("manifest", help="fairseq .tsv of audio to measure on")
    p.add_argument("config", nargs="?", help="pre-training recipe (YAML); its model is built at init")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    p.add_argument("--utterances", type=int, default=16)
    p.add_argument("--seeds", type=int, default=3)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    cfg = load_config(PretrainConfig, args.config, args.overrides)
    batch = _load_batch(args.manifest, args.utterances, 48_000)
    rows = []
    for seed in range(args.seeds):
        torch.manual_seed(seed)
        model = Wav2Vec2Model(cfg.model.build(quantizer=True, vocab_size=None))
        rows.append(temporal_structure(model, batch, torch.Generator().manual_seed(seed)))
    mean = TemporalStructure(*(sum(r[i] for r in rows) / len(rows) for i in range(3)))
    print(f"cosine adjacent {mean.adjacent:.3f}  random same utterance {mean.random:.3f}  gap {mean.gap:.3f} "
          f"({len(rows)} inits, {batch.shape[0]} x {batch.shape[1] / 16000:.1f} s)")
    if mean.gap < MIN_GAP:
        print(f"gap below {MIN_GAP}: the quantized targets are close to unpredictable at init; pre-training "
              f"may sit at chance (docs/low_resource.md)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
