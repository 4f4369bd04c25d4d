"""The paper's baselines as sites: single_adapter (one plain LoRA per site) and head_only (no site).

Used by the benchmarks to compare against X-PEFT on the same sites, rank and head.
"""
from __future__ import annotations

import math

import torch
from torch import nn


class LoRALinear(nn.Module):
    """y = W x + scale · (x A) B, A kaiming-uniform and B zero at start (as in LoRA and peft)."""

    def __init__(self, base: nn.Linear, rank: int, scale: float = 1.0):
        super().__init__()
        self.base = base
        self.lora_a = nn.Parameter(torch.empty(base.in_features, rank))
        self.lora_b = nn.Parameter(torch.zeros(rank, base.out_features))
        nn.init.kaiming_uniform_(self.lora_a.T, a=math.sqrt(5))
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.scale * ((x @ self.lora_a.to(x.dtype)) @ self.lora_b.to(x.dtype))


def attach_lora(encoder: nn.Module, site_names: list[str], rank: int) -> list[LoRALinear]:
    for p in encoder.parameters():
        p.requires_grad_(False)
    layers = []
    for name in site_names:
        parent_name, _, child = name.rpartition(".")
        parent = encoder.get_submodule(parent_name) if parent_name else encoder
        layer = LoRALinear(getattr(parent, child), rank)
        setattr(parent, child, layer)
        layers.append(layer)
    return layers
