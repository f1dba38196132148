"""ITI-c (Li et al., NeurIPS 2023, "Inference-Time Intervention"), as the Linear-AcT paper runs it.

On the per-head outputs of attention (the input of ``o_proj`` / GPT-2 ``attn.c_proj``, split
into heads), mean-pooled over each toxic / non-toxic sentence:

1. a linear probe per head (logistic regression, trained on a seeded 80 % of the sentences,
   accuracy on the other 20 %) ranks the heads (ties, common with few sentences, by the separation
   ``|mean shift| / sigma``);
2. the direction of head ``h`` is the mass mean shift ``mean(non-toxic) - mean(toxic)`` (ITI's
   best variant, the "c" of ITI-c: centre of mass), normalised; ``sigma_h`` is the standard
   deviation of all sentences' activations projected on it;
3. the ``top_k`` heads get ``strength * sigma_h * u_h`` added to their output at every position.

Adding a constant to ``o_proj``'s input is ``bias += W_o v``: the folded checkpoint is exact.
"""

from __future__ import annotations

import torch

from ...errors import DetoxflowError


def probe_accuracy(x: torch.Tensor, y: torch.Tensor, seed: int, *, l2: float = 1e-2, steps: int = 100) -> float:
    """Held-out accuracy of an L2-regularised logistic regression on standardised features."""
    n = len(x)
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=g)
    n_val = max(1, n // 5)
    val, train = perm[:n_val], perm[n_val:]
    x = x.to(torch.float64)
    mu, sd = x[train].mean(0), x[train].std(0).clamp_min(1e-8)
    xs = (x - mu) / sd
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    yt = y[train].to(torch.float64)
    opt = torch.optim.LBFGS([w, b], max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        logits = xs[train] @ w + b
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, yt) + l2 * (w * w).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    with torch.no_grad():
        pred = (xs[val] @ w + b) > 0
    return float((pred == y[val].bool()).to(torch.float64).mean())


def head_directions(z: torch.Tensor, labels: torch.Tensor, n_heads: int, seed: int) -> dict:
    """Per head of one layer: unit direction [H, d], sigma [H], probe accuracy [H] (labels: 1 = toxic)."""
    n, dim = z.shape
    if dim % n_heads:
        raise DetoxflowError(f"ITI-c: {dim} features do not split into {n_heads} heads")
    lab = labels.to(torch.bool)
    heads = z.to(torch.float64).reshape(n, n_heads, dim // n_heads)
    shift = heads[~lab].mean(0) - heads[lab].mean(0)  # toward non-toxic
    norm = shift.norm(dim=-1, keepdim=True)
    u = torch.where(norm > 0, shift / norm.clamp_min(1e-30), torch.zeros_like(shift))
    proj = torch.einsum("nhd,hd->nh", heads, u)
    sigma = proj.std(0)
    acc = torch.tensor([probe_accuracy(heads[:, h], lab, seed + h) for h in range(n_heads)], dtype=torch.float64)
    separation = norm.squeeze(-1) / sigma.clamp_min(1e-12)
    return {"direction": u, "sigma": sigma, "accuracy": acc, "separation": separation}


def select_heads(per_layer: dict[str, dict], top_k: int) -> list[tuple[str, int]]:
    """The ``top_k`` (module, head) pairs of highest probe accuracy.

    With a few dozen sentences many heads reach a held-out accuracy of 1; ties are broken by the
    separation of the class means along the direction (``|mean shift| / sigma``), then by position.
    """
    ranked = []
    for i, (name, d) in enumerate(per_layer.items()):
        sep = d.get("separation")
        for h in range(len(d["accuracy"])):
            ranked.append((-float(d["accuracy"][h]), -(float(sep[h]) if sep is not None else 0.0), i, h, name))
    ranked.sort()
    return [(name, h) for _, _, _, h, name in ranked[:top_k]]


def head_shifts(per_layer: dict[str, dict], heads: list[tuple[str, int]], strength: float) -> dict[str, torch.Tensor]:
    """{o_proj module: the vector added to its input} (zeros outside the chosen heads)."""
    out: dict[str, torch.Tensor] = {}
    for name, h in heads:
        d = per_layer[name]
        n_heads, head_dim = d["direction"].shape
        vec = out.setdefault(name, torch.zeros(n_heads * head_dim, dtype=torch.float64))
        vec[h * head_dim:(h + 1) * head_dim] = float(strength) * d["sigma"][h] * d["direction"][h]
    return out
