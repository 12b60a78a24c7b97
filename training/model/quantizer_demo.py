"""Which gradients the Gumbel quantizer passes on: a tiny worked example (docs/gumbel_quantizer.md).

    python -m training.model.quantizer_demo

One utterance of T=5 frames, all masked, one codebook (G=1) of V=4 two-dimensional entries,
τ=0.7. It prints, for the contrastive loss L_m:

1. the forward choice i = argmax(l + n) and the soft y = softmax((l + n)/τ) of the same noise;
2. ∂L_m/∂l from autograd next to the straight-through formula
   ∂L_m/∂l_v = y_v/τ · (g_v − Σ_u y_u g_u),  g = ∂L_m/∂(one-hot) at the hard forward point,
   and next to the gradient of a fully soft forward (y instead of the one-hot), which differs;
3. ∂L_m/∂e_v for each codebook row: zero for rows no frame selected;
4. ∂L_d/∂l of the diversity loss for two different noise draws: identical (softmax(l), no noise);
5. eval mode: argmax(l), whatever noise is passed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from training.losses import contrastive_loss, diversity_loss
from training.model.quantizer import GumbelVectorQuantizer


def straight_through_reference(logits: torch.Tensor, noise: torch.Tensor, tau: float,
                               upstream: torch.Tensor) -> torch.Tensor:
    """J_softmax((l+n)/τ)ᵀ · upstream: what the straight-through estimator passes to l, given
    the loss's gradient ``upstream`` with respect to the one-hot the forward pass used."""
    y = torch.softmax((logits + noise) / tau, dim=-1)
    return y * (upstream - (upstream * y).sum(dim=-1, keepdim=True)) / tau


def run(seed: int = 0, verbose: bool = True) -> dict:
    """Builds the example, prints it when ``verbose``, returns the checks (all should be True)."""
    torch.manual_seed(seed)
    b, t, c, g, v, d, tau = 1, 5, 3, 1, 4, 2, 0.7
    quantizer = GumbelVectorQuantizer(c, g, v, d).train()
    quantizer.temperature = tau
    project_q = torch.nn.Linear(d, 3)                   # q_t -> the contrastive space, as the model's
    z = torch.randn(b, t, c)
    context = torch.randn(b, t, 3)                      # c_t, already projected (project_context)
    mask = torch.ones(b, t, dtype=torch.bool)
    # Each step's distractors: the two next steps (cyclically).
    steps = torch.arange(t)
    negatives = torch.stack([(steps + 1) % t, (steps + 2) % t], dim=-1).unsqueeze(0)
    noise = -torch.empty(b, t, g, v).exponential_().log()

    out = quantizer(z, frame_mask=mask, gumbel_noise=noise)
    loss = contrastive_loss(context, project_q(out.quantized), mask, negatives, temperature=0.1).loss
    grad_l, grad_e = torch.autograd.grad(loss, [out.logits, quantizer.codevectors], retain_graph=True)

    # The same loss with the one-hot as a leaf: g = ∂L/∂(one-hot) at the hard forward point.
    logits = out.logits.detach()
    hard = F.one_hot((logits + noise).argmax(-1), v).float().requires_grad_(True)
    entries = quantizer.codevectors.detach().view(g, v, d // g)
    q_hard = torch.einsum("btgv,gvd->btgd", hard, entries).reshape(b, t, d)
    upstream = torch.autograd.grad(contrastive_loss(context, project_q(q_hard), mask, negatives, 0.1).loss, hard)[0]
    formula = straight_through_reference(logits, noise, tau, upstream)

    # A fully soft forward (no straight-through): a different function, a different gradient.
    soft_l = logits.clone().requires_grad_(True)
    q_soft = torch.einsum("btgv,gvd->btgd", torch.softmax((soft_l + noise) / tau, -1), entries).reshape(b, t, d)
    grad_soft = torch.autograd.grad(contrastive_loss(context, project_q(q_soft), mask, negatives, 0.1).loss, soft_l)[0]

    # Diversity loss under two different noise draws.
    other_noise = -torch.empty_like(noise).exponential_().log() * 3
    div_grads = []
    for n in (noise, other_noise):
        o = quantizer(z, frame_mask=mask, gumbel_noise=n)
        div_grads.append(torch.autograd.grad(diversity_loss(o.avg_probs), o.logits)[0])

    quantizer.eval()
    eval_out = quantizer(z, gumbel_noise=other_noise)
    quantizer.train()

    used = torch.zeros(v, dtype=torch.bool)
    used[out.codes.flatten()] = True
    row_has_grad = grad_e.view(g * v, -1).abs().sum(-1) > 0
    checks = {
        "straight_through_equals_formula": torch.allclose(grad_l, formula, rtol=1e-5, atol=1e-7),
        "logits_get_gradient": bool(grad_l.abs().sum() > 0),
        "fully_soft_gradient_differs": not torch.allclose(grad_l, grad_soft, rtol=1e-3, atol=1e-6),
        "only_selected_rows_get_gradient": torch.equal(row_has_grad, used),
        "diversity_gradient_ignores_noise": torch.equal(div_grads[0], div_grads[1]),
        "eval_is_argmax_of_logits": torch.equal(eval_out.codes, eval_out.logits.argmax(-1)),
    }
    if verbose:
        torch.set_printoptions(precision=4, sci_mode=False)
        print(f"T={t} masked frames, G={g} codebook of V={v} entries, tau={tau}, kappa=0.1\n")
        print("scores l (no noise):\n", logits[0, :, 0])
        print("Gumbel noise n:\n", noise[0, :, 0])
        print("forward choice i = argmax(l + n):", out.codes[0, :, 0].tolist(),
              "  (eval, argmax(l):", logits[0, :, 0].argmax(-1).tolist(), ")")
        print("soft y = softmax((l + n)/tau) (backward only):\n", torch.softmax((logits + noise) / tau, -1)[0, :, 0])
        print("\ng = dL_m/d(one-hot), at the hard forward point:\n", upstream[0, :, 0])
        print("dL_m/dl by autograd (straight-through):\n", grad_l[0, :, 0])
        print("y/tau * (g - <g, y>)  (the formula):\n", formula[0, :, 0])
        print("dL_m/dl if the forward were soft (not what trains):\n", grad_soft[0, :, 0])
        print("\ndL_m/de_v per codebook row (|.| summed); rows used:", used.nonzero().flatten().tolist())
        print(" ", grad_e.view(g * v, -1).abs().sum(-1))
        print("\ndL_d/dl, noise draw 1 (first frame):", div_grads[0][0, 0, 0])
        print("dL_d/dl, noise draw 2 (first frame):", div_grads[1][0, 0, 0])
        print()
        for name, ok in checks.items():
            print(f"{'ok ' if ok else 'FAIL'} {name}")
    return checks


def main() -> int:
    return 0 if all(run().values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
