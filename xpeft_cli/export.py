"""Export a profile as a standard peft LoRA adapter (adapter_config.json + adapter_model.safetensors).

A site computes W x + s·LN(x Â) B̂. Without the bottleneck LayerNorm that is W x + s·x Â B̂ — exactly
a LoRA of rank b with lora_alpha / r = s — so profiles of a bank made with `--ln none` export
exactly. A normalising LN is not linear in x, so no LoRA equals it, and export refuses.
The head (not part of the base model) is written beside it as head.safetensors + head.json.
"""

from __future__ import annotations

import json
from pathlib import Path

from .atomic import atomic_write_text, atomic_write_with
from .bank import Bank
from .errors import UsageError
from .lora import materialize
from .profile import Profile


def export_peft(bank: Bank, profile: Profile, out_dir: str | Path) -> dict:
    from safetensors.torch import save_file

    if bank.config.ln:
        raise UsageError(
            "this bank's sites normalise the bottleneck (LN(x Â) B̂), which is not linear in x, so no "
            "LoRA equals the profile; fit it on a bank made with 'xpeft bank create --ln none' to export"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = materialize(bank, profile)
    config = {
        "peft_type": "LORA",
        "task_type": None,
        "r": bank.rank,
        "lora_alpha": bank.rank * bank.config.scale,
        "target_modules": [s.name for s in bank.sites],
        "lora_dropout": 0.0,
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": False,
        "init_lora_weights": True,
        "inference_mode": True,
        "modules_to_save": None,
        "base_model_name_or_path": str(bank.plm.path),
        "revision": None,
    }
    atomic_write_with(
        out / "adapter_model.safetensors", lambda tmp: save_file(tensors, str(tmp), metadata={"format": "pt"})
    )
    atomic_write_text(out / "adapter_config.json", json.dumps(config, indent=2) + "\n")
    files = ["adapter_config.json", "adapter_model.safetensors"]
    if profile.head_weight is not None:
        import torch

        head = {"weight": torch.from_numpy(profile.head_weight), "bias": torch.from_numpy(profile.head_bias)}
        atomic_write_with(out / "head.safetensors", lambda tmp: save_file(head, str(tmp)))
        atomic_write_text(
            out / "head.json",
            json.dumps(
                {
                    "task": profile.task,
                    "labels": profile.labels,
                    "pooling": bank.config.pooling,
                    "profile": profile.name,
                },
                indent=2,
            )
            + "\n",
        )
        files += ["head.safetensors", "head.json"]
    return {
        "output": str(out),
        "files": files,
        "rank": bank.rank,
        "sites": len(bank.sites),
        "bytes": sum((out / f).stat().st_size for f in files),
    }
