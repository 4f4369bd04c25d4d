"""The Table-2 grid: tasks × methods (head_only, single_adapter, x-peft soft/hard at several N).

Each finished cell is written to OUT/cells/<cell>.json at once, so an interrupted run resumes
where it stopped. Banks are random (seed 0), one per N, in OUT/banks/.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

from .atomic import atomic_write_text
from .bank import Bank
from .batches import score
from .data import Examples
from .distributed import pick_device
from .plm import load_encoder, resolve_model
from .tasks import load_split, official_metrics, preset
from .train import FitConfig, fit_profile

METRIC_NAMES = {"mcc": "MCC", "acc": "Acc", "acc_f1": "Comb", "pearson_spearman": "Comb", "acc_gps": "Acc"}


@dataclass(frozen=True)
class Cell:
    task: str
    method: str
    n: int | None = None
    mask: str | None = None

    @property
    def id(self) -> str:
        return f"{self.task}-{self.method}" + (f"-n{self.n}-{self.mask}" if self.method == "x-peft" else "")

    @property
    def row(self) -> str:
        return f"x_peft {self.n} ({self.mask})" if self.method == "x-peft" else self.method.replace("-", "_")


def plan(tasks: list[str], methods: list[str], ns: list[int], masks: list[str]) -> list[Cell]:
    cells = []
    for t in tasks:
        preset(t)  # unknown names fail before any work
        for m in methods:
            if m == "x-peft":
                cells += [Cell(t, m, n, mask) for n in ns for mask in masks]
            else:
                cells.append(Cell(t, m))
    return cells


def _bank(out: Path, n: int, model: str | None, init_scale: float = 1.0) -> Bank:
    folder = out / "banks" / f"N{n}"
    if not (folder / "bank.json").is_file():
        plm = resolve_model(model)
        enc, _ = load_encoder(plm)
        Bank.create_random(plm, enc, n=n, seed=0, init_scale=init_scale).save(folder)
    return Bank.load(folder, model=model)


def run_grid(
    cells: list[Cell],
    data_dir: str | Path,
    out: str | Path,
    base: FitConfig,
    model: str | None = None,
    max_train_rows: int | None = None,
    on_cell: Callable[[Cell, dict, bool], None] | None = None,
    loader: Callable[[str, str], Examples] | None = None,
    init_scale: float = 1.0,
) -> list[dict]:
    """Run every cell not yet in OUT/cells. `loader(task, split)` replaces reading presets from `data_dir`."""
    load = loader or (lambda task, which: load_split(preset(task), which, data_dir).examples)
    out = Path(out)
    (out / "cells").mkdir(parents=True, exist_ok=True)
    results, banks, data = [], {}, {}
    for cell in cells:
        path = out / "cells" / f"{cell.id}.json"
        if path.is_file():
            res = json.loads(path.read_text())
            results.append(res)
            if on_cell:
                on_cell(cell, res, True)
            continue
        p = preset(cell.task)
        if cell.task not in data:
            train = load(cell.task, "train")
            if max_train_rows and len(train) > max_train_rows:
                train = train.subset(sorted(random.Random(0).sample(range(len(train)), max_train_rows)))
            data[cell.task] = (train, load(cell.task, "dev"))
        train, dev = data[cell.task]
        n = cell.n or min(cells_n(cells) or [100])
        if n not in banks:
            banks[n] = _bank(out, n, model, init_scale)
        cfg = replace(base, method=cell.method, mask=cell.mask or base.mask, task=p.task_type, val_fraction=0.0)
        t0 = time.perf_counter()
        fit = fit_profile(banks[n], train, cell.task, cfg)
        device = pick_device(cfg.device)
        y_dev = (
            [float(v) for v in dev.labels]
            if p.task_type == "regression"
            else [fit.profile.labels.index(v) for v in dev.labels]
        )
        n_out = 1 if p.task_type == "regression" else len(fit.profile.labels)
        _, preds = score(fit.model, fit.tokenizer, dev, y_dev, n_out, 128, cfg.max_length, device)
        metrics = official_metrics(p, y_dev, preds)
        res = asdict(cell) | {
            "cell": cell.id,
            "row": cell.row,
            "score": metrics["score"],
            "metrics": metrics,
            "metric": METRIC_NAMES[p.metric],
            "train_rows": len(train),
            "dev_rows": len(dev),
            "steps": fit.steps,
            "epochs": cfg.epochs,
            "seed": cfg.seed,
            "k": cfg.k,
            "lr_masks": cfg.lr_masks,
            "nu": cfg.nu,
            "tau": cfg.tau,
            "init_scale": init_scale,
            "seconds": round(time.perf_counter() - t0, 1),
            "trained_on": p.trained_on,
        }
        atomic_write_text(path, json.dumps(res, indent=2) + "\n")
        results.append(res)
        if on_cell:
            on_cell(cell, res, False)
    return results


def cells_n(cells: list[Cell]) -> list[int]:
    return sorted({c.n for c in cells if c.n})


def table(results: list[dict], command: str = "") -> tuple[str, dict]:
    """Markdown in the layout of the paper's Table 2, plus the same as JSON."""
    tasks = list(dict.fromkeys(r["task"] for r in results))
    rows = list(dict.fromkeys(r["row"] for r in results))
    by = {(r["row"], r["task"]): r for r in results}
    metric = {t: next(r["metric"] for r in results if r["task"] == t) for t in tasks}
    md = [
        "| mode | " + " | ".join(f"{t} ({metric[t]})" for t in tasks) + " | avg |",
        "|---|" + "---|" * (len(tasks) + 1),
    ]
    doc = {"command": command, "tasks": tasks, "rows": {}}
    for row in rows:
        scores = [by[(row, t)]["score"] if (row, t) in by else None for t in tasks]
        have = [s for s in scores if s is not None]
        avg = sum(have) / len(have) if len(have) == len(tasks) else None
        md.append(
            f"| {row} | "
            + " | ".join("–" if s is None else f"{s:.3f}" for s in scores)
            + f" | {'–' if avg is None else f'{avg:.3f}'} |"
        )
        doc["rows"][row] = {
            "scores": dict(zip(tasks, scores)),
            "avg": avg,
            "seconds": sum(by[(row, t)]["seconds"] for t in tasks if (row, t) in by),
        }
    return "\n".join(md) + "\n", doc
