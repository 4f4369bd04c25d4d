"""Trained banks: adapters learned from profiles (sa, mtl), or imported from peft LoRA folders.

sa:  one LoRA (and its own head) per profile, trained in one batched run (multifit.py); the
     P adapters become the bank. The same as P separate single-adapter fits with one seed.
mtl: the P LoRAs trained jointly with one shared head; the bank keeps the head, so profiles
     fitted on it reuse it and store only masks (and LN).
peft: each folder's lora_A/lora_B (scaled by lora_alpha / r) is one adapter of the bank.

Trained adapters already carry their scale, so trained banks default to sites without the
bottleneck LN (x Â B̂): a hard k=1 profile on such a bank *is* one of the source adapters.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import torch

from . import safetensors_file
from .bank import MAX_ADAPTERS, Bank, SharedHead, SiteConfig, find_sites
from .data import Examples
from .errors import DataError, IntegrityError, UsageError
from .multifit import fit_profiles
from .plm import PLMRef, default_targets
from .train import FitConfig

BUILD_METHODS = ("sa", "mtl")


def pick_profiles(data: Examples, count: int) -> list[str]:
    """The `count` profiles with the most rows (ties: by name): documented, reproducible."""
    sizes = Counter(data.profiles)
    if count < 1:
        raise UsageError("--profiles must be at least 1")
    if count > len(sizes):
        raise UsageError(f"--profiles {count}: the data has only {len(sizes)} profiles")
    return [name for name, _ in sorted(sizes.items(), key=lambda kv: (-kv[1], kv[0]))[:count]]


def from_profiles(
    plm: PLMRef,
    encoder: torch.nn.Module,
    data: Examples,
    count: int,
    method: str,
    cfg: FitConfig,
    rank: int | None = None,
    targets: str | None = None,
    config: SiteConfig | None = None,
    on_step=None,
    log_path=None,
) -> tuple[Bank, dict]:
    """Train a bank of `count` adapters from the largest profiles of `data`. Returns (bank, report)."""
    if method not in BUILD_METHODS:
        raise UsageError(f"--method must be one of {', '.join(BUILD_METHODS)}")
    if data.profiles is None:
        raise UsageError("a bank from profiles needs a profile column (--profile-column)")
    if count > MAX_ADAPTERS:
        raise UsageError(f"--profiles must be at most {MAX_ADAPTERS}")
    names = pick_profiles(data, count)
    chosen = set(names)
    subset = data.subset([i for i, p in enumerate(data.profiles) if p in chosen])
    model_type = encoder.config.model_type
    sites = find_sites(encoder, targets or default_targets(model_type))
    rank = rank or max(1, int(encoder.config.hidden_size) // 16)
    # A bank with no adapters yet: what the trainer needs to know about sites, rank and PLM.
    skeleton = Bank(
        plm=plm,
        model_type=model_type,
        sites=sites,
        n=count,
        rank=rank,
        A=[],
        B=[],
        kind="trained",
        config=config or SiteConfig(ln=False),
    )
    cfg = FitConfig(**{**cfg.__dict__, "method": "single-adapter"})
    res = fit_profiles(
        skeleton, subset, cfg, shared_head="train" if method == "mtl" else "own", on_step=on_step, log_path=log_path
    )
    # Adapter i of the bank is profile names[i]'s LoRA, read from its (peft-layout) tensors.
    tensors = [res.profiles[n].tensors for n in names]
    A = [torch.stack([t[f"base_model.model.{s.name}.lora_A.weight"].t() for t in tensors]) for s in sites]
    B = [torch.stack([t[f"base_model.model.{s.name}.lora_B.weight"].t() for t in tensors]) for s in sites]
    head = None
    if method == "mtl":  # every profile holds the one shared head
        first = res.profiles[names[0]]
        head = SharedHead(
            task=first.task, labels=first.labels, weight=first.tensors["head.weight"], bias=first.tensors["head.bias"]
        )
    accs = {n: m.get("accuracy") for n, m in res.val_metrics.items()}
    origin = {
        "method": method,
        "profiles": names,
        "data": data.source,
        "rows": len(subset),
        "epochs": cfg.epochs,
        "seed": cfg.seed,
        "steps": res.steps,
    }
    bank = Bank(
        plm=plm,
        model_type=model_type,
        sites=sites,
        n=count,
        rank=rank,
        A=A,
        B=B,
        kind="trained",
        config=skeleton.config,
        head=head,
        origin=origin,
    )
    bank.bank_hash = bank.compute_hash()
    return bank, {
        "profiles": names,
        "rows": len(subset),
        "steps": res.steps,
        "seconds": round(res.seconds, 2),
        "val_accuracy": accs,
    }


def from_peft(plm: PLMRef, encoder: torch.nn.Module, folders: list[Path], config: SiteConfig | None = None) -> Bank:
    """A bank whose adapter i is the LoRA in folders[i] (adapter_config.json + adapter_model.safetensors)."""
    if not folders:
        raise UsageError("--from-peft needs at least one adapter folder")
    if len(folders) > MAX_ADAPTERS:
        raise UsageError(f"a bank holds at most {MAX_ADAPTERS} adapters")
    modules = dict(encoder.named_modules())
    names, A, B, rank = None, None, None, None
    for folder in folders:
        cfg_path, st_path = Path(folder) / "adapter_config.json", Path(folder) / "adapter_model.safetensors"
        if not cfg_path.is_file() or not st_path.is_file():
            raise DataError(
                f"{folder}: not a peft adapter folder (adapter_config.json and adapter_model.safetensors expected)"
            )
        try:
            conf = json.loads(cfg_path.read_text(encoding="utf-8"))
        except RecursionError:
            raise DataError(f"{cfg_path}: JSON nested too deeply") from None
        except (ValueError, UnicodeDecodeError) as exc:
            raise DataError(f"{cfg_path}: not valid JSON ({exc})") from None
        if not isinstance(conf, dict) or conf.get("peft_type") != "LORA":
            raise DataError(
                f"{cfg_path}: peft_type is {conf.get('peft_type') if isinstance(conf, dict) else None!r}, "
                "only LORA adapters can join a bank"
            )
        r, alpha = conf.get("r", 0), conf.get("lora_alpha", conf.get("r", 0))
        if not (isinstance(r, int) and not isinstance(r, bool) and 1 <= r <= 65535):
            raise DataError(f"{cfg_path}: r must be a whole number from 1 to 65535, got {r!r}")
        if not (isinstance(alpha, (int, float)) and not isinstance(alpha, bool) and math.isfinite(alpha)):
            raise DataError(f"{cfg_path}: lora_alpha must be a finite number, got {alpha!r}")
        if conf.get("use_dora") or conf.get("use_rslora"):
            raise DataError(f"{cfg_path}: DoRA / rsLoRA adapters are not plain LoRAs")
        scale = float(alpha) / r
        _, tensors = safetensors_file.read(st_path)
        found = {}
        for key, t in tensors.items():
            if key.endswith(".lora_A.weight") or key.endswith(".lora_B.weight"):
                module = key.rsplit(".lora_", 1)[0].removeprefix("base_model.model.")
                found.setdefault(module, {})[key.rsplit(".", 2)[-2]] = t
        if not found:
            raise DataError(f"{st_path}: no lora_A / lora_B tensors")
        mods = sorted(found, key=lambda m: list(modules).index(m) if m in modules else -1)
        for m in mods:
            if m not in modules or not isinstance(modules[m], torch.nn.Linear):
                raise IntegrityError(
                    f"{folder}: adapts {m!r}, which is not an nn.Linear of the bank's model "
                    f"({plm.ref}); was it trained on another base model?"
                )
            lin, pair = modules[m], found[m]
            if (
                set(pair) != {"lora_A", "lora_B"}
                or tuple(pair["lora_A"].shape) != (r, lin.in_features)
                or tuple(pair["lora_B"].shape) != (lin.out_features, r)
            ):
                raise IntegrityError(
                    f"{folder}: {m}: LoRA shapes do not fit the model's "
                    f"{lin.in_features}→{lin.out_features} Linear at r={r}"
                )
        if names is None:
            names, rank = mods, r
            A, B = [[] for _ in mods], [[] for _ in mods]
        elif mods != names or r != rank:
            raise IntegrityError(
                f"{folder}: adapts other modules or another rank than {folders[0]} "
                "(every adapter of a bank must have the same sites and r)"
            )
        for l, m in enumerate(mods):
            A[l].append(found[m]["lora_A"].float().t())  # (d_in, r)
            B[l].append(found[m]["lora_B"].float().t() * scale)  # (r, d_out), alpha / r folded in
    sites = find_sites(encoder, ",".join(names))
    sites = [s for s in sites if s.name in names]
    bank = Bank(
        plm=plm,
        model_type=encoder.config.model_type,
        sites=sites,
        n=len(folders),
        rank=rank,
        A=[torch.stack(a) for a in A],
        B=[torch.stack(b) for b in B],
        kind="trained",
        config=config or SiteConfig(ln=False),
        origin={"method": "peft", "adapters": [str(f) for f in folders]},
    )
    bank.bank_hash = bank.compute_hash()
    return bank
