"""A pre-training step, ours vs transformers' Wav2Vec2ForPreTraining: same config, same weights,
same batch, same run; each step = span mask + distractor sampling (each library's own sampler) +
forward + backward + AdamW update. Medians of repeats, interleaved so that machine load hits both.

    python -m bench pretrain
"""

from __future__ import annotations

from typing import Optional

import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPEATS = 7
BATCH, SECONDS = 4, 4.0


def _models():
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2ForPreTraining

    from training.convert import import_hf

    cfg = Wav2Vec2Config(
        hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024,
        conv_dim=(256,) * 7, conv_bias=True, feat_extract_norm="layer", do_stable_layer_norm=True,
        num_conv_pos_embeddings=64, num_conv_pos_embedding_groups=16, num_codevectors_per_group=64,
        num_codevector_groups=2, codevector_dim=128, proj_codevector_dim=128, num_negatives=100,
        hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, feat_proj_dropout=0.0,
        feat_quantizer_dropout=0.0, layerdrop=0.0, mask_time_prob=0.65, mask_time_length=10,
    )
    torch.manual_seed(0)
    ref = Wav2Vec2ForPreTraining(cfg).train()
    with tempfile.TemporaryDirectory() as d:
        ref.save_pretrained(d)
        Wav2Vec2FeatureExtractor(do_normalize=False).save_pretrained(d)
        ours = import_hf(Path(d)).build_model().train()
    return cfg, ref, ours


def main(argv: Optional[list[str]] = None) -> dict:
    if argv:
        raise SystemExit(f"python -m bench pretrain takes no options (got {' '.join(argv)})")
    from transformers.models.wav2vec2.modeling_wav2vec2 import _compute_mask_indices, _sample_negative_indices

    from training.losses import diversity_loss
    from training.pretrain import draw_pretrain_inputs, pretrain_terms
    from training.task import frame_lengths_of

    torch.set_num_threads(max(1, torch.get_num_threads()))
    cfg, ref, ours = _models()
    audio = torch.randn(BATCH, int(SECONDS * 16000)) * 0.1
    opt_ref = torch.optim.AdamW(ref.parameters(), lr=1e-5)
    opt_ours = torch.optim.AdamW(ours.parameters(), lr=1e-5)
    frames = int(ref._get_feat_extract_output_lengths(audio.shape[1]))
    gen = torch.Generator().manual_seed(0)

    def step_ref():
        mask = _compute_mask_indices((BATCH, frames), cfg.mask_time_prob, cfg.mask_time_length, min_masks=2)
        neg = _sample_negative_indices((BATCH, frames), cfg.num_negatives, mask)
        out = ref(audio, mask_time_indices=torch.from_numpy(mask),
                  sampled_negative_indices=torch.from_numpy(neg).long())
        out.loss.backward()
        opt_ref.step()
        opt_ref.zero_grad(set_to_none=True)

    def step_ours():
        lengths, t = frame_lengths_of(ours, audio, None)
        draws = draw_pretrain_inputs(ours, lengths, t, cfg.num_negatives, gen)
        terms = pretrain_terms(ours, audio, None, draws)
        n = terms.contrastive.num_masked
        loss = terms.contrastive.loss + 0.1 * n * diversity_loss(terms.quantizer.avg_probs)
        loss.backward()
        opt_ours.step()
        opt_ours.zero_grad(set_to_none=True)

    for f in (step_ref, step_ours):  # warm-up
        f()
    times = {"ours": [], "transformers": []}
    for _ in range(REPEATS):
        for name, f in (("transformers", step_ref), ("ours", step_ours)):
            t0 = time.perf_counter()
            f()
            times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    result = {
        "config": f"small-size (4 x 256, 256-ch conv, G=2 x V=64, K=100), batch {BATCH} x {SECONDS:.0f} s, fp32 CPU, "
                  f"{torch.get_num_threads()} threads",
        "median_step_s": {k: round(v, 4) for k, v in med.items()},
        "ratio_ours_over_transformers": round(med["ours"] / med["transformers"], 3),
        "repeats": REPEATS,
    }
    print(f"pre-training step: ours {med['ours'] * 1000:.0f} ms, transformers {med['transformers'] * 1000:.0f} ms, "
          f"ratio {result['ratio_ours_over_transformers']:.2f} (lower is better; goal <= 1)")
    return result


if __name__ == "__main__":
    print(main())
