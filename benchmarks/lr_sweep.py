"""Which learning rates and Gumbel noise to use by default: a sweep on SST-2 with the default PLM.

    python benchmarks/lr_sweep.py --train 2000 --epochs 3 [--device cpu]

Writes benchmarks/results/lr_sweep.{json,md}. Every run: random bank N=400 (seed 0), k=50,
batch 32, same seed and data; only the named hyperparameters change.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from glue_files import sst2  # noqa: E402

from xpeft_cli import Bank, FitConfig, fit_profile  # noqa: E402
from xpeft_cli.batches import score  # noqa: E402
from xpeft_cli.plm import load_encoder, resolve_model  # noqa: E402

GRID = [
    ("masks frozen (lr 0)", dict(lr_masks=0.0)),
    ("lr_masks 5e-3", dict(lr_masks=5e-3)),
    ("baseline: lr_masks 5e-2, lr_ln 1e-3, lr_head 3e-3, nu 1.0", dict()),
    ("lr_masks 2e-1", dict(lr_masks=2e-1)),
    ("lr_masks 5e-1", dict(lr_masks=5e-1)),
    ("lr_head 1e-3", dict(lr_head=1e-3)),
    ("lr_head 1e-2", dict(lr_head=1e-2)),
    ("lr_ln 1e-2", dict(lr_ln=1e-2)),
    ("nu 0.3", dict(nu=0.3)),
    ("soft masks", dict(mask="soft")),
    ("soft masks, lr_masks 2e-1", dict(mask="soft", lr_masks=2e-1)),
    ("lr_masks 2e-1, lr_head 1e-2", dict(lr_masks=2e-1, lr_head=1e-2)),
]


def masks_moved(profile) -> float:
    """How far training moved the masks from where they started (all logits 0).

    hard: share of selected adapters that are not the initial choice (adapters 0..k-1, ties to the lower index);
    soft: mean total-variation distance of the softmax weights from uniform.
    """
    import numpy as np

    rows = np.concatenate([profile.mask_a, profile.mask_b])
    if profile.mask_kind == "hard":
        return float(1.0 - rows[:, : profile.k].sum() / rows.sum())
    w = torch.softmax(torch.from_numpy(rows), -1).numpy()
    return float(0.5 * np.abs(w - 1.0 / rows.shape[1]).sum(-1).mean())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--train", type=int, default=2000)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--only", nargs="*", help="run only these grid rows (by index)")
    ap.add_argument("--model", default=None, help="PLM folder (default: the bundled model)")
    ap.add_argument("--data-root", default=None, help="folder holding glue/sst2/{train,dev}.tsv")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "lr_sweep"))
    args = ap.parse_args()
    plm = resolve_model(args.model)
    enc, _ = load_encoder(plm)
    with tempfile.TemporaryDirectory() as tmp:
        Bank.create_random(plm, enc, n=400, seed=0).save(tmp)
        bank = Bank.load(tmp)
    root = {"root": Path(args.data_root) / "glue"} if args.data_root else {}
    train, dev = sst2("train", args.train, seed=0, **root), sst2("dev", **root)
    rows = []
    for i, (name, over) in enumerate(GRID):
        if args.only and str(i) not in args.only:
            continue
        # every row is the baseline with one change; the baseline fixes nu=1.0, as in the recorded runs
        cfg = FitConfig(
            **(
                {
                    "k": 50,
                    "epochs": args.epochs,
                    "batch_size": 32,
                    "seed": 0,
                    "device": args.device,
                    "val_fraction": 0.0,
                    "lr_masks": 5e-2,
                    "lr_ln": 1e-3,
                    "lr_head": 3e-3,
                    "nu": 1.0,
                }
                | over
            )
        )
        t0 = time.perf_counter()
        res = fit_profile(bank, train, "sst2", cfg)
        metrics, _ = score(
            res.model,
            res.tokenizer,
            dev,
            [int(v) for v in dev.labels],
            2,
            128,
            128,
            next(res.model.parameters()).device,
        )
        rows.append(
            {
                "run": name,
                "config": over,
                "dev_accuracy": metrics["accuracy"],
                "dev_macro_f1": metrics["macro_f1"],
                "masks_moved": masks_moved(res.profile),
                "seconds": round(time.perf_counter() - t0, 1),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
        with open(args.out + ".partial.jsonl", "a") as fh:  # survives a time limit
            fh.write(json.dumps(rows[-1]) + "\n")
    meta = {
        "command": " ".join(["python", "benchmarks/lr_sweep.py"] + sys.argv[1:]),
        "model": plm.ref,
        "model_sha256": plm.fingerprint,
        "train_rows": len(train),
        "dev_rows": len(dev),
        "epochs": args.epochs,
        "device": str(args.device),
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    Path(args.out + ".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    md = [
        f"# LR sweep on SST-2 (default PLM, N=400, k=50, {len(train)} train rows, {args.epochs} epochs)",
        "",
        f"Command: `{meta['command']}`; device: {meta['cuda'] or meta['machine']}; torch {meta['torch']}.",
        "",
        "| run | dev acc | dev macro-F1 | masks moved | s |",
        "|---|---|---|---|---|",
    ]
    md += [
        f"| {r['run']} | {r['dev_accuracy']:.4f} | {r['dev_macro_f1']:.4f} | {r['masks_moved']:.3f} | {r['seconds']} |"
        for r in rows
    ]
    Path(args.out + ".md").write_text("\n".join(md) + "\n")


if __name__ == "__main__":
    main()
