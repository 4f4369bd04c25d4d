"""A profile: what one user owns. Masks (bits or logits), optional LN affine, optional head, labels.

Moving a profile in and out of an XPeftModel lives here; the bytes on disk live in xpm.py.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from .errors import IntegrityError
from .masks import bits_to_logits, hard_inference_weights
from .model import TASK_CLASSIFICATION, TASK_REGRESSION, XPeftModel


@dataclass
class Profile:
    name: str
    mask_kind: str                 # "hard" | "soft"
    n: int
    L: int
    k: int                         # 0 for soft masks
    bank_hash: str                 # hex SHA-256 of the bank it was fitted on
    mask_a: np.ndarray             # hard: bool (L, N); soft: float32 logits (L, N)
    mask_b: np.ndarray
    soft_dtype: str = "float32"    # how soft logits are stored: float32 | float16
    ln_weight: np.ndarray | None = None   # (L, b)
    ln_bias: np.ndarray | None = None
    head_weight: np.ndarray | None = None  # (C, d)
    head_bias: np.ndarray | None = None    # (C,)
    task: str = TASK_CLASSIFICATION
    labels: list[str] | None = None
    meta: dict = field(default_factory=dict)

    @property
    def num_outputs(self) -> int | None:
        return None if self.head_weight is None else int(self.head_weight.shape[0])

    def selected(self) -> tuple[list[list[int]], list[list[int]]]:
        """Per site, the indices of the adapters a hard mask picks for Â and for B̂."""
        if self.mask_kind != "hard":
            raise ValueError("only hard masks select adapters")
        return ([np.flatnonzero(r).tolist() for r in self.mask_a], [np.flatnonzero(r).tolist() for r in self.mask_b])


def profile_from_model(model: XPeftModel, name: str, n: int, labels: list[str] | None,
                       meta: dict | None = None) -> Profile:
    """Freeze a trained model's profile parameters. Hard masks become their noiseless top-k bits."""
    la, lb = (t.detach().float().cpu() for t in model.mask_logits())
    spec = model.spec
    if spec.kind == "hard":
        mask_a = (hard_inference_weights(la, spec.k) > 0).numpy()
        mask_b = (hard_inference_weights(lb, spec.k) > 0).numpy()
        k = spec.k
    else:
        mask_a, mask_b, k = la.numpy().astype(np.float32), lb.numpy().astype(np.float32), 0
    ln_w = ln_b = None
    if model.sites and model.sites[0].ln is not None:
        ln_w = torch.stack([s.ln.weight.detach().float().cpu() for s in model.sites]).numpy()
        ln_b = torch.stack([s.ln.bias.detach().float().cpu() for s in model.sites]).numpy()
    return Profile(
        name=name, mask_kind=spec.kind, n=n, L=len(model.sites), k=k, bank_hash=model.bank_hash,
        mask_a=mask_a, mask_b=mask_b, ln_weight=ln_w, ln_bias=ln_b,
        head_weight=model.head.weight.detach().float().cpu().numpy(),
        head_bias=model.head.bias.detach().float().cpu().numpy(),
        task=model.task, labels=labels, meta=dict(meta or {}),
    )


def apply_profile(model: XPeftModel, profile: Profile) -> None:
    """Load a profile into a model built on the same bank."""
    if profile.bank_hash != model.bank_hash:
        raise IntegrityError(
            f"profile {profile.name!r} was fitted on bank {profile.bank_hash[:16]}…, not on this bank "
            f"({model.bank_hash[:16]}…)"
        )
    if profile.L != len(model.sites) or profile.n != model.sites[0].logits_a.numel():
        raise IntegrityError("profile shape (L, N) does not match the bank")
    model.spec.kind = profile.mask_kind
    if profile.mask_kind == "hard":
        model.spec.k = profile.k
        la, lb = bits_to_logits(torch.from_numpy(profile.mask_a)), bits_to_logits(torch.from_numpy(profile.mask_b))
    else:
        la = torch.from_numpy(np.asarray(profile.mask_a, dtype=np.float32))
        lb = torch.from_numpy(np.asarray(profile.mask_b, dtype=np.float32))
    with torch.no_grad():
        for i, s in enumerate(model.sites):
            s.logits_a.copy_(la[i])
            s.logits_b.copy_(lb[i])
            if s.ln is not None and profile.ln_weight is not None:
                s.ln.weight.copy_(torch.from_numpy(profile.ln_weight[i]))
                s.ln.bias.copy_(torch.from_numpy(profile.ln_bias[i]))
        if profile.head_weight is not None:
            if tuple(model.head.weight.shape) != tuple(profile.head_weight.shape):
                raise IntegrityError("profile head does not fit this model's hidden size")
            model.head.weight.copy_(torch.from_numpy(profile.head_weight))
            model.head.bias.copy_(torch.from_numpy(profile.head_bias))
    model.task = profile.task if profile.task in (TASK_CLASSIFICATION, TASK_REGRESSION) else TASK_CLASSIFICATION
    model.invalidate()
