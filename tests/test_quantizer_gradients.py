"""What the Gumbel quantizer's straight-through estimator passes back (docs/gumbel_quantizer.md).

Forward: the one-hot of i = argmax(l + n). Backward: the Jacobian of y = softmax((l + n)/τ) with
the same noise n, applied to the loss's gradient at the hard forward point. So the contrastive
loss trains the scores l (W, z) and the selected codebook rows; the diversity loss sees
softmax(l) only; evaluation is argmax(l).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from training.losses import code_perplexity, contrastive_loss, diversity_loss, perplexity
from training.model.quantizer import GumbelVectorQuantizer
from training.model.quantizer_demo import straight_through_reference
from training.negatives import sample_negatives

B, T, C, G, V, D, TAU = 2, 24, 12, 2, 16, 8, 1.3


def gumbel(shape, seed: int, scale: float = 1.0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    u = torch.rand(shape, generator=gen).clamp(1e-10, 1 - 1e-7)
    return -torch.log(-torch.log(u)) * scale


@pytest.fixture
def setup():
    """A quantizer in training mode, project_q, context vectors, a mask and distractors."""
    torch.manual_seed(0)
    quantizer = GumbelVectorQuantizer(C, G, V, D).train()
    quantizer.temperature = TAU
    project_q = torch.nn.Linear(D, 6)
    z = torch.randn(B, T, C)
    context = torch.randn(B, T, 6)
    mask = torch.zeros(B, T, dtype=torch.bool)
    mask[0, 2:12] = True
    mask[1, 5:9] = True
    mask[1, 15:21] = True
    negatives = sample_negatives(mask, 6, torch.Generator().manual_seed(1))
    return quantizer, project_q, z, context, mask, negatives


def contrastive(project_q, quantized, context, mask, negatives):
    return contrastive_loss(context, project_q(quantized), mask, negatives, 0.1).loss


def test_contrastive_gradient_to_logits_is_the_soft_gumbel_jacobian(setup):
    """(i) ∂L_m/∂l = J_softmax((l+n)/τ)ᵀ · ∂L_m/∂(one-hot), the same noise n as the forward pass."""
    quantizer, project_q, z, context, mask, negatives = setup
    noise = gumbel((B, T, G, V), seed=2)
    out = quantizer(z, frame_mask=mask, gumbel_noise=noise)
    loss = contrastive(project_q, out.quantized, context, mask, negatives)
    grad_ours = torch.autograd.grad(loss, out.logits)[0]

    # The same forward with the hard one-hot as a leaf: its gradient g is the upstream gradient.
    logits = out.logits.detach()
    hard = F.one_hot((logits + noise).argmax(-1), V).float().requires_grad_(True)
    entries = quantizer.codevectors.detach().view(G, V, -1)
    q_hard = torch.einsum("btgv,gvd->btgd", hard, entries).reshape(B, T, -1)
    loss_hard = contrastive(project_q, q_hard, context, mask, negatives)
    torch.testing.assert_close(loss_hard, loss.detach(), rtol=1e-6, atol=1e-6)   # same forward value
    upstream = torch.autograd.grad(loss_hard, hard)[0]

    # Soft path with the same noise, by autograd and by the closed form y/τ·(g − <g, y>).
    soft_logits = logits.clone().requires_grad_(True)
    y = torch.softmax((soft_logits + noise) / TAU, dim=-1)
    grad_soft_path = torch.autograd.grad(y, soft_logits, grad_outputs=upstream)[0]
    torch.testing.assert_close(grad_ours, grad_soft_path, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(grad_ours, straight_through_reference(logits, noise, TAU, upstream),
                               rtol=1e-5, atol=1e-7)

    # The loss does train l (only masked frames enter it), and thus W.
    assert grad_ours[mask].abs().sum() > 0
    assert torch.count_nonzero(grad_ours[~mask]) == 0
    # Not the gradient of a fully soft forward pass (y in place of the one-hot): that is a
    # different function of l; straight-through keeps the hard forward value.
    q_soft = torch.einsum("btgv,gvd->btgd", torch.softmax((soft_logits + noise) / TAU, -1), entries).reshape(B, T, -1)
    grad_fully_soft = torch.autograd.grad(contrastive(project_q, q_soft, context, mask, negatives), soft_logits)[0]
    assert not torch.allclose(grad_ours, grad_fully_soft, rtol=1e-3, atol=1e-6)


def test_codebook_rows_get_gradient_only_when_selected(setup):
    """(ii) Rows no masked frame selected (the frames the loss sees) get exactly zero gradient."""
    quantizer, project_q, z, context, mask, negatives = setup
    out = quantizer(z, frame_mask=mask, gumbel_noise=gumbel((B, T, G, V), seed=3))
    loss = contrastive(project_q, out.quantized, context, mask, negatives)
    grad = torch.autograd.grad(loss, quantizer.codevectors)[0].view(G, V, -1)
    selected = torch.zeros(G, V, dtype=torch.bool)
    codes = out.codes[mask]                                       # [N, G]
    for g in range(G):
        selected[g, codes[:, g]] = True
    assert (~selected).any() and selected.any()                   # the example has both kinds
    assert torch.count_nonzero(grad[~selected]) == 0              # exactly zero, not just small
    assert (grad[selected].abs().sum(-1) > 0).all()


def test_diversity_gradient_does_not_depend_on_the_noise(setup):
    """(iii) L_d uses p̄ of softmax(l) without noise: two noise draws, bit-identical gradients."""
    quantizer, _, z, _, mask, _ = setup
    grads, codes = [], []
    for seed in (4, 5):
        quantizer.zero_grad()
        out = quantizer(z, frame_mask=mask, gumbel_noise=gumbel((B, T, G, V), seed=seed, scale=3.0))
        diversity_loss(out.avg_probs).backward()
        grads.append(quantizer.weight_proj.weight.grad.clone())
        codes.append(out.codes)
    assert not torch.equal(codes[0], codes[1])                   # the noise did change the forward choice
    assert torch.equal(grads[0], grads[1])
    assert grads[0].abs().sum() > 0
    assert quantizer.codevectors.grad is None                     # L_d never reaches the codebook


def test_eval_is_deterministic_argmax_without_noise(setup):
    """(iv) Eval: i = argmax(l); no noise is drawn and passed noise is ignored."""
    quantizer, _, z, _, _, _ = setup
    quantizer.eval()
    state = torch.get_rng_state()
    a = quantizer(z)
    assert torch.equal(torch.get_rng_state(), state)              # no random draw
    b = quantizer(z, gumbel_noise=gumbel((B, T, G, V), seed=6, scale=100.0))
    assert torch.equal(a.codes, a.logits.argmax(-1)) and torch.equal(a.codes, b.codes)
    assert torch.equal(a.quantized, b.quantized)
    entries = quantizer.codevectors.detach().view(G, V, -1)
    chosen = torch.stack([entries[g][a.codes[..., g]] for g in range(G)], dim=2).reshape(B, T, -1)
    assert torch.equal(a.quantized.detach(), chosen)


def test_code_perplexity_is_of_the_noise_free_argmax(setup):
    """fairseq's code_perplexity: the histogram of argmax(l), in training too (not of the noisy
    choices); prob_perplexity: of p̄, the plain softmax average."""
    quantizer, _, z, _, mask, _ = setup
    out = quantizer(z, frame_mask=mask, gumbel_noise=gumbel((B, T, G, V), seed=7, scale=50.0))
    hard = F.one_hot(out.logits.detach().argmax(-1)[mask], V).float()       # [N, G, V]
    noisy = F.one_hot(out.codes[mask], V).float()
    assert torch.equal(out.code_counts, hard.sum(0))
    torch.testing.assert_close(out.code_perplexity, perplexity(hard.mean(0)))
    torch.testing.assert_close(code_perplexity(out.code_counts), out.code_perplexity)
    assert not torch.allclose(perplexity(noisy.mean(0)), out.code_perplexity)  # the noise matters here
    soft = torch.softmax(out.logits.detach(), -1)[mask].mean(0)
    torch.testing.assert_close(out.prob_perplexity, perplexity(soft))


def test_the_demo_runs_and_its_checks_hold():
    from training.model.quantizer_demo import run

    assert all(run(verbose=False).values())
