"""The X-PEFT site: y = W x + s · LN(x Â) B̂, with Â, B̂ mixed from the bank in weight space.

Mixing costs N·(d_in+d_out)·b multiply-adds per site per step and nothing per token,
which is why it replaces the paper's N adapters run on the activations. Like peft's
tuners, this file knows one layer; model.py knows where layers go.
"""

from __future__ import annotations

import torch
from torch import nn

from . import fused
from .masks import MaskSpec, mask_choice, mask_weights
from .mixing import mix


class XPeftLinear(nn.Module):
    def __init__(
        self,
        base: nn.Linear,
        bank_a: torch.Tensor,
        bank_b: torch.Tensor,
        spec: MaskSpec,
        ln: bool = True,
        ln_eps: float = 1e-5,
        scale: float = 1.0,
        out_vector: bool = False,
    ):
        super().__init__()
        n, d_in, rank = bank_a.shape
        if d_in != base.in_features or bank_b.shape != (n, rank, base.out_features):
            raise ValueError("bank tensors do not fit this Linear")
        self.base = base
        # Shared, frozen, not part of a profile: buffers that are never saved with it.
        self.bank_a: torch.Tensor
        self.bank_b: torch.Tensor
        self.register_buffer("bank_a", bank_a, persistent=False)
        self.register_buffer("bank_b", bank_b, persistent=False)
        self.logits_a = nn.Parameter(torch.zeros(n))
        self.logits_b = nn.Parameter(torch.zeros(n))
        self.ln = nn.LayerNorm(rank, eps=ln_eps) if ln else None
        self.scale = scale
        # VeRA-style per-output scaling of the delta, zero at start so the site starts as the PLM's own
        # (as a LoRA does with B = 0); a profile's d_out floats per site when used.
        self.out_scale = nn.Parameter(torch.zeros(base.out_features)) if out_vector else None
        self.spec = spec
        self._cache: tuple[torch.Tensor, torch.Tensor] | None = None  # (Â, B̂) at inference, masks frozen
        self._given: tuple[torch.Tensor, torch.Tensor] | None = None  # (Â, B̂) handed in by the model (give_mixed)

    def weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        return (
            mask_weights(self.logits_a, self.spec, self.training),
            mask_weights(self.logits_b, self.spec, self.training),
        )

    def mixed(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(Â, B̂) mixed from the bank (mixing.mix). Cached at inference, when masks are frozen."""
        if not self.training and not torch.is_grad_enabled() and self._cache is not None:
            return self._cache
        if self._given is not None:
            if not self.training and not torch.is_grad_enabled():
                self._cache = self._given
            return self._given
        a_hat = self._mix(self.logits_a, self.bank_a)
        b_hat = self._mix(self.logits_b, self.bank_b)
        if not self.training and not torch.is_grad_enabled():
            self._cache = (a_hat, b_hat)
            return self._cache
        return a_hat, b_hat

    def _mix(self, logits: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
        w, chosen = mask_choice(logits, self.spec, self.training)
        n = bank.shape[0]
        out = mix(
            bank.reshape(1, n, -1),
            None if w is None else w.view(1, 1, n),
            None if chosen is None else chosen.view(1, 1, -1),
        )
        return out.view(bank.shape[1:])

    # ---- the hand-off with XPeftModel, which may mix every site at once ----------------------------
    def give_mixed(self, a_hat: torch.Tensor, b_hat: torch.Tensor) -> None:
        """Use these (Â, B̂) in the forward passes to come, until take_back_mixed()."""
        self._given = (a_hat, b_hat)

    def take_back_mixed(self) -> None:
        self._given = None

    def has_cached_mix(self) -> bool:
        return self._cache is not None

    def invalidate(self) -> None:
        self._cache = None

    def train(self, mode: bool = True):
        self._cache = None
        return super().train(mode)

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        a_hat, b_hat = self.mixed()
        # Under autocast the matmuls cast for themselves: casting B̂ to LN's float32 output
        # first would add a copy there and back per site and step (and two in the backward).
        auto = torch.is_autocast_enabled(x.device.type)
        h = x @ (a_hat if auto else a_hat.to(x.dtype))
        if self.ln is not None:  # one fused kernel each way on a GPU (fused.py)
            h = fused.layer_norm(h, self.ln.weight, self.ln.bias, self.ln.eps)
        d = h @ (b_hat if auto else b_hat.to(h.dtype))
        if self.out_scale is not None:
            d = d * self.out_scale.to(d.dtype)
        return d if self.scale == 1.0 else self.scale * d

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.delta(x)


def reference_delta(layer: XPeftLinear, x: torch.Tensor) -> torch.Tensor:
    """The same site computed the paper's way: all N adapters on the activations, then weighted.

    Exists to test weight-space mixing against, and as the slow baseline in benchmarks.
    """
    w_a, w_b = layer.weights()
    per_a = torch.einsum("...i,nib->...nb", x, layer.bank_a.to(x.dtype))  # N projections of x
    h = torch.einsum("...nb,n->...b", per_a, w_a.to(x.dtype))
    if layer.ln is not None:
        h = layer.ln(h)
    per_b = torch.einsum("...b,nbo->...no", h, layer.bank_b.to(h.dtype))  # N up-projections
    return layer.scale * torch.einsum("...no,n->...o", per_b, w_b.to(h.dtype))
