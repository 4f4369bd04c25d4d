"""Weight-space mixing: Â = Σ_n w_n A_n, for many rows of mask weights over a stacked bank.

Dense weights (soft masks; many hard profiles at once) mix with one bmm, which reads the
whole bank. A hard mask's forward value is k-hot/k, so its Â is the mean of the k chosen
adapters: reading those k rows alone (one embedding_bag) is enough. While training, the
straight-through gradient of Algorithm 1 must still reach all N logits; the backward is that
of the dense mix, grad_w = bank · grad_Â. A hard training step then reads the bank once
(backward) instead of twice: on an H100 at bert-base shape, N = 800, the forward mixing went
from 0.47 ms to 0.05 ms of a 15 ms step (benchmarks/README.md, fifth session).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import fused
from .masks import straight_through


def chosen_mean(bank: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
    """The mean of the chosen adapters: bank (G, N, D), chosen (G, R, k) → (G, R, D).

    One kernel that reads only the G·R·k chosen rows, accumulating in float32.
    """
    g, n, d = bank.shape
    r, k = chosen.shape[1:]
    offset = torch.arange(0, g * n, n, device=chosen.device).view(g, 1, 1)  # rows of the (G·N, D) view
    out = F.embedding_bag((chosen + offset).reshape(g * r, k), bank.reshape(g * n, d), mode="mean")
    return out.view(g, r, d)


def _dense(bank: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Σ_n w_n bank_n: (G, N, D), (G, R, N) → (G, R, D). One row of weights as bankᵀ·w, which
    cuBLAS reads at 3.0 TB/s on an H100 against 2.8 TB/s for w·bank (benchmarks/site_variants.py)."""
    g, _, d = bank.shape
    if w.shape[1] == 1:
        return torch.bmm(bank.transpose(1, 2), w.to(bank.dtype).transpose(1, 2)).view(g, 1, d)
    return torch.bmm(w.to(bank.dtype), bank)


class _Mix(torch.autograd.Function):
    """Forward: Σ_n w_n bank_n, or the mean of the chosen rows (a hard mask's k-hot/k value).
    Backward, either way: grad_w = bank · grad, which for a hard mask is the straight-through
    gradient that Algorithm 1 passes on to y_soft. The bank is frozen: no gradient of its own."""

    @staticmethod
    def forward(ctx, w: torch.Tensor, chosen: torch.Tensor | None, bank: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(bank)
        ctx.w_dtype = w.dtype
        return _dense(bank, w) if chosen is None else chosen_mean(bank, chosen)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (bank,) = ctx.saved_tensors
        if grad.shape[1] == 1:
            grad_w = fused.bank_dot(bank, grad)
        else:
            grad_w = torch.bmm(grad.to(bank.dtype), bank.transpose(1, 2))
        return grad_w.to(ctx.w_dtype), None, None


def mix(bank: torch.Tensor, w: torch.Tensor | None, chosen: torch.Tensor | None = None) -> torch.Tensor:
    """Mixed rows (G, R, D) in the bank's dtype; bank (G, N, D).

    chosen None: dense weights w (G, R, N). chosen (G, R, k): a hard mask, value k-hot/k; w is
    then y_soft, whose gradient is the straight-through one, or None where no gradient is
    wanted (inference). Gathers the chosen rows when that reads less than the bank (R·k < N),
    else mixes densely with the same value and gradient.
    """
    grad = w is not None and w.requires_grad and torch.is_grad_enabled()
    if chosen is None:
        if w is None:
            raise ValueError("mix needs dense weights w or a choice of adapters")
        return _Mix.apply(w, None, bank) if grad else _dense(bank, w)
    n = bank.shape[1]
    r, k = chosen.shape[1:]
    if r * k < n:
        return _Mix.apply(w, chosen, bank) if grad else chosen_mean(bank, chosen)
    dense = straight_through(w, chosen, n)
    return _Mix.apply(dense, None, bank) if grad else _dense(bank, dense)
