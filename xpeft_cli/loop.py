"""The training core that every fit shares — a lone fit (train.py), many profiles in one run
(multifit.py) and the bank builders on top of them:

- `schedule` and `set_learning_rates`: one linear schedule (with an optional warm-up);
- `make_optimizer`: AdamW without weight decay, with its learning rates in device tensors when a
  CUDA graph replays the step;
- `Update`: what follows a backward pass (gradients summed over processes, clipped, AdamW, mask
  logits clamped);
- `eager_step` / `graphed_step`: a one-profile training step, chosen once before the loop;
- `LossLog`: the loss log (JSON lines, the history kept in memory, the progress callback);
- `fit_settings` / `fit_metadata`: the one description of a fit stored with its profile.

The loops themselves stay with their callers: a lone fit walks one data order and can checkpoint,
a multi-profile fit walks one order per profile. Everything they do at a step comes from here.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Iterable, Sequence

import torch

from .batches import compute_context
from .config import FitConfig
from .data import label_key

# Design knobs stored in a profile's metadata only where they differ from their defaults, so that
# fits which do not use them keep the bytes they always had.
_KNOBS = ("ln_init", "soft_warmup", "out_vector", "lr_out", "peer", "warmup", "clip_norm", "mask_clip")


def schedule(step: int, total: int, warmup: float = 0.0) -> float:
    """The LR factor at `step` of `total`: linear warm-up over the first `warmup` share of the steps,
    then linear decay to 0 (without warm-up: 1 - step/total, the paper's schedule)."""
    w = warmup * total
    if step < w:
        return (step + 1) / w
    return max(0.0, 1.0 - (step - w) / (total - w)) if total > w else 0.0


def set_learning_rates(opt: torch.optim.Optimizer, step: int, total: int | None = None, warmup: float = 0.0) -> None:
    """Every param group's LR at `step` of its schedule (its own "total" if it has one, else `total`),
    from its "base_lr" (make_optimizer). Stateless, so a resumed fit continues exactly; in place where
    the LR is a device tensor."""
    for g in opt.param_groups:
        steps = g.get("total", total)
        assert steps is not None, "a param group without its own 'total' needs `total`"
        lr = g["base_lr"] * schedule(step, steps, warmup)
        if torch.is_tensor(g["lr"]):
            g["lr"].fill_(lr)
        else:
            g["lr"] = lr


def make_optimizer(groups: list[dict], device: torch.device, capturable: bool = False) -> torch.optim.Optimizer:
    """AdamW without weight decay (a profile's few parameters are not over-fitted by size). For a CUDA
    graph the learning rates live in device tensors, which the captured step reads at every replay.
    Each group keeps its peak LR as "base_lr", which set_learning_rates scales."""
    groups = [g | {"base_lr": g["lr"]} for g in groups]
    if capturable:
        return torch.optim.AdamW(
            [g | {"lr": torch.tensor(g["lr"], device=device)} for g in groups], weight_decay=0.0, capturable=True
        )
    return torch.optim.AdamW(groups, weight_decay=0.0)


class Update:
    """What follows the backward pass of every eager step: the gradients of `synced` summed over
    processes (with the loss, so every rank logs the whole batch's), global-norm clipping, AdamW, and
    sign/linear mask logits kept in [-mask_clip, mask_clip] (BinaryConnect)."""

    def __init__(
        self,
        opt: torch.optim.Optimizer,
        world,
        synced: Sequence[torch.nn.Parameter] = (),
        clip_norm: float = 0.0,
        clamped: Sequence[torch.nn.Parameter] = (),
        mask_clip: float = 0.0,
    ):
        self.opt, self.world, self.synced = opt, world, list(synced)
        self.trainable = [p for g in opt.param_groups for p in g["params"]]
        self.clip_norm, self.mask_clip = clip_norm, mask_clip
        self.clamped: list[torch.Tensor] = list(clamped)

    def __call__(self, loss: torch.Tensor | None = None) -> torch.Tensor | None:
        if self.world.size > 1 and self.synced:
            loss = self.world.sum_grads_(self.synced, None if loss is None else loss.detach())
        if self.clip_norm:
            torch.nn.utils.clip_grad_norm_(self.trainable, self.clip_norm)
        self.opt.step()
        if self.clamped and self.mask_clip:
            with torch.no_grad():
                torch._foreach_clamp_min_(self.clamped, -self.mask_clip)
                torch._foreach_clamp_max_(self.clamped, self.mask_clip)
        return loss


StepFn = Callable[[dict, torch.Tensor, float], torch.Tensor]  # (batch, targets, weight) → loss


def eager_step(
    model, opt: torch.optim.Optimizer, update: Update, regression: bool, device: torch.device, precision: str, world
) -> StepFn:
    """One profile's step: forward under the compute context, mean loss, backward, `update`. With
    several processes each runs its share of the batch, its mean loss weighted by that share."""
    loss_fn = torch.nn.MSELoss() if regression else torch.nn.CrossEntropyLoss()

    def step(batch: dict, targets: torch.Tensor, weight: float = 1.0) -> torch.Tensor:
        with compute_context(device, precision):
            out = model(**batch)
        loss = loss_fn(out.float(), targets.to(device))
        if world.size > 1:
            loss = loss * weight  # the shares' weighted means sum to the whole batch's mean
        opt.zero_grad(set_to_none=True)
        loss.backward()
        summed = update(loss)
        assert summed is not None
        return summed

    return step


def graphed_step(
    model,
    opt: torch.optim.Optimizer,
    regression: bool,
    rows: int,
    max_length: int,
    device: torch.device,
    precision: str,
    pad_id: int,
    generators: list,
) -> StepFn:
    """The same step captured whole as a CUDA graph per padded shape (graphs.GraphedTrainStep)."""
    from .graphs import GraphedTrainStep

    graphed = GraphedTrainStep(
        model, opt, regression, rows, max_length, device, precision, pad_id=pad_id, generators=generators
    )

    def step(batch: dict, targets: torch.Tensor, weight: float = 1.0) -> torch.Tensor:
        return graphed(batch, targets)

    return step


class LossLog:
    """A fit's log: every record kept in `history` and written as one JSON line (by the main process
    only), each step's loss reported to `on_step(step, total, loss)`."""

    def __init__(
        self,
        path: str | Path | None,
        write: bool = True,
        on_step: Callable[[int, int, float], None] | None = None,
        history: Iterable[dict] = (),
    ):
        self.history = list(history)
        self.on_step = on_step
        self.file = open(path, "w", encoding="utf-8") if (path and write) else None
        if self.file:
            self.file.writelines(json.dumps(rec) + "\n" for rec in self.history)  # a resumed log restarts there

    def step(self, rec: dict, total: int, loss: float) -> None:
        self._add(rec)
        if self.on_step:
            self.on_step(rec["step"], total, loss)

    def note(self, rec: dict) -> None:
        """A record that is not a step (validation): written through at once."""
        self._add(rec)
        self.flush()

    def _add(self, rec: dict) -> None:
        self.history.append(rec)
        if self.file:
            self.file.write(json.dumps(rec) + "\n")

    def flush(self) -> None:
        if self.file:
            self.file.flush()

    def __enter__(self) -> "LossLog":
        return self

    def __exit__(self, *exc) -> None:
        if self.file:
            self.file.close()


def fit_settings(cfg: FitConfig) -> dict:
    """The settings that define a fit's result, for its metadata and checkpoint (not where it ran)."""
    default = FitConfig()
    settings = {
        k: v
        for k, v in asdict(cfg).items()
        if k not in ("device", "cuda_graphs", "warmup") and not (k in _KNOBS and v == getattr(default, k))
    }
    if cfg.lr_warmup():  # the share used, also when it is the method's default
        settings["warmup"] = cfg.lr_warmup()
    return settings


def fit_metadata(cfg: FitConfig, k: int, task: str, labels: list, steps: int, **extra) -> dict:
    """The `fit` metadata of a profile: its settings, the k it used, its task, its training rows
    (`labels`: their raw labels) and steps, what else the fit adds, and the label counts."""
    counts = Counter(label_key(v) for v in labels)
    return {
        "fit": {key: v for key, v in fit_settings(cfg).items() if key != "labels"}
        | {"k": k, "task": task, "train_rows": len(labels), "steps": steps}
        | extra
        | {"label_counts": dict(counts.most_common())}
    }
