"""A profile materialised as one plain LoRA per site (Â, B̂), for size comparison and export.

A hard profile at inference is exactly one LoRA per site: Â = mean of the k selected A's.
"""

from __future__ import annotations

import torch

from .bank import Bank
from .profile import Profile, inference_weights


def mixing_weights(profile: Profile) -> tuple[torch.Tensor, torch.Tensor]:
    return inference_weights(profile)


def materialize(bank: Bank, profile: Profile) -> dict[str, torch.Tensor]:
    """peft-style tensor names: lora_A.weight is (b, d_in), lora_B.weight is (d_out, b)."""
    wa, wb = mixing_weights(profile)
    out = {}
    for l, site in enumerate(bank.sites):
        a_hat = torch.einsum("n,nib->ib", wa[l], bank.A[l])
        b_hat = torch.einsum("n,nbo->bo", wb[l], bank.B[l])
        out[f"base_model.model.{site.name}.lora_A.weight"] = a_hat.t().contiguous()
        out[f"base_model.model.{site.name}.lora_B.weight"] = b_hat.t().contiguous()
    return out
