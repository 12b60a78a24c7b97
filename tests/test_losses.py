"""Pre-training loss terms against transformers' Wav2Vec2ForPreTraining and hand-written references;
the quantizer's straight-through estimator."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tests.conftest import ARCHS, save_hf_model, small_hf_config, speech_like
from training.convert import import_hf
from training.losses import contrastive_loss, diversity_loss, feature_penalty, perplexity
from training.masking import time_mask
from training.negatives import flat_negative_indices, sample_negatives
from training.pretrain import PretrainDraws, pretrain_terms

NO_DROPOUT = dict(hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, feat_proj_dropout=0.0,
                  feat_quantizer_dropout=0.0, layerdrop=0.0, num_negatives=12)


def close(got: torch.Tensor, ref: torch.Tensor, tol: float = 1e-4) -> bool:
    return abs(got.item() - ref.item()) <= tol * max(1.0, abs(ref.item()))


@pytest.fixture(scope="module", params=sorted(ARCHS))
def hf_pair(request, tmp_path_factory):
    from transformers import Wav2Vec2ForPreTraining

    torch.manual_seed(7)
    ref = Wav2Vec2ForPreTraining(small_hf_config(request.param, **NO_DROPOUT))
    d = save_hf_model(ref, tmp_path_factory.mktemp(f"pt_{request.param}"), do_normalize=False, vocab=False)
    ours = import_hf(d).build_model()
    assert ours.quantizer is not None
    return ref, ours


def batch_and_draws(model, seed: int, num_negatives: int):
    audio = torch.from_numpy(speech_like(2 * 16000, seed)).view(2, 16000)
    t = int(model.frame_lengths(torch.tensor([16000])).item())
    gen = torch.Generator().manual_seed(seed)
    mask = time_mask(torch.full((2,), t), t, 0.5, 4, 2, gen)
    negatives = sample_negatives(mask, num_negatives, gen)
    return audio, PretrainDraws(mask, negatives)


def test_contrastive_and_diversity_match_transformers_eval(hf_pair):
    ref, ours = hf_pair
    ref.eval(), ours.eval()
    audio, draws = batch_and_draws(ours, 11, ref.config.num_negatives)
    with torch.no_grad():
        out = ref(audio, mask_time_indices=draws.mask,
                  sampled_negative_indices=flat_negative_indices(draws.negatives))
        terms = pretrain_terms(ours, audio, None, draws, ref.config.contrastive_logits_temperature)
    n = draws.mask.sum()
    assert close(terms.contrastive.loss, out.contrastive_loss)
    assert terms.contrastive.num_masked.item() == n.item()
    # Eval-mode reference: the perplexity of the hard codes over the masked steps.
    assert close(terms.quantizer.code_perplexity, out.codevector_perplexity)
    codes_hist = F.one_hot(terms.quantizer.codes[draws.mask], ours.quantizer.num_vars).float().mean(0)
    assert close(diversity_loss(codes_hist) * n, out.diversity_loss)


def test_diversity_uses_the_plain_softmax_like_transformers_train(hf_pair):
    """In training mode transformers' perplexity is that of the un-noised softmax over the masked
    steps: the paper's diversity term. Ours must equal it (Gumbel noise must not enter it)."""
    ref, ours = hf_pair
    ref.train(), ours.train()
    audio, draws = batch_and_draws(ours, 12, ref.config.num_negatives)
    noise = -torch.empty(2, draws.mask.shape[1], 2, ours.quantizer.num_vars).exponential_().log() * 5
    with torch.no_grad():
        out = ref(audio, mask_time_indices=draws.mask,
                  sampled_negative_indices=flat_negative_indices(draws.negatives))
        terms = pretrain_terms(ours, audio, None, PretrainDraws(draws.mask, draws.negatives, noise))
    ref.eval(), ours.eval()
    n = draws.mask.sum()
    assert close(terms.quantizer.prob_perplexity, out.codevector_perplexity)
    assert close(diversity_loss(terms.quantizer.avg_probs) * n, out.diversity_loss)


def reference_contrastive(context, targets, mask, negatives, kappa):
    """One masked step at a time, written from the paper's formula."""
    total, correct = 0.0, 0
    for b, t in mask.nonzero().tolist():
        c, q = context[b, t].double(), targets[b, t].double()
        sims = [F.cosine_similarity(c, q, dim=0) / kappa]
        for j in negatives[b, t].tolist():
            d = targets[b, j].double()
            if not torch.equal(d, q):
                sims.append(F.cosine_similarity(c, d, dim=0) / kappa)
        sims = torch.stack(sims)
        total += -(sims[0] - torch.logsumexp(sims, 0)).item()
        correct += int(sims.argmax().item() == 0 and sims.argmin().item() != 0)
    return total, correct


def test_contrastive_matches_the_formula_and_excludes_identical_distractors():
    torch.manual_seed(0)
    b, t, d = 3, 40, 16
    context = torch.randn(b, t, d)
    # Targets from a tiny "codebook": many distractors equal their positive.
    codebook = torch.randn(4, d)
    targets = codebook[torch.randint(0, 4, (b, t))]
    gen = torch.Generator().manual_seed(1)
    mask = time_mask(torch.tensor([40, 30, 22]), t, 0.5, 4, 2, gen)
    negatives = sample_negatives(mask, 10, gen)
    out = contrastive_loss(context, targets, mask, negatives, 0.1)
    ref_loss, ref_correct = reference_contrastive(context, targets, mask, negatives, 0.1)
    assert out.identical.item() > 0
    assert math.isclose(out.loss.item(), ref_loss, rel_tol=1e-5)
    assert out.correct.item() == ref_correct
    assert out.num_masked.item() == mask.sum().item()


def test_feature_penalty_is_the_mean_square_over_valid_frames():
    z = torch.randn(2, 10, 8)
    total, count = feature_penalty(z, None)
    assert math.isclose((total / count).item(), z.pow(2).mean().item(), rel_tol=1e-6)
    total, count = feature_penalty(z, torch.tensor([10, 4]))
    expected = torch.cat([z[0].flatten(), z[1, :4].flatten()]).pow(2).mean()
    assert math.isclose((total / count).item(), expected.item(), rel_tol=1e-6)


def test_perplexity_bounds():
    uniform = torch.full((2, 8), 1 / 8)
    assert math.isclose(perplexity(uniform).item(), 16.0, rel_tol=1e-5)
    assert math.isclose(diversity_loss(uniform).item(), 0.0, abs_tol=1e-5)
    onehot = F.one_hot(torch.tensor([3, 1]), 8).float()
    assert math.isclose(perplexity(onehot).item(), 2.0, rel_tol=1e-4)


# ---------------------------------------------------------------- straight-through Gumbel
def test_quantizer_straight_through():
    from training.model.quantizer import GumbelVectorQuantizer

    torch.manual_seed(3)
    g, v, dim = 2, 16, 8
    quantizer = GumbelVectorQuantizer(12, g, v, dim).train()
    quantizer.temperature = 1.7
    z = torch.randn(2, 5, 12)
    noise = -torch.empty(2, 5, g, v).exponential_().log()
    out = quantizer(z, gumbel_noise=noise)

    # Forward: exactly one codebook entry per group.
    entries = quantizer.codevectors.detach().view(g, v, -1)
    expected_codes = ((out.logits.detach() + noise) / 1.7).argmax(-1)
    assert torch.equal(out.codes, expected_codes)
    chosen = torch.stack([entries[i][out.codes[..., i]] for i in range(g)], dim=2).reshape(2, 5, -1)
    assert torch.equal(out.quantized.detach(), chosen)

    # Backward: the gradient reaching the scores l is that of the soft Gumbel-softmax.
    upstream = torch.randn_like(out.quantized)
    logits = quantizer.weight_proj(z).view(2, 5, g, v)
    grad_ours = torch.autograd.grad((out.quantized * upstream).sum(), out.logits, retain_graph=True)[0]
    soft = torch.softmax((logits + noise) / 1.7, dim=-1)
    soft_quantized = torch.einsum("btgv,gvd->btgd", soft, entries).reshape(2, 5, -1)
    grad_ref = torch.autograd.grad((soft_quantized * upstream).sum(), logits)[0]
    torch.testing.assert_close(grad_ours, grad_ref, rtol=1e-5, atol=1e-7)


def test_quantizer_eval_is_plain_argmax():
    from training.model.quantizer import GumbelVectorQuantizer

    quantizer = GumbelVectorQuantizer(12, 2, 16, 8).eval()
    z = torch.randn(3, 4, 12)
    out = quantizer(z)
    assert torch.equal(out.codes, out.logits.argmax(-1))


# ---------------------------------------------------------------- logging helpers (fairseq's units)
def test_loss_in_bits_and_code_perplexity_from_counts():
    from training.losses import code_perplexity, nats_to_bits

    # fairseq's wav2vec criterion logs loss / sample_size / math.log(2).
    assert math.isclose(nats_to_bits(3 * math.log(2)), 3.0)
    assert torch.allclose(nats_to_bits(torch.tensor([math.log(2), 0.0])), torch.tensor([1.0, 0.0]))
    # Counts of argmax(l) per entry, e.g. summed over processes: each group normalized by its total.
    counts = torch.tensor([[5.0, 5.0, 0.0, 0.0], [0.0, 0.0, 7.0, 0.0]])
    assert math.isclose(code_perplexity(counts).item(), 2.0 + 1.0, rel_tol=1e-5)
    assert math.isclose(code_perplexity(counts * 3).item(), code_perplexity(counts).item(), rel_tol=1e-6)
