"""A profile: what one user owns. Masks (bits or logits), optional LN affine, optional head, labels.

Moving a profile in and out of an XPeftModel lives here; the bytes on disk live in xpm.py. The
profile itself, its JSON form and its conversions need numpy alone: torch is imported by the
functions that meet a model (so the file layer, xpm.py and store.py, reads profiles without torch).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from .config import TASK_CLASSIFICATION, TASK_REGRESSION
from .errors import IntegrityError

if TYPE_CHECKING:
    import torch

    from .model import XPeftModel


@dataclass
class Profile:
    name: str
    mask_kind: str  # "hard" | "soft" | "sign"
    n: int
    L: int
    k: int  # 0 for soft masks
    bank_hash: str  # hex SHA-256 of the bank it was fitted on
    mask_a: np.ndarray  # hard: bool (L, N), set = selected; sign: bool, set = +; soft: float32 logits
    mask_b: np.ndarray
    soft_dtype: str = "float32"  # how soft logits are stored: float32 | float16
    param_dtype: str = "float32"  # how the LN, output-vector and head sections are stored: float32 | float16
    ln_weight: np.ndarray | None = None  # (L, b)
    ln_bias: np.ndarray | None = None
    head_weight: np.ndarray | None = None  # (C, d)
    head_bias: np.ndarray | None = None  # (C,)
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


def stored_masks(kind: str, la: torch.Tensor, lb: torch.Tensor, k: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Trained (L, N) logits as a profile stores them, with the k it records: hard, the bits of the
    noiseless top-k; sign, one bit per adapter, set for +; soft, the float32 logits (k = 0)."""
    from .masks import hard_inference_weights

    if kind == "hard":
        return (hard_inference_weights(la, k) > 0).numpy(), (hard_inference_weights(lb, k) > 0).numpy(), k
    if kind == "sign":
        return (la > 0).numpy(), (lb > 0).numpy(), 0
    return la.numpy().astype(np.float32), lb.numpy().astype(np.float32), 0


def profile_from_model(
    model: XPeftModel, name: str, n: int, labels: list[str] | None, meta: dict | None = None, with_head: bool = True
) -> Profile:
    """Freeze a trained model's profile parameters. Hard masks become their noiseless top-k bits."""
    import torch

    la, lb = (t.detach().float().cpu() for t in model.mask_logits())
    spec = model.spec
    mask_a, mask_b, k = stored_masks(spec.kind, la, lb, spec.k)
    ln_w = ln_b = None
    lns = [s.ln for s in model.sites if s.ln is not None]
    if lns and len(lns) == len(model.sites):
        ln_w = torch.stack([ln.weight.detach().float().cpu() for ln in lns]).numpy()
        ln_b = torch.stack([ln.bias.detach().float().cpu() for ln in lns]).numpy()
    return Profile(
        name=name,
        mask_kind=spec.kind,
        n=n,
        L=len(model.sites),
        k=k,
        bank_hash=model.bank_hash,
        mask_a=mask_a,
        mask_b=mask_b,
        ln_weight=ln_w,
        ln_bias=ln_b,
        head_weight=model.head.weight.detach().float().cpu().numpy() if with_head else None,
        head_bias=model.head.bias.detach().float().cpu().numpy() if with_head else None,
        task=model.task,
        labels=labels if with_head else None,
        meta=dict(meta or {}),
    )


def with_param_dtype(p: Profile, dtype: str) -> Profile:
    """The profile as it will be stored: LN and head rounded to `dtype` (float16 halves those sections;
    the frontier measured no loss from it), so a model loaded from the file equals the fitted one."""
    from dataclasses import replace

    if dtype not in ("float16", "float32"):
        raise ValueError(f"parameter dtype must be float16 or float32, not {dtype!r}")

    def rnd(a):
        return None if a is None else np.asarray(a, np.float32).astype(np.float16).astype(np.float32)

    if dtype == "float32":
        return replace(p, param_dtype=dtype)
    return replace(
        p,
        param_dtype=dtype,
        ln_weight=rnd(p.ln_weight),
        ln_bias=rnd(p.ln_bias),
        head_weight=rnd(p.head_weight),
        head_bias=rnd(p.head_bias),
    )


def inference_weights(p: Profile) -> tuple[torch.Tensor, torch.Tensor]:
    """(W_A, W_B), each (L, N) float32: the weights a stored profile mixes the bank with.
    hard: k-hot/k; sign: ±1/N; soft: softmax of the logits."""
    import torch

    from .masks import bits_to_logits, sign_weights, soft_weights

    def weights(m) -> torch.Tensor:
        if p.mask_kind == "hard":
            return torch.from_numpy(np.asarray(m, dtype=np.float32)) / p.k
        if p.mask_kind == "sign":
            return sign_weights(bits_to_logits(torch.from_numpy(np.asarray(m, dtype=bool)), "sign"), training=False)
        return soft_weights(torch.from_numpy(np.asarray(m, dtype=np.float32)))

    return weights(p.mask_a), weights(p.mask_b)


def apply_profile(model: XPeftModel, profile: Profile, force: bool = False) -> None:
    """Load a profile into a model built on the same bank (`force` skips the bank-hash check only)."""
    import torch

    from .masks import bits_to_logits

    if profile.bank_hash != model.bank_hash and not force:
        raise IntegrityError(
            f"profile {profile.name!r} was fitted on bank {profile.bank_hash[:16]}…, not on this bank "
            f"({model.bank_hash[:16]}…); --force uses it anyway"
        )
    if profile.L != len(model.sites) or profile.n != model.sites[0].logits_a.numel():
        raise IntegrityError("profile shape (L, N) does not match the bank")
    widths = {s.ln.normalized_shape[0] for s in model.sites if s.ln is not None}
    if profile.ln_weight is not None and (not widths or set(np.shape(profile.ln_weight)[1:]) != widths):
        raise IntegrityError(f"profile {profile.name!r}: its LN section does not fit this bank's rank")
    if profile.head_weight is not None and profile.task == TASK_CLASSIFICATION:
        if not profile.labels or len(profile.labels) != np.shape(profile.head_weight)[0]:
            raise IntegrityError(f"profile {profile.name!r}: a classification head needs one label per output")
    model.spec.kind = profile.mask_kind
    if profile.mask_kind in ("hard", "sign"):
        if profile.mask_kind == "hard":
            model.spec.k = profile.k
        la = bits_to_logits(torch.from_numpy(profile.mask_a), profile.mask_kind)
        lb = bits_to_logits(torch.from_numpy(profile.mask_b), profile.mask_kind)
    else:
        la = torch.from_numpy(np.asarray(profile.mask_a, dtype=np.float32))
        lb = torch.from_numpy(np.asarray(profile.mask_b, dtype=np.float32))
    with torch.no_grad():
        for i, s in enumerate(model.sites):
            s.logits_a.copy_(la[i])
            s.logits_b.copy_(lb[i])
            if s.ln is not None and profile.ln_weight is not None and profile.ln_bias is not None:
                s.ln.weight.copy_(torch.from_numpy(profile.ln_weight[i]))
                s.ln.bias.copy_(torch.from_numpy(profile.ln_bias[i]))
        if profile.head_weight is not None:
            if tuple(model.head.weight.shape) != tuple(profile.head_weight.shape):
                raise IntegrityError("profile head does not fit this model's hidden size")
            model.head.weight.copy_(torch.from_numpy(profile.head_weight))
            model.head.bias.copy_(torch.from_numpy(profile.head_bias))
    model.task = profile.task if profile.task in (TASK_CLASSIFICATION, TASK_REGRESSION) else TASK_CLASSIFICATION
    model.invalidate()


# ---- JSON form (xpeft unpack, formats/vectors) -------------------------------------------
def _floats(a: np.ndarray) -> list:
    return np.asarray(a, dtype=np.float32).astype(np.float64).tolist()  # exact: every float32 is a double


def profile_to_json(p: Profile) -> dict:
    """A lossless JSON view. Hard masks list the selected adapter indices of each site; sign masks
    the indices of the adapters that join with +."""
    if p.mask_kind in ("hard", "sign"):  # sign: the adapters that join with +
        masks = {
            "A": [np.flatnonzero(r).tolist() for r in p.mask_a],
            "B": [np.flatnonzero(r).tolist() for r in p.mask_b],
        }
    else:
        masks = {"A": _floats(p.mask_a), "B": _floats(p.mask_b)}
    return {
        "name": p.name,
        "mask": p.mask_kind,
        "n": p.n,
        "L": p.L,
        "k": p.k,
        "bank_hash": p.bank_hash,
        "soft_dtype": p.soft_dtype if p.mask_kind == "soft" else None,
        "masks": masks,
        "ln": None
        if p.ln_weight is None or p.ln_bias is None
        else {"weight": _floats(p.ln_weight), "bias": _floats(p.ln_bias)},
        "head": None
        if p.head_weight is None or p.head_bias is None
        else {"task": p.task, "weight": _floats(p.head_weight), "bias": _floats(p.head_bias)},
        "labels": p.labels,
        "meta": p.meta,
    } | ({"param_dtype": p.param_dtype} if p.param_dtype != "float32" else {})


def profile_from_json(obj: dict) -> Profile:
    n, L = int(obj["n"]), int(obj["L"])
    if obj["mask"] in ("hard", "sign"):

        def rows(sel):
            m = np.zeros((L, n), dtype=bool)
            for l, idx in enumerate(sel):
                m[l, idx] = True
            return m

        mask_a, mask_b = rows(obj["masks"]["A"]), rows(obj["masks"]["B"])
    else:
        mask_a = np.asarray(obj["masks"]["A"], dtype=np.float32).reshape(L, n)
        mask_b = np.asarray(obj["masks"]["B"], dtype=np.float32).reshape(L, n)
    p = Profile(
        name=obj["name"],
        mask_kind=obj["mask"],
        n=n,
        L=L,
        k=int(obj["k"]),
        bank_hash=obj["bank_hash"],
        mask_a=mask_a,
        mask_b=mask_b,
        soft_dtype=obj.get("soft_dtype") or "float32",
        labels=obj.get("labels"),
        meta=obj.get("meta") or {},
        param_dtype=obj.get("param_dtype", "float32"),
    )
    if obj.get("ln"):
        p.ln_weight = np.asarray(obj["ln"]["weight"], dtype=np.float32)
        p.ln_bias = np.asarray(obj["ln"]["bias"], dtype=np.float32)
    if obj.get("head"):
        p.task = obj["head"]["task"]
        p.head_weight = np.asarray(obj["head"]["weight"], dtype=np.float32)
        p.head_bias = np.asarray(obj["head"]["bias"], dtype=np.float32)
    return p


def harden(p: Profile, k: int) -> Profile:
    """A soft profile as a hard one: per site, the k adapters with the largest logits (ties to the lower index)."""
    from dataclasses import replace

    import torch

    from .masks import hard_inference_weights

    if p.mask_kind == "hard" and k == p.k:
        return p
    if not 1 <= k <= p.n:
        raise ValueError(f"k must be in 1..{p.n}")
    la, lb = (
        torch.from_numpy(np.asarray(p.mask_a, dtype=np.float32)),
        torch.from_numpy(np.asarray(p.mask_b, dtype=np.float32)),
    )
    if p.mask_kind == "hard" and k != p.k:
        raise ValueError(f"a hard profile selects k={p.k}; re-selecting another k needs its logits")
    bits_a = (hard_inference_weights(la, k) > 0).numpy()
    bits_b = (hard_inference_weights(lb, k) > 0).numpy()
    meta = dict(p.meta) | {"packed_from": {"mask": "soft"}}
    return replace(p, mask_kind="hard", k=k, mask_a=bits_a, mask_b=bits_b, soft_dtype="float32", meta=meta)


def strip_to_masks(p: Profile) -> Profile:
    """The masks-only form: LN, head, labels and meta dropped (they must then come from the bank)."""
    from dataclasses import replace

    return replace(p, ln_weight=None, ln_bias=None, head_weight=None, head_bias=None, labels=None, meta={})


def convert(p: Profile, k: int | None = None, masks_only: bool = False) -> Profile:
    """`xpeft pack`'s rules: `k` turns a soft profile into a hard one choosing k adapters (sign masks
    choose none, a hard profile keeps its k: its logits are gone); `masks_only` drops LN, head, labels
    and meta (the bank supplies them)."""
    from .errors import UsageError

    if k is not None and p.mask_kind == "soft":
        if not 1 <= k <= p.n:
            raise UsageError(f"--k must be in 1..{p.n}")
        p = harden(p, k)
    elif k is not None and p.mask_kind == "sign":
        raise UsageError(
            f"{p.name!r} has sign masks (every adapter joins, with a sign): --k selects adapters of soft profiles only"
        )
    elif k is not None and k != p.k:
        raise UsageError(f"{p.name!r} is already hard with k={p.k}; its logits are gone, so k cannot change")
    return strip_to_masks(p) if masks_only else p
