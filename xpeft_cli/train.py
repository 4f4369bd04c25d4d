"""Fitting one profile: masks, bottleneck LN and head trained, PLM and bank frozen.

Masks get their own learning rate: with the paper's 1e-5 Adam barely moves the mask
logits and the masks stay uniform (design.md). The schedule decays linearly, as in the paper.
"""
from __future__ import annotations

import json
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from . import checkpoint as ckpt
from .bank import Bank
from .distributed import share, world
from .data import Examples, encode_labels, infer_task, label_key, label_names, split_holdout
from .config import FitConfig  # noqa: F401  (defined torch-free, re-exported)
from .errors import DataError, UsageError
from .masks import KINDS as MASK_KINDS
from .masks import MaskSpec
from .metrics import classification_metrics, regression_metrics
from .baselines import METHODS, AdapterProfile, BaselineModel
from .model import TASK_CLASSIFICATION, TASK_REGRESSION, EncoderClassifier, XPeftModel
from .plm import load_encoder, max_tokens
from .profile import Profile, apply_profile, profile_from_model, with_param_dtype


@dataclass
class FitResult:
    profile: Profile | AdapterProfile
    model: EncoderClassifier
    tokenizer: object
    history: list[dict] = field(default_factory=list)
    val_metrics: dict | None = None
    seconds: float = 0.0
    steps: int = 0


def pretokenize(tokenizer, ex: Examples, max_length: int) -> dict[str, list]:
    """Token ids of every example, once (truncated, not padded)."""
    enc = tokenizer(ex.texts, ex.pairs, truncation=True, max_length=max_length)
    return {k: enc[k] for k in ("input_ids", "token_type_ids", "attention_mask") if k in enc}


def collate(tokenizer, enc: dict[str, list], idx: list[int], device) -> dict:
    """Pad the chosen examples to the longest among them, as tensors on `device`."""
    batch = tokenizer.pad([{k: v[i] for k, v in enc.items()} for i in idx], return_tensors="pt")
    return {k: batch[k].to(device) for k in enc}


PRECISIONS = ("auto", "bf16", "fp32")


def uses_bf16(device: torch.device, precision: str = "auto") -> bool:
    if precision not in PRECISIONS:
        raise UsageError(f"--precision must be one of {', '.join(PRECISIONS)}")
    return precision == "bf16" or (precision == "auto" and device.type == "cuda")


# cuDNN's attention builds an execution plan for every new padded length it meets: ~14 ms of
# CPU each, which made a bf16 fit of variable-length batches 8x slower in a fresh process
# (measured on an H200, benchmarks/README.md). Flash / memory-efficient attention need no plans.
_ATTENTION = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


@contextmanager
def compute_context(device: torch.device, precision: str = "auto", cache_casts: bool = True):
    """How the frozen PLM runs: bf16 autocast on a GPU (unless fp32 is asked for), no cuDNN attention.

    `cache_casts=False` for CUDA graph capture, which autocast's cast cache must stay out of.
    """
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=uses_bf16(device, precision),
                        cache_enabled=cache_casts), sdpa_kernel(_ATTENTION):
        yield


@torch.no_grad()
def predict_outputs(model: EncoderClassifier, tokenizer, ex: Examples, batch_size: int, max_length: int,
                    device: torch.device, precision: str = "auto") -> torch.Tensor:
    """Raw head outputs (logits or regression values) for every example, in order, float32 on CPU."""
    model.eval()
    enc = pretokenize(tokenizer, ex, min(max_length, max_tokens(model.encoder)))
    outs = []
    for i in range(0, len(ex), batch_size):
        batch = collate(tokenizer, enc, list(range(i, min(i + batch_size, len(ex)))), device)
        with compute_context(device, precision):
            outs.append(model(**batch).float().cpu())
    return torch.cat(outs)


def score(model: EncoderClassifier, tokenizer, ex: Examples, targets: list, num_classes: int, batch_size: int,
          max_length: int, device, precision: str = "auto") -> tuple[dict, list]:
    out = predict_outputs(model, tokenizer, ex, batch_size, max_length, device, precision)
    if model.task == TASK_REGRESSION:
        preds = out.tolist()
        return regression_metrics(targets, preds), preds
    preds = out.argmax(-1).tolist()
    return classification_metrics(targets, preds, num_classes), preds


def task_and_labels(train: Examples, cfg: "FitConfig", shared=None) -> tuple[str, list[str] | None]:
    """(task, class names) of a fit: the shared head's (an mtl bank's) if given, else from cfg and data."""
    if shared is not None:  # an mtl bank: its head and label set are every profile's
        return shared.task, shared.labels
    task = infer_task(train.labels) if cfg.task == "auto" else cfg.task
    names = (cfg.labels or label_names(train.labels)) if task == TASK_CLASSIFICATION else None
    if task == TASK_CLASSIFICATION and len(names) < 2:
        raise DataError(f"{train.source}: training data has a single label ({names[0]!r}); need at least two")
    return task, names


_KNOBS = ("ln_init", "soft_warmup", "out_vector", "lr_out", "peer", "warmup", "clip_norm", "mask_clip")


def schedule(step: int, total: int, warmup: float = 0.0) -> float:
    """The LR factor at `step` of `total`: linear warm-up over the first `warmup` share of the steps,
    then linear decay to 0 (without warm-up: 1 - step/total, the paper's schedule)."""
    w = warmup * total
    if step < w:
        return (step + 1) / w
    return max(0.0, 1.0 - (step - w) / (total - w)) if total > w else 0.0


def _settings(cfg: FitConfig) -> dict:
    """The settings that define a fit's result, for its metadata and checkpoint: the design knobs only where
    they differ from their defaults, so that fits which do not use them keep the bytes they always had."""
    default = FitConfig()
    return {k: v for k, v in asdict(cfg).items()
            if k not in ("device", "cuda_graphs") and not (k in _KNOBS and v == getattr(default, k))}


def fit_profile(bank: Bank, train: Examples, name: str, cfg: FitConfig = FitConfig(),
                eval_data: Examples | None = None,
                on_step: Callable[[int, int, float], None] | None = None,
                log_path: str | Path | None = None, checkpoint_path: str | Path | None = None,
                checkpoint_every: int = 0, resume: bool = False) -> FitResult:
    """Fit one profile on `train` (a holdout of it validates, unless `eval_data` is given).

    With `checkpoint_path` and `checkpoint_every`, the state is saved every that many steps;
    `resume=True` continues from it and gives the same result as an uninterrupted fit.
    """
    if cfg.method not in METHODS and not (cfg.method == "peft" and cfg.peer):
        raise UsageError(f"--method must be one of {', '.join(METHODS)}")
    if cfg.param_dtype not in ("float16", "float32"):
        raise UsageError("--param-dtype must be float16 or float32")
    if not 0.0 <= cfg.soft_warmup <= 1.0:
        raise UsageError("soft_warmup must be between 0 and 1")
    if cfg.cuda_graphs and (cfg.soft_warmup or cfg.out_vector or cfg.ln_init != 1.0 or cfg.clip_norm or cfg.mask_clip):
        raise UsageError("--cuda-graphs does not yet capture soft_warmup, out_vector, ln_init, clip_norm or mask_clip")
    if not (0.0 <= cfg.warmup < 1.0 and 0.0 <= cfg.clip_norm < float("inf") and 0.0 <= cfg.mask_clip < float("inf")):
        raise UsageError("warmup must be in [0, 1), clip_norm and mask_clip finite numbers ≥ 0")
    if cfg.mask not in MASK_KINDS:
        raise UsageError(f"--mask must be one of {', '.join(MASK_KINDS)}")
    if resume and not checkpoint_path:
        raise UsageError("--resume needs a checkpoint path")
    if cfg.epochs < 1 or cfg.batch_size < 1:
        raise UsageError("--epochs and --batch-size must be at least 1")
    if train.labels is None:
        raise DataError(f"{train.source}: training data needs labels")
    shared = bank.head if (bank.head is not None and cfg.method == "x-peft" and cfg.head == "auto") else None
    task, names = task_and_labels(train, cfg, shared)
    k = min(cfg.k, bank.n)
    if cfg.mask == "hard" and k < 1:
        raise UsageError("--k must be at least 1")

    if eval_data is None and cfg.val_fraction > 0:
        tr_idx, va_idx = split_holdout(len(train), cfg.val_fraction, cfg.seed)
        train, eval_data = train.subset(tr_idx), (train.subset(va_idx) if va_idx else None)
    y_train = encode_labels(train, task, names)
    y_val = encode_labels(eval_data, task, names) if eval_data is not None else None

    w = world(cfg.device)  # one process, or one of several sharing each batch (distributed.py)
    device = w.device
    if cfg.cuda_graphs and device.type != "cuda":
        raise UsageError("--cuda-graphs needs a CUDA device")
    if cfg.cuda_graphs and (cfg.gradient_checkpointing or w.size > 1):
        raise UsageError("--cuda-graphs runs single-process fits without --gradient-checkpointing")
    torch.manual_seed(cfg.seed)  # dropout inside the frozen PLM
    encoder, tokenizer = load_encoder(bank.plm)
    gumbel = torch.Generator(device=device).manual_seed(cfg.seed + 1)
    n_out = 1 if task == TASK_REGRESSION else len(names)
    if cfg.method == "x-peft":
        spec = MaskSpec(kind=cfg.mask, k=k, nu=cfg.nu, tau=cfg.tau, generator=gumbel)
        model = XPeftModel(encoder, bank, n_out, task=task, spec=spec, seed=cfg.seed, ln_init=cfg.ln_init,
                           out_vector=cfg.out_vector).to(device)
        if device.type == "cuda" and uses_bf16(device, cfg.precision):
            model.cast_bank(torch.bfloat16)  # autocast would otherwise re-cast the whole bank every step
        groups = [{"params": model.mask_parameters(), "lr": cfg.lr_masks},
                  {"params": model.ln_parameters(), "lr": cfg.lr_ln},
                  {"params": model.head_parameters(), "lr": cfg.lr_head},
                  {"params": model.out_parameters(), "lr": cfg.lr_out}]
        if shared is not None:
            model.use_shared_head(shared)
            groups[2]["params"] = []
    elif cfg.method == "peft":
        from .peers import PeerModel  # peft is imported only for peers

        model = PeerModel(encoder, cfg.peer, [s.name for s in bank.sites], n_out, task=task, seed=cfg.seed).to(device)
        groups = model.parameter_groups(cfg.lr_adapter, cfg.lr_head)
    else:
        model = BaselineModel(encoder, cfg.method, [s.name for s in bank.sites], bank.rank, n_out, task=task,
                              seed=cfg.seed).to(device)
        groups = [{"params": model.adapter_parameters(), "lr": cfg.lr_adapter},
                  {"params": model.head_parameters(), "lr": cfg.lr_head}]
    if cfg.gradient_checkpointing:
        try:
            model.gradient_checkpointing()
        except ValueError as exc:
            raise UsageError(f"--gradient-checkpointing: {exc}") from None
    groups = [g for g in groups if g["params"]]
    base_lrs = [g["lr"] for g in groups]
    graphed = None
    if cfg.cuda_graphs:
        from .graphs import GraphedTrainStep  # graphs.py builds on this module

        # learning rates in device tensors, which the captured AdamW reads at every replay
        opt = torch.optim.AdamW([g | {"lr": torch.tensor(g["lr"], device=device)} for g in groups],
                                weight_decay=0.0, capturable=True)
        graphed = GraphedTrainStep(model, opt, task == TASK_REGRESSION, cfg.batch_size,
                                   min(cfg.max_length, max_tokens(encoder)), device, cfg.precision,
                                   pad_id=tokenizer.pad_token_id or 0,
                                   generators=[gumbel] if cfg.method == "x-peft" else [])
    else:
        opt = torch.optim.AdamW(groups, weight_decay=0.0)
    trainable = [p for g in opt.param_groups for p in g["params"]]
    clipped = list(model.mask_parameters()) if cfg.mask_clip and cfg.method == "x-peft" else []
    n_batches = (len(train) + cfg.batch_size - 1) // cfg.batch_size
    total = n_batches * cfg.epochs
    loss_fn = torch.nn.MSELoss() if task == TASK_REGRESSION else torch.nn.CrossEntropyLoss()
    order_gen = torch.Generator().manual_seed(cfg.seed)
    targets = torch.tensor(y_train, dtype=torch.float32 if task == TASK_REGRESSION else torch.long)

    ckpt_config = {k: v for k, v in _settings(cfg).items() if k not in ("labels", "head", "gradient_checkpointing")} \
        | {"name": name, "bank": bank.bank_hash}
    fingerprint = ckpt.data_fingerprint(train.texts, train.pairs, y_train) if checkpoint_path else ""
    pos, history = ckpt.Position(epoch=1, batch=0, step=0), []
    identity = {"name": name, "n": bank.n, "k": k, "mask": cfg.mask, "task": task, "labels": names,
                "bank_hash": bank.bank_hash, "method": cfg.method}
    enc_train = pretokenize(tokenizer, train, min(cfg.max_length, max_tokens(encoder)))
    if resume:
        pos, order_state, history = ckpt.load(Path(checkpoint_path), model, opt, gumbel, ckpt_config, fingerprint)
        order_gen.set_state(order_state)
    log = open(log_path, "w", encoding="utf-8") if (log_path and w.is_main) else None
    if log:
        log.writelines(json.dumps(rec) + "\n" for rec in history)  # a resumed log restarts from the checkpoint
    val_metrics = None
    step, t0 = pos.step, time.perf_counter()
    try:
        for epoch in range(pos.epoch, cfg.epochs + 1):
            model.train()
            epoch_order = order_gen.get_state()  # a resumed fit re-draws this epoch's order from here
            perm = torch.randperm(len(train), generator=order_gen).tolist()
            for b in range(pos.batch if epoch == pos.epoch else 0, n_batches):
                idx = perm[b * cfg.batch_size:(b + 1) * cfg.batch_size]
                if w.size > 1:
                    idx, weight = share(idx, w)
                batch = collate(tokenizer, enc_train, idx, device)
                if cfg.soft_warmup and cfg.method == "x-peft" and cfg.mask == "hard":  # soft → hard
                    model.spec.alpha = min(1.0, step / (cfg.soft_warmup * total))
                for g, base in zip(opt.param_groups, base_lrs):  # linear decay, stateless so resume is exact
                    lr = base * schedule(step, total, cfg.warmup)
                    if graphed is None:
                        g["lr"] = lr
                    else:
                        g["lr"].fill_(lr)
                if graphed is not None:
                    loss = graphed(batch, targets[idx])
                else:
                    with compute_context(device, cfg.precision):
                        out = model(**batch)
                    loss = loss_fn(out.float(), targets[idx].to(device))
                    if w.size > 1:
                        loss = loss * weight  # the shares' weighted means sum to the whole batch's mean
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    if w.size > 1:
                        loss = w.sum_grads_(trainable, loss.detach())
                    if cfg.clip_norm:
                        torch.nn.utils.clip_grad_norm_(trainable, cfg.clip_norm)
                    opt.step()
                    if clipped:
                        with torch.no_grad():
                            torch._foreach_clamp_min_(clipped, -cfg.mask_clip)
                            torch._foreach_clamp_max_(clipped, cfg.mask_clip)
                step += 1
                loss_value = loss.item()
                rec = {"epoch": epoch, "step": step, "loss": round(loss_value, 6)}
                history.append(rec)
                if log:
                    log.write(json.dumps(rec) + "\n")
                if on_step:
                    on_step(step, total, loss_value)
                if checkpoint_path and checkpoint_every and step % checkpoint_every == 0 and w.is_main:
                    if log:
                        log.flush()
                    ckpt.save(Path(checkpoint_path), model, opt, ckpt.Position(epoch, b + 1, step), epoch_order,
                              gumbel, ckpt_config, fingerprint, history, identity)
            if eval_data is not None and w.is_main:  # the other ranks hold the same parameters
                val_metrics, _ = score(model, tokenizer, eval_data, y_val, n_out, cfg.batch_size * 2,
                                       cfg.max_length, device, cfg.precision)
                rec = {"epoch": epoch, "step": step, "val": val_metrics}
                history.append(rec)
                if log:
                    log.write(json.dumps(rec) + "\n")
                    log.flush()
    finally:
        if log:
            log.close()
    seconds = time.perf_counter() - t0
    counts = Counter(label_key(v) for v in train.labels)
    meta = {"fit": {k: v for k, v in _settings(cfg).items() if k != "labels"} | {"k": k, "task": task,
            "train_rows": len(train), "steps": step, "label_counts": dict(counts.most_common())}}
    model.eval()
    if cfg.method == "x-peft":
        profile = with_param_dtype(profile_from_model(model, name, bank.n, names, meta, with_head=shared is None),
                                   cfg.param_dtype)
        apply_profile(model, profile)  # the returned model is exactly what the file will hold
    else:
        profile = AdapterProfile(name=name, method=cfg.method, task=task, labels=names, rank=bank.rank,
                                 sites=[s.name for s in bank.sites], bank_hash=bank.bank_hash,
                                 tensors=model.tensors(), meta=meta)
    return FitResult(profile, model, tokenizer, history, val_metrics, seconds, step)
