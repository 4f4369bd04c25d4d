"""Fitting many profiles in one run: one batched training loop, one step per profile per step.

Each step takes, for every profile that still has work, the batch a lone fit of that profile
would take at the same step (its own seeded order, epochs and linear schedule) and runs them
all through one RoutedModel. The loss is the sum of the per-profile mean losses, so each
profile's gradient is exactly its lone-fit gradient; its parameters are its own tensors and
its learning rates its own param groups. The result per profile is that of `fit` alone with
the same seed, up to float noise — when the PLM has no dropout (dropout draws depend on the
batch's shape; a lone fit and a joint one agree statistically, not bit for bit).

With several processes (distributed.py) each trains its share of the profiles, and a shared
head that is trained (mtl) has its gradients summed over them every step; the results are
gathered, so every profile's result is the one a single process gives.

The same loop trains a bank's adapters (`bank create --from-profiles`): one LoRA per profile
with its own head (sa) or with one shared head (mtl).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from .bank import Bank
from .baselines import AdapterProfile, adapter_tensors
from .batches import collate, compute_context, pretokenize, uses_bf16
from .config import FitConfig
from .data import Examples, encode_labels, split_holdout
from .distributed import deal, world
from .errors import DataError, UsageError
from .loop import LossLog, Update, fit_metadata, make_optimizer, set_learning_rates
from .masks import MaskSpec
from .metrics import classification_metrics, pooled_collapse, regression_metrics
from .model import TASK_REGRESSION
from .names import profile_filename
from .plm import load_encoder, max_tokens
from .profile import Profile, stored_masks, with_param_dtype
from .routing import AdapterTable, HeadTable, MaskTable, RoutedModel
from .train import task_and_labels


@dataclass
class MultiFitResult:
    names: list[str]
    profiles: dict[str, Profile | AdapterProfile]
    val_metrics: dict[str, dict]
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    steps: int = 0
    model: RoutedModel | None = None  # this process's profiles (all of them when it runs alone)
    tokenizer: object = None

    @property
    def collapse(self) -> dict | None:
        """The holdouts against each profile's constant answer (metrics.pooled_collapse): how many
        profiles learned nothing, and a one-line warning when all of them together did not."""
        return pooled_collapse(self.val_metrics)


@dataclass
class _Plan:
    """One profile's part of the run: its rows, targets, and the lone-fit order it follows."""

    name: str
    rows: list[int]  # indices into the tokenised training rows
    targets: torch.Tensor
    val_rows: list[int]
    val_targets: list
    batches: int
    total: int
    order: torch.Generator
    perm: list[int] | None = None


def fit_profiles(
    bank: Bank,
    train: Examples,
    cfg: FitConfig = FitConfig(),
    *,
    shared_head: str = "auto",
    max_batch_rows: int = 2048,
    on_step: Callable[[int, int, float], None] | None = None,
    log_path: str | Path | None = None,
) -> MultiFitResult:
    """Fit every profile of `train` (its `profiles` column) in one run.

    shared_head: "auto" uses the bank's shared head when it carries one (profiles then hold
    masks and LN only), "own" trains a head per profile, "train" trains one head shared by all
    (the mtl bank builder).
    """
    _check(train, cfg)
    groups = train.by_profile()  # checks every name (names.py); files use profile_filename
    use_bank_head = shared_head == "auto" and bank.head is not None and cfg.method == "x-peft"
    task, names = task_and_labels(train, cfg, bank.head if use_bank_head else None)  # from all rows, on every rank
    all_names = list(groups)
    w = world(cfg.device)
    if w.size > 1:  # this rank's profiles; the rest of the run only sees their rows
        mine = deal({n: len(rows) for n, rows in groups.items()}, w.size)[w.rank]
        train = train.subset([r for n in mine for r in groups[n]])
        groups = train.by_profile()
    k = min(cfg.k, bank.n)
    torch.manual_seed(cfg.seed)
    encoder, tokenizer = load_encoder(bank.plm)
    enc = pretokenize(tokenizer, train, min(cfg.max_length, max_tokens(encoder)))
    plans = _plans(groups, encode_labels(train, task, names), task, cfg)
    n_out = 1 if task == TASK_REGRESSION else len(names)
    shared = shared_head == "train" or use_bank_head
    model = _routed_model(bank, encoder, cfg, task, n_out, len(plans), k, shared, use_bank_head, w.device)
    opt, synced, steps = _optimizer(model, plans, cfg, shared_head == "train", w)
    clamped = [p for i in range(len(plans)) for p in model.profile_groups(i).get("masks", [])] if cfg.mask_clip else []
    update = Update(opt, w, synced=synced, clamped=clamped, mask_clip=cfg.mask_clip)
    t0 = time.perf_counter()
    with LossLog(log_path, w.size == 1, on_step) as log:
        raw = _train(model, tokenizer, enc, plans, opt, update, steps, cfg, task, w.device, max_batch_rows, log)
    seconds, history = time.perf_counter() - t0, log.history
    model.eval()
    val = _validate(model, tokenizer, enc, plans, task, n_out, cfg, w.device)
    labels = train.labels or []
    profiles = {}
    for i, p in enumerate(plans):
        meta = fit_metadata(cfg, k, task, [labels[r] for r in p.rows], p.total, one_run_of=len(all_names))
        profiles[p.name] = _extract(model, i, p.name, cfg, bank, task, names, k, shared, meta)
    if w.size > 1:
        profiles, val, history, seconds, steps = _gather(w, all_names, profiles, val, raw, seconds, steps)
        if log_path and w.is_main:
            with open(log_path, "w", encoding="utf-8") as f:
                f.writelines(json.dumps(rec) + "\n" for rec in history)
    return MultiFitResult(all_names, profiles, val, history, seconds, steps, model, tokenizer)


def _check(train: Examples, cfg: FitConfig) -> None:
    cfg.validate()
    if train.profiles is None:
        raise UsageError("fitting many profiles needs a profile column (--profile-column)")
    if train.labels is None:
        raise DataError(f"{train.source}: training data needs labels")
    if cfg.soft_warmup or cfg.out_vector or cfg.ln_init != 1.0 or cfg.method == "peft" or cfg.clip_norm:
        # clipping the global norm of all profiles' gradients would couple profiles that a lone fit keeps apart
        raise UsageError(
            "fits of many profiles in one run do not yet take soft_warmup, out_vector, ln_init, clip_norm or peers"
        )


def _plans(groups: dict[str, list[int]], y_all: list, task: str, cfg: FitConfig) -> list[_Plan]:
    """Each profile's rows split into training and holdout as its lone fit splits them, with its own
    seeded data order and schedule length."""
    ttype = torch.float32 if task == TASK_REGRESSION else torch.long
    plans = []
    for name, rows in groups.items():
        tr, va = (
            split_holdout(len(rows), cfg.val_fraction, cfg.seed)
            if cfg.val_fraction > 0
            else (list(range(len(rows))), [])
        )
        tr_rows, va_rows = [rows[i] for i in tr], [rows[i] for i in va]
        nb = (len(tr_rows) + cfg.batch_size - 1) // cfg.batch_size
        plans.append(
            _Plan(
                name,
                tr_rows,
                torch.tensor([y_all[i] for i in tr_rows], dtype=ttype),
                va_rows,
                [y_all[i] for i in va_rows],
                nb,
                nb * cfg.epochs,
                torch.Generator().manual_seed(cfg.seed),
            )
        )
    return plans


def _routed_model(
    bank: Bank,
    encoder,
    cfg: FitConfig,
    task: str,
    n_out: int,
    count: int,
    k: int,
    shared: bool,
    use_bank_head: bool,
    device: torch.device,
) -> RoutedModel:
    """The PLM with a table of `count` profiles of `cfg.method` at every site, and their heads."""
    hidden = int(getattr(encoder.config, "hidden_size", getattr(encoder.config, "dim", 0)))
    heads = HeadTable(hidden, n_out, count, seed=cfg.seed, shared=shared)
    if use_bank_head:
        with torch.no_grad():
            heads.weight[0].copy_(bank.head.weight)
            heads.bias[0].copy_(bank.head.bias)
        heads.requires_grad_(False)
    site_names = [s.name for s in bank.sites]
    if cfg.method == "x-peft":
        spec = MaskSpec(kind=cfg.mask, k=k, nu=cfg.nu, tau=cfg.tau)
        table = MaskTable(bank.A, bank.B, count, spec, ln=bank.config.ln, seed=cfg.seed)
        model = RoutedModel(
            encoder,
            site_names,
            bank.rank,
            table,
            heads,
            task,
            ln=bank.config.ln,
            ln_eps=bank.config.ln_eps,
            scale=bank.config.scale,
        ).to(device)
        table.seed_generators(device, cfg.seed)
    elif cfg.method == "single-adapter":
        table = AdapterTable([(s.d_in, s.d_out) for s in bank.sites], bank.rank, count, seed=cfg.seed)
        model = RoutedModel(encoder, site_names, bank.rank, table, heads, task).to(device)
    elif cfg.method == "head-only":
        model = RoutedModel(encoder, site_names, bank.rank, None, heads, task).to(device)
    else:
        raise UsageError(f"unknown method {cfg.method!r}")
    if device.type == "cuda" and cfg.method == "x-peft" and uses_bf16(device, cfg.precision):
        model.table.cast_bank(torch.bfloat16)
    return model


def _optimizer(model: RoutedModel, plans: list[_Plan], cfg: FitConfig, train_shared_head: bool, w):
    """(AdamW, parameters whose gradients every process sums, steps). One param group per (kind,
    schedule length): profiles whose lone fits share a linear schedule share a group, so AdamW runs
    a few multi-tensor updates, not a few per profile."""
    lr_of = {"masks": cfg.lr_masks, "ln": cfg.lr_ln, "head": cfg.lr_head, "adapter": cfg.lr_adapter}
    merged: dict[tuple[str, int], dict] = {}
    for i, p in enumerate(plans):
        for kind, params in model.profile_groups(i).items():
            if params:
                merged.setdefault((kind, p.total), {"params": [], "lr": lr_of[kind], "total": p.total})["params"] += (
                    params
                )
    param_groups = list(merged.values())
    steps = max(p.total for p in plans)
    synced: list[torch.nn.Parameter] = []  # parameters every profile trains: gradients summed over processes
    if train_shared_head:
        if w.size > 1:
            steps = w.max(steps)  # every rank takes part in every step's sum
        synced = list(model.heads.parameters())
        param_groups.append({"params": synced, "lr": cfg.lr_head, "total": steps})
    return make_optimizer(param_groups, w.device), synced, steps


def _train(
    model: RoutedModel,
    tokenizer,
    enc: dict,
    plans: list[_Plan],
    opt,
    update: Update,
    steps: int,
    cfg: FitConfig,
    task: str,
    device: torch.device,
    max_batch_rows: int,
    log: LossLog,
) -> list[dict]:
    """The loop: at step t every profile with work left takes the batch its lone fit takes at t; the
    loss is the sum of their mean losses, in forward passes of at most max_batch_rows rows. Returns
    each step's unrounded per-profile losses (for merging the logs of several processes)."""
    loss_fn = (
        torch.nn.MSELoss(reduction="none") if task == TASK_REGRESSION else torch.nn.CrossEntropyLoss(reduction="none")
    )
    raw: list[dict[str, float]] = []
    model.train()
    for t in range(steps):
        picked: list[tuple[int, list[int], torch.Tensor]] = []
        for i, p in enumerate(plans):
            if t >= p.total:
                continue
            j = t % p.batches
            if j == 0:
                p.perm = torch.randperm(len(p.rows), generator=p.order).tolist()
            local = p.perm[j * cfg.batch_size : (j + 1) * cfg.batch_size]
            picked.append((i, [p.rows[x] for x in local], p.targets[local]))
        set_learning_rates(opt, t, warmup=cfg.lr_warmup())  # each group's own schedule length
        opt.zero_grad(set_to_none=True)
        step_losses: dict[int, float] = {}
        for chunk in _chunks(picked, max_batch_rows):
            idx = [r for _, rows, _ in chunk for r in rows]
            pid = torch.tensor([i for i, rows, _ in chunk for _ in rows])  # on the CPU: routing needs no sync
            y = torch.cat([tg for _, _, tg in chunk]).to(device)
            weight = torch.tensor([1.0 / len(rows) for _, rows, _ in chunk for _ in rows], device=device)
            batch = collate(tokenizer, enc, idx, device)
            with compute_context(device, cfg.precision):
                out = model(**batch, profile_ids=pid)
            per_row = loss_fn(out.float(), y)
            (per_row * weight).sum().backward()
            with torch.no_grad():
                sums = torch.zeros(len(plans), device=device).index_add_(0, pid.to(device), per_row.detach() * weight)
            sums = sums.tolist()  # one sync per forward pass
            for i, _, _ in chunk:
                step_losses[i] = sums[i]
        update()
        raw.append({plans[i].name: v for i, v in step_losses.items()})
        rec = _step_record(t + 1, raw[-1])
        log.step(rec, steps, rec["loss"])
    return raw


def write_profiles(result: MultiFitResult, out: str | Path) -> tuple[dict[str, tuple[str, int]], int]:
    """Write a multi-profile fit's profiles: into one .xps store (one atomic write), or as files in the
    folder `out`, named by profile_filename (.xpm for X-PEFT, .safetensors for a baseline), each written
    atomically. Returns ({profile: (file, bytes)} for a folder, total bytes)."""
    from .baselines import write_adapter
    from .store import write_store
    from .xpm import write_xpm

    out = Path(out)
    if out.suffix == ".xps":
        return {}, write_store([result.profiles[n] for n in result.names], out)
    stems: dict[str, str] = {}
    for name in result.names:  # two names whose files would collide stop the run before anything is written
        stem = profile_filename(name)
        if stem in stems:
            raise UsageError(f"profiles {stems[stem]!r} and {name!r} map to the same file name")
        stems[stem] = name
    out.mkdir(parents=True, exist_ok=True)
    files = {}
    for stem, name in stems.items():
        prof = result.profiles[name]
        path = out / (stem + (".xpm" if isinstance(prof, Profile) else ".safetensors"))
        size = write_xpm(prof, path) if isinstance(prof, Profile) else write_adapter(prof, path)
        files[name] = (str(path), size)
    return files, sum(size for _, size in files.values())


def _gather(w, names: list[str], profiles: dict, val: dict, raw: list[dict], seconds: float, steps: int):
    """Every rank's profiles, validation and loss log, merged in the data's profile order."""
    parts = w.gather((profiles, val, raw, seconds, steps))
    prof = {n: p for part in parts for n, p in part[0].items()}
    vals = {n: v for part in parts for n, v in part[1].items()}
    merged = []
    for t in range(max(len(part[2]) for part in parts)):
        pp = {}
        for part in parts:
            pp.update(part[2][t] if t < len(part[2]) else {})
        pp = {n: pp[n] for n in names if n in pp}  # as one process logs them
        if pp:
            merged.append(_step_record(t + 1, pp))
    return (
        {n: prof[n] for n in names},
        {n: vals[n] for n in names if n in vals},
        merged,
        max(part[3] for part in parts),
        max(part[4] for part in parts),
    )


def _step_record(step: int, losses: dict[str, float]) -> dict:
    """One line of the loss log: the step's mean over its profiles, and each profile's loss."""
    return {
        "step": step,
        "profiles": len(losses),
        "loss": round(sum(losses.values()) / max(1, len(losses)), 6),
        "per_profile": {n: round(v, 6) for n, v in losses.items()},
    }


def _chunks(picked: list, max_rows: int):
    """Split a step's batches into forward passes of at most max_rows rows, never splitting a profile."""
    chunk, size = [], 0
    for item in picked:
        if chunk and size + len(item[1]) > max_rows:
            yield chunk
            chunk, size = [], 0
        chunk.append(item)
        size += len(item[1])
    if chunk:
        yield chunk


@torch.no_grad()
def routed_outputs(
    model: RoutedModel,
    tokenizer,
    enc: dict,
    rows: list[int],
    pids: list[int],
    device,
    batch_size: int = 128,
    precision: str = "auto",
) -> torch.Tensor:
    """Head outputs of tokenised rows, each row with its own profile, float32 on CPU, in order."""
    outs = []
    for s in range(0, len(rows), batch_size):
        batch = collate(tokenizer, enc, rows[s : s + batch_size], device)
        pid = torch.tensor(pids[s : s + batch_size])  # on the CPU: routing needs no sync
        with compute_context(device, precision):
            outs.append(model(**batch, profile_ids=pid).float().cpu())
    return torch.cat(outs) if outs else torch.empty(0)


def _validate(model, tokenizer, enc, plans: list[_Plan], task, n_out, cfg, device) -> dict[str, dict]:
    rows = [r for p in plans for r in p.val_rows]
    if not rows:
        return {}
    pids = [i for i, p in enumerate(plans) for _ in p.val_rows]
    out = routed_outputs(model, tokenizer, enc, rows, pids, device, cfg.batch_size * 8, cfg.precision)
    res, pos = {}, 0
    for p in plans:
        o = out[pos : pos + len(p.val_rows)]
        pos += len(p.val_rows)
        if not p.val_rows:
            continue
        if task == TASK_REGRESSION:
            res[p.name] = regression_metrics(p.val_targets, o.tolist(), train_mean=float(p.targets.mean()))
        else:
            majority = int(torch.bincount(p.targets).argmax())  # ties: the lower label index
            res[p.name] = classification_metrics(
                p.val_targets, o.argmax(-1).tolist(), n_out, present_only=True, train_majority=majority
            )
    return res


def _extract(
    model: RoutedModel,
    i: int,
    name: str,
    cfg: FitConfig,
    bank: Bank,
    task: str,
    names,
    k: int,
    shared: bool,
    meta: dict,
) -> Profile | AdapterProfile:
    heads = model.heads
    hw = None if shared else heads.weight[i].detach().float().cpu()
    hb = None if shared else heads.bias[i].detach().float().cpu()
    if cfg.method == "x-peft":
        t = model.table
        la, lb = t.logits_a[i].detach().float().cpu(), t.logits_b[i].detach().float().cpu()
        ma, mb, k = stored_masks(cfg.mask, la, lb, k)
        ln_w = t.ln_w[i].detach().float().cpu().numpy() if len(t.ln_w) else None
        ln_b = t.ln_b[i].detach().float().cpu().numpy() if len(t.ln_b) else None
        return with_param_dtype(
            Profile(
                name=name,
                mask_kind=cfg.mask,
                n=bank.n,
                L=bank.L,
                k=k,
                bank_hash=bank.bank_hash,
                mask_a=ma,
                mask_b=mb,
                ln_weight=ln_w,
                ln_bias=ln_b,
                head_weight=None if hw is None else hw.numpy(),
                head_bias=None if hb is None else hb.numpy(),
                task=task,
                labels=None if shared else names,
                meta=meta,
            ),
            cfg.param_dtype,
        )
    if shared:  # a baseline keeps the shared head it was trained with (mtl: each profile's full model)
        hw, hb = heads.weight[0], heads.bias[0]
    a, b = model.table.adapter(i) if cfg.method == "single-adapter" else ([], [])
    tensors = adapter_tensors([s.name for s in bank.sites], a, b, hw, hb)
    return AdapterProfile.fitted(bank, name, cfg.method, task, names, tensors, meta)
