"""The paper's baselines: single_adapter (one plain LoRA per site) and head_only (no site).

They train on the same sites, rank, head and data path as X-PEFT, and are saved as a
safetensors file (`xpeft-adapter/1`): peft-style LoRA tensor names plus the head, with the
profile's identity in the safetensors metadata.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from . import safetensors_file
from .atomic import atomic_write_with
from .config import METHODS  # noqa: F401
from .errors import IntegrityError
from .model import TASK_CLASSIFICATION, EncoderClassifier, _set_submodule

ADAPTER_FORMAT = "xpeft-adapter/1"


class LoRALinear(nn.Module):
    """y = W x + scale · (x A) B, A kaiming-uniform and B zero at start (as in LoRA and peft)."""

    def __init__(self, base: nn.Linear, rank: int, scale: float = 1.0, generator: torch.Generator | None = None):
        super().__init__()
        self.base = base
        bound = 1.0 / math.sqrt(base.in_features)  # kaiming_uniform_(a=sqrt(5)) on a (rank, d_in) weight
        self.lora_a = nn.Parameter((torch.rand(base.in_features, rank, generator=generator) * 2 - 1) * bound)
        self.lora_b = nn.Parameter(torch.zeros(rank, base.out_features))
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.scale * ((x @ self.lora_a.to(x.dtype)) @ self.lora_b.to(x.dtype))


def attach_lora(encoder: nn.Module, site_names: list[str], rank: int, seed: int = 0) -> list[LoRALinear]:
    g = torch.Generator().manual_seed(seed)
    layers = []
    for name in site_names:
        base = encoder.get_submodule(name)
        if not isinstance(base, nn.Linear):
            raise ValueError(f"{name} is not an nn.Linear in this model")
        layer = LoRALinear(base, rank, generator=g)
        _set_submodule(encoder, name, layer)
        layers.append(layer)
    return layers


def adapter_tensors(
    site_names: list[str],
    a: list[torch.Tensor],
    b: list[torch.Tensor],
    head_weight: torch.Tensor,
    head_bias: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """A baseline's saved tensors: peft's names and layout (lora_A (b, d_in), lora_B (d_out, b)) plus the head.

    a[i] is (d_in, b) and b[i] is (b, d_out), as LoRALinear holds them; no sites for head-only.
    """
    out = {}
    for name, ta, tb in zip(site_names, a, b):
        out[f"base_model.model.{name}.lora_A.weight"] = ta.detach().float().cpu().t().contiguous()
        out[f"base_model.model.{name}.lora_B.weight"] = tb.detach().float().cpu().t().contiguous()
    out["head.weight"] = head_weight.detach().float().cpu().contiguous()
    out["head.bias"] = head_bias.detach().float().cpu().contiguous()
    return out


class BaselineModel(EncoderClassifier):
    """head_only (no sites) or single_adapter (LoRA on the bank's sites, rank b)."""

    def __init__(
        self,
        encoder: nn.Module,
        method: str,
        site_names: list[str],
        rank: int,
        num_outputs: int,
        task: str = TASK_CLASSIFICATION,
        seed: int = 0,
    ):
        super().__init__(encoder, num_outputs, task, seed)
        self.method, self.site_names, self.rank = method, list(site_names), rank
        self.sites = attach_lora(encoder, site_names, rank, seed) if method == "single-adapter" else []

    def adapter_parameters(self) -> list[nn.Parameter]:
        return [p for s in self.sites for p in (s.lora_a, s.lora_b)]

    def tensors(self) -> dict[str, torch.Tensor]:
        return adapter_tensors(
            self.site_names,
            [s.lora_a for s in self.sites],
            [s.lora_b for s in self.sites],
            self.head.weight,
            self.head.bias,
        )

    def load_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for name, s in zip(self.site_names, self.sites):
                s.lora_a.copy_(tensors[f"base_model.model.{name}.lora_A.weight"].t())
                s.lora_b.copy_(tensors[f"base_model.model.{name}.lora_B.weight"].t())
            self.head.weight.copy_(tensors["head.weight"])
            self.head.bias.copy_(tensors["head.bias"])


@dataclass
class AdapterProfile:
    """A fitted baseline: what `xpeft fit --method single-adapter|head-only` writes."""

    name: str
    method: str
    task: str
    labels: list[str] | None
    rank: int
    sites: list[str]
    bank_hash: str  # the bank whose PLM and sites it was trained on
    tensors: dict[str, torch.Tensor]
    meta: dict = field(default_factory=dict)

    @property
    def num_outputs(self) -> int:
        return int(self.tensors["head.weight"].shape[0])

    def trainable_parameters(self) -> int:
        return sum(t.numel() for t in self.tensors.values())

    @classmethod
    def fitted(cls, bank, name: str, method: str, task: str, labels, tensors: dict, meta: dict) -> "AdapterProfile":
        """A baseline fitted on `bank`'s sites (its rank, site names and hash recorded with it)."""
        return cls(
            name=name,
            method=method,
            task=task,
            labels=labels,
            rank=bank.rank,
            sites=[s.name for s in bank.sites],
            bank_hash=bank.bank_hash,
            tensors=tensors,
            meta=meta,
        )


def write_adapter(p: AdapterProfile, path: str | Path) -> int:
    from safetensors.torch import save_file

    meta = {
        "format": ADAPTER_FORMAT,
        "name": p.name,
        "method": p.method,
        "task": p.task,
        "labels": json.dumps(p.labels),
        "rank": str(p.rank),
        "sites": json.dumps(p.sites),
        "bank_hash": p.bank_hash,
        "meta": json.dumps(p.meta, sort_keys=True),
    }
    atomic_write_with(path, lambda tmp: save_file(p.tensors, str(tmp), metadata=meta))
    return Path(path).stat().st_size


def read_adapter(path: str | Path) -> AdapterProfile:
    meta, tensors = safetensors_file.read(path)
    if meta.get("format") != ADAPTER_FORMAT:
        raise IntegrityError(f"{path}: not an xpeft adapter profile (no '{ADAPTER_FORMAT}' metadata)")
    try:
        return AdapterProfile(
            name=meta["name"],
            method=meta["method"],
            task=meta["task"],
            labels=json.loads(meta["labels"]),
            rank=int(meta["rank"]),
            sites=json.loads(meta["sites"]),
            bank_hash=meta["bank_hash"],
            tensors=tensors,
            meta=json.loads(meta.get("meta", "{}")),
        )
    except (KeyError, ValueError) as exc:
        raise IntegrityError(f"{path}: malformed adapter metadata ({exc})") from None
