"""Mask functions: logits (one row of N per site) → adapter mixing weights.

soft: softmax(logits).
hard: the paper's Algorithm 1 while training (Gumbel noise ν, temperature τ, top-k of
y_soft, k-hot/k, straight-through), and the noiseless top-k of the logits at inference.
sign: every adapter joins with a learned sign, ±1/N (one bit per adapter, as many bits as a hard
mask); trained straight-through (BinaryConnect), the sign of the logit at inference.
linear: unconstrained real weights logits/N (a random-subspace LoRA); stored like soft masks.
Ties in top-k are broken towards the lower adapter index, so the choice is reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .config import KINDS, STORED_KINDS  # noqa: F401


@dataclass
class MaskSpec:
    kind: str = "hard"  # "hard" | "soft"
    k: int = 50
    nu: float = 0.3  # Gumbel noise level ν (default chosen by measurement, see benchmarks/)
    tau: float = 1.0  # softmax temperature τ
    generator: torch.Generator | None = None  # seeded source of the Gumbel noise
    # Soft-to-hard annealing: while training, a hard mask's forward value is
    # α·(k-hot/k) + (1−α)·y_soft; the fit raises α from 0 to 1 over its warm-up (FitConfig.soft_warmup).
    alpha: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"mask kind must be one of {', '.join(KINDS)}, not {self.kind!r}")


def soft_weights(logits: torch.Tensor) -> torch.Tensor:
    return torch.softmax(logits, dim=-1)


def sign_weights(logits: torch.Tensor, training: bool) -> torch.Tensor:
    """±1/N by the sign of each logit (a zero logit counts as −); while training, straight-through:
    the value is the sign's, the gradient that of logits/N."""
    n = logits.shape[-1]
    value = torch.where(logits > 0, 1.0, -1.0).to(logits.dtype) / n
    if not training:
        return value
    lin = logits / n
    return lin + (value - lin).detach()


def topk_indices(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k largest entries per row; ties go to the lower index (stable sort)."""
    return torch.argsort(scores, dim=-1, descending=True, stable=True)[..., :k]


def khot(indices: torch.Tensor, n: int, dtype=torch.float32) -> torch.Tensor:
    out = torch.zeros(*indices.shape[:-1], n, dtype=dtype, device=indices.device)
    return out.scatter_(-1, indices, 1.0)


def gumbel(u: torch.Tensor) -> torch.Tensor:
    """Gumbel(0, 1) samples from uniform ones (clamped away from 0 and 1)."""
    u = u.clamp_(torch.finfo(u.dtype).tiny, 1.0 - torch.finfo(u.dtype).eps)
    return -torch.log(-torch.log(u))


def gumbel_like(logits: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return gumbel(torch.rand(logits.shape, generator=generator, device=logits.device, dtype=logits.dtype))


def hard_soft_and_choice(
    logits: torch.Tensor,
    k: int,
    nu: float,
    tau: float,
    generator: torch.Generator | None = None,
    noise: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Algorithm 1's two halves: y_soft = softmax((logits+νg)/τ), which takes the gradient, and
    the indices of its top k, which make the forward value k-hot/k.

    `noise`: Gumbel samples drawn by the caller (many profiles, each from its own generator).
    """
    if nu and noise is None:
        noise = gumbel_like(logits, generator)
    noisy = logits + nu * noise if (nu and noise is not None) else logits
    y_soft = torch.softmax(noisy / tau, dim=-1)
    return y_soft, topk_indices(y_soft, k)


def straight_through(y_soft: torch.Tensor | None, chosen: torch.Tensor, n: int, dtype=torch.float32) -> torch.Tensor:
    """A hard choice as dense weights: value k-hot/k (y_hard − y_soft.detach() + y_soft), gradient
    that of y_soft; without y_soft (inference), k-hot/k alone."""
    y_hard = khot(chosen, n, dtype) / chosen.shape[-1]
    return y_hard if y_soft is None else y_hard - y_soft.detach() + y_soft


def hard_topk_st(
    logits: torch.Tensor,
    k: int,
    nu: float,
    tau: float,
    generator: torch.Generator | None = None,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """Algorithm 1 as dense weights: forward value k-hot/k; gradient that of y_soft."""
    y_soft, chosen = hard_soft_and_choice(logits, k, nu, tau, generator, noise)
    return straight_through(y_soft, chosen, logits.shape[-1], logits.dtype)


def hard_inference_weights(logits: torch.Tensor, k: int) -> torch.Tensor:
    return straight_through(None, topk_indices(logits, k), logits.shape[-1], logits.dtype)


def mask_weights(
    logits: torch.Tensor, spec: MaskSpec, training: bool, noise: torch.Tensor | None = None
) -> torch.Tensor:
    """Dense mixing weights (softmax, or a hard mask's straight-through k-hot/k): mask_choice, densified."""
    w, chosen = mask_choice(logits, spec, training, noise)
    if chosen is None:
        assert w is not None  # mask_choice gives weights, a choice, or both
        return w
    return straight_through(w, chosen, logits.shape[-1], logits.dtype)


def mask_choice(
    logits: torch.Tensor, spec: MaskSpec, training: bool, noise: torch.Tensor | None = None
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """What mixing.mix takes: (weights, chosen). Soft: (softmax, None). Hard: the k chosen
    adapters, with y_soft to carry the straight-through gradient while training (None at
    inference, where the noiseless top-k has no gradient). Same values as mask_weights."""
    if spec.kind == "soft":
        return soft_weights(logits), None
    if spec.kind == "sign":
        return sign_weights(logits, training), None
    if spec.kind == "linear":
        return logits / logits.shape[-1], None
    if training:
        y_soft, chosen = hard_soft_and_choice(logits, spec.k, spec.nu, spec.tau, spec.generator, noise)
        if spec.alpha < 1.0:  # annealing: a dense blend, y_soft + α·(y_hard − sg(y_soft)); gradient that of y_soft
            y_hard = khot(chosen, logits.shape[-1], logits.dtype) / chosen.shape[-1]
            return y_soft + spec.alpha * (y_hard - y_soft.detach()), None
        return y_soft, chosen
    return None, topk_indices(logits, spec.k)


def initial_logits(kind: str, L: int, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Where a profile's (L, N) mask logits start, the same in lone and multi-profile fits.

    hard/soft: 0 (uniform). sign: tiny seeded values, so the first gradients pick the signs.
    linear: Â starts as a seeded ±1 mix and B̂ at 0, so every site starts as the PLM's own.
    Drawn site by site, A then B, from one generator seeded with seed + 2.
    """
    la, lb = torch.zeros(L, n), torch.zeros(L, n)
    if kind in ("sign", "linear"):
        g = torch.Generator().manual_seed(seed + 2)
        for l in range(L):
            if kind == "sign":
                la[l] = (torch.rand(n, generator=g) * 2 - 1) * 1e-3
                lb[l] = (torch.rand(n, generator=g) * 2 - 1) * 1e-3
            else:
                la[l] = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0)
    return la, lb


def bits_to_logits(bits: torch.Tensor, kind: str = "hard") -> torch.Tensor:
    """A hard or sign mask stored as bits, as logits that give back the same bits: the noiseless
    top-k of 0/1 (hard), the sign of ±1 (sign)."""
    return torch.where(bits, 1.0, -1.0) if kind == "sign" else bits.to(torch.float32)
