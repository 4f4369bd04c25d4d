"""Fitting one profile: masks, bottleneck LN and head trained, PLM and bank frozen.

`fit_profile` builds the model its method trains (`build_model`), picks its step once (loop.py:
eager, data-parallel or a CUDA graph) and walks one seeded data order through it (`_epochs`), with
checkpoints to resume from. Masks get their own learning rate: with the paper's 1e-5 Adam barely
moves the mask logits and the masks stay uniform (design.md). The schedule decays linearly, as in
the paper. Many profiles in one run: multifit.py, on the same core.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from . import checkpoint as ckpt
from .bank import Bank
from .baselines import AdapterProfile, BaselineModel
from .batches import collate, predict_outputs, pretokenize, score, uses_bf16  # noqa: F401  (re-exported)
from .config import FitConfig  # noqa: F401  (defined torch-free, re-exported)
from .data import Examples, encode_labels, infer_task, label_names, split_holdout
from .distributed import share, world
from .errors import DataError, UsageError
from .loop import (
    LossLog,
    Update,
    eager_step,
    fit_metadata,
    fit_settings,
    graphed_step,
    make_optimizer,
    schedule,  # noqa: F401  (schedule: re-exported)
    set_learning_rates,
)
from .masks import MaskSpec
from .metrics import collapse_warning
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

    @property
    def warning(self) -> str | None:
        """One line when the validation score is no better than a constant answer (a fit that learned
        nothing must not pass silently), else None."""
        return collapse_warning(self.val_metrics)


def task_and_labels(train: Examples, cfg: "FitConfig", shared=None) -> tuple[str, list[str] | None]:
    """(task, class names) of a fit: the shared head's (an mtl bank's) if given, else from cfg and data."""
    if shared is not None:  # an mtl bank: its head and label set are every profile's
        if cfg.labels is not None and list(cfg.labels) != list(shared.labels or []):
            raise UsageError(
                f"--labels does not apply to a bank with a shared head: its profiles answer with the bank's "
                f"{len(shared.labels or [])} labels; add --own-head to train a head of your own for these labels"
            )
        return shared.task, shared.labels
    if train.labels is None:
        raise DataError(f"{train.source}: training data needs labels")
    task = infer_task(train.labels) if cfg.task == "auto" else cfg.task
    if task != TASK_CLASSIFICATION:
        return task, None
    names = cfg.labels or label_names(train.labels)
    if len(names) < 2:
        raise DataError(f"{train.source}: training data has a single label ({names[0]!r}); need at least two")
    return task, names


def build_model(
    bank: Bank,
    encoder,
    cfg: FitConfig,
    task: str,
    n_out: int,
    k: int,
    gumbel: torch.Generator,
    shared,
    device: torch.device,
) -> tuple[EncoderClassifier, list[dict]]:
    """The model `cfg.method` trains, on `device`, and its param groups, each with its learning rate."""
    model: Any  # an XPeftModel, a peft peer or a baseline: each has the head and the methods used here
    if cfg.method == "x-peft":
        spec = MaskSpec(kind=cfg.mask, k=k, nu=cfg.nu, tau=cfg.tau, generator=gumbel)
        model = XPeftModel(
            encoder, bank, n_out, task=task, spec=spec, seed=cfg.seed, ln_init=cfg.ln_init, out_vector=cfg.out_vector
        ).to(device)
        if device.type == "cuda" and uses_bf16(device, cfg.precision):
            model.cast_bank(torch.bfloat16)  # autocast would otherwise re-cast the whole bank every step
        groups = [
            {"params": model.mask_parameters(), "lr": cfg.lr_masks},
            {"params": model.ln_parameters(), "lr": cfg.lr_ln},
            {"params": model.head_parameters(), "lr": cfg.lr_head},
            {"params": model.out_parameters(), "lr": cfg.lr_out},
        ]
        if shared is not None:
            model.use_shared_head(shared)
            groups[2]["params"] = []
    elif cfg.method == "peft":
        from .peers import PeerModel  # peft is imported only for peers

        assert cfg.peer, "FitConfig.validate() requires a peer for method peft"

        model = PeerModel(encoder, cfg.peer, [s.name for s in bank.sites], n_out, task=task, seed=cfg.seed).to(device)
        groups = model.parameter_groups(cfg.lr_adapter, cfg.lr_head)
    else:
        model = BaselineModel(
            encoder, cfg.method, [s.name for s in bank.sites], bank.rank, n_out, task=task, seed=cfg.seed
        ).to(device)
        groups = [
            {"params": model.adapter_parameters(), "lr": cfg.lr_adapter},
            {"params": model.head_parameters(), "lr": cfg.lr_head},
        ]
    if cfg.gradient_checkpointing:
        try:
            model.gradient_checkpointing()
        except ValueError as exc:
            raise UsageError(f"--gradient-checkpointing: {exc}") from None
    return model, [g for g in groups if g["params"]]


@dataclass
class _Checkpoints:
    """Where and how often a fit saves the state it can resume from, and what that state must match."""

    path: Path | None
    every: int
    config: dict
    fingerprint: str
    identity: dict

    def due(self, step: int) -> bool:
        return bool(self.path and self.every and step % self.every == 0)

    @classmethod
    def of(cls, path, every: int, cfg: FitConfig, bank: Bank, name: str, k: int, labelling: tuple, train, y_train):
        """A fit's checkpointing: its settings and data fingerprint, and the identity `xpeft pack` needs."""
        task, names, _ = labelling
        settings = {
            key: v for key, v in fit_settings(cfg).items() if key not in ("labels", "head", "gradient_checkpointing")
        }
        identity = {"name": name, "n": bank.n, "k": k, "mask": cfg.mask, "task": task, "labels": names}
        return cls(
            Path(path) if path else None,
            every,
            settings | {"name": name, "bank": bank.bank_hash},
            ckpt.data_fingerprint(train.texts, train.pairs, y_train) if path else "",
            identity | {"bank_hash": bank.bank_hash, "method": cfg.method},
        )


@dataclass
class _Run:
    """What the loop drives: the model and its step, and what the data becomes for it."""

    model: Any
    tokenizer: Any
    opt: torch.optim.Optimizer
    step_fn: Callable
    cfg: FitConfig
    world: Any
    gumbel: torch.Generator
    max_len: int
    labelling: tuple  # (task, class names or None, outputs)


def fit_profile(
    bank: Bank,
    train: Examples,
    name: str,
    cfg: FitConfig = FitConfig(),
    eval_data: Examples | None = None,
    on_step: Callable[[int, int, float], None] | None = None,
    log_path: str | Path | None = None,
    checkpoint_path: str | Path | None = None,
    checkpoint_every: int = 0,
    resume: bool = False,
) -> FitResult:
    """Fit one profile on `train` (a holdout of it validates, unless `eval_data` is given).

    With `checkpoint_path` and `checkpoint_every`, the state is saved every that many steps;
    `resume=True` continues from it and gives the same result as an uninterrupted fit.
    """
    cfg.validate()
    if resume and not checkpoint_path:
        raise UsageError("--resume needs a checkpoint path")
    if train.labels is None:
        raise DataError(f"{train.source}: training data needs labels")
    shared = bank.head if (bank.head is not None and cfg.method == "x-peft" and cfg.head == "auto") else None
    task, names = task_and_labels(train, cfg, shared)
    k = min(cfg.k, bank.n)
    if eval_data is None and cfg.val_fraction > 0:
        tr_idx, va_idx = split_holdout(len(train), cfg.val_fraction, cfg.seed)
        train, eval_data = train.subset(tr_idx), (train.subset(va_idx) if va_idx else None)
    y_train = encode_labels(train, task, names)
    w = world(cfg.device)  # one process, or one of several sharing each batch (distributed.py)
    if cfg.cuda_graphs and w.device.type != "cuda":
        raise UsageError("--cuda-graphs needs a CUDA device")
    if cfg.cuda_graphs and w.size > 1:
        raise UsageError("--cuda-graphs runs single-process fits without --gradient-checkpointing")
    torch.manual_seed(cfg.seed)  # dropout inside the frozen PLM
    encoder, tokenizer = load_encoder(bank.plm)
    gumbel = torch.Generator(device=w.device).manual_seed(cfg.seed + 1)
    n_out = 1 if names is None else len(names)  # task_and_labels gives names exactly for classification
    model, groups = build_model(bank, encoder, cfg, task, n_out, k, gumbel, shared, w.device)
    opt = make_optimizer(groups, w.device, capturable=cfg.cuda_graphs)
    max_len = min(cfg.max_length, max_tokens(encoder))
    step_fn = _step_function(model, opt, cfg, task == TASK_REGRESSION, w, max_len, tokenizer.pad_token_id or 0, gumbel)
    run = _Run(model, tokenizer, opt, step_fn, cfg, w, gumbel, max_len, (task, names, n_out))
    checkpoints = _Checkpoints.of(checkpoint_path, checkpoint_every, cfg, bank, name, k, run.labelling, train, y_train)
    t0 = time.perf_counter()
    steps, val_metrics, history = _epochs(run, train, y_train, eval_data, checkpoints, resume, log_path, on_step)
    seconds = time.perf_counter() - t0
    meta = fit_metadata(cfg, k, task, train.labels or [], steps)
    profile = _profile(model, bank, name, cfg, task, names, meta, own_head=shared is None)
    return FitResult(profile, model, tokenizer, history, val_metrics, seconds, steps)


def _step_function(model, opt, cfg: FitConfig, regression: bool, w, max_len: int, pad_id: int, gumbel):
    """The fit's step, chosen once: a captured CUDA graph, or eager (one process, or a share of each batch)."""
    if cfg.cuda_graphs:
        return graphed_step(
            model,
            opt,
            regression,
            cfg.batch_size,
            max_len,
            w.device,
            cfg.precision,
            pad_id,
            [gumbel] if cfg.method == "x-peft" else [],
        )
    trainable = [p for g in opt.param_groups for p in g["params"]]
    clamped = list(model.mask_parameters()) if cfg.mask_clip and cfg.method == "x-peft" else []
    update = Update(opt, w, synced=trainable, clip_norm=cfg.clip_norm, clamped=clamped, mask_clip=cfg.mask_clip)
    return eager_step(model, opt, update, regression, w.device, cfg.precision, w)


def _profile(model, bank: Bank, name: str, cfg: FitConfig, task: str, names, meta: dict, own_head: bool):
    """What the fit keeps: an X-PEFT profile (the model then holds exactly what its file will), or a
    baseline's tensors."""
    model.eval()
    if cfg.method == "x-peft":
        profile = with_param_dtype(
            profile_from_model(model, name, bank.n, names, meta, with_head=own_head), cfg.param_dtype
        )
        apply_profile(model, profile)
        return profile
    return AdapterProfile.fitted(bank, name, cfg.method, task, names, model.tensors(), meta)


def _epochs(
    run: _Run, train: Examples, y_train: list, eval_data, checkpoints: _Checkpoints, resume: bool, log_path, on_step
):
    """The loop: every epoch one seeded permutation of the rows, batch by batch through `run.step_fn`,
    with checkpoints and a validation record after each epoch. Returns (steps, last validation, history)."""
    model, tokenizer, opt, step_fn, cfg, w, gumbel = (
        run.model,
        run.tokenizer,
        run.opt,
        run.step_fn,
        run.cfg,
        run.world,
        run.gumbel,
    )
    task, names, n_out = run.labelling
    max_len = run.max_len
    device = w.device
    n_batches = (len(train) + cfg.batch_size - 1) // cfg.batch_size
    total = n_batches * cfg.epochs
    order_gen = torch.Generator().manual_seed(cfg.seed)
    targets = torch.tensor(y_train, dtype=torch.float32 if task == TASK_REGRESSION else torch.long)
    enc_train = pretokenize(tokenizer, train, max_len)
    y_val = encode_labels(eval_data, task, names) if eval_data is not None else None
    pos = ckpt.Position(epoch=1, batch=0, step=0)
    history: list[dict] = []
    if resume:
        assert checkpoints.path is not None  # fit_profile: --resume needs a checkpoint path
        pos, order_state, history = ckpt.load(
            checkpoints.path, model, opt, gumbel, checkpoints.config, checkpoints.fingerprint, n_batches, cfg.epochs
        )
        order_gen.set_state(order_state)
    val_metrics, step = None, pos.step
    with LossLog(log_path, w.is_main, on_step, history) as log:
        for epoch in range(pos.epoch, cfg.epochs + 1):
            model.train()
            epoch_order = order_gen.get_state()  # a resumed fit re-draws this epoch's order from here
            perm = torch.randperm(len(train), generator=order_gen).tolist()
            for b in range(pos.batch if epoch == pos.epoch else 0, n_batches):
                idx, weight = perm[b * cfg.batch_size : (b + 1) * cfg.batch_size], 1.0
                if w.size > 1:
                    idx, weight = share(idx, w)
                batch = collate(tokenizer, enc_train, idx, device)
                if cfg.soft_warmup and cfg.method == "x-peft" and cfg.mask == "hard":  # soft → hard
                    model.spec.alpha = min(1.0, step / (cfg.soft_warmup * total))
                set_learning_rates(opt, step, total, cfg.lr_warmup())
                loss = step_fn(batch, targets[idx], weight)
                step += 1
                loss_value = loss.item()
                log.step({"epoch": epoch, "step": step, "loss": round(loss_value, 6)}, total, loss_value)
                if checkpoints.due(step) and w.is_main and checkpoints.path is not None:
                    log.flush()
                    ckpt.save(
                        checkpoints.path,
                        model,
                        opt,
                        ckpt.Position(epoch, b + 1, step),
                        epoch_order,
                        gumbel,
                        checkpoints.config,
                        checkpoints.fingerprint,
                        log.history,
                        checkpoints.identity,
                    )
            if eval_data is not None and y_val is not None and w.is_main:  # the other ranks hold the same parameters
                val_metrics, _ = score(
                    model, tokenizer, eval_data, y_val, n_out, cfg.batch_size * 2, cfg.max_length, device, cfg.precision
                )
                log.note({"epoch": epoch, "step": step, "val": val_metrics})
    return step, val_metrics, log.history
