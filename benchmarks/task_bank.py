"""A trained bank from other tasks' LoRAs: the realistic bank for a new GLUE task.

    python benchmarks/task_bank.py export --data-dir ../shared/data --to .devdata/taskbank.json.gz   # here
    python benchmarks/task_bank.py build --from .devdata/taskbank.json.gz -o /root/taskbank --model M  # GPU

None of the source tasks is one the frontier scores (cola, sst2, mrpc, stsb, rte): QQP (its train
subset), MNLI (dev_matched), QNLI (dev) and BoolQ (val) are cut into shards, and each shard trains
one LoRA (`bank create --from-profiles --method sa`: one batched run, one adapter and head per
shard). The bank's adapters are those LoRAs; the frontier then fits X-PEFT profiles on it.
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
from pathlib import Path

SOURCES = {"qqp": 24, "mnli": 16, "qnli": 12, "boolq": 12}  # task → shards (one LoRA each)


def export(data_dir: str, to: str) -> None:
    from xpeft_cli.tasks import load_split, preset

    texts, pairs, labels, profiles = [], [], [], []
    for task, shards in SOURCES.items():
        p = preset(task)
        ex = load_split(p, "train" if p.train else "dev", data_dir).examples
        order = list(range(len(ex)))
        random.Random(0).shuffle(order)
        for j, i in enumerate(order):
            texts.append(ex.texts[i])
            pairs.append(ex.pairs[i] if ex.pairs else "")
            labels.append(f"{task}:{ex.labels[i]}")  # one label set over every source task
            profiles.append(f"{task}-{j % shards:02d}")
        print(task, len(ex), "rows in", shards, "shards")
    Path(to).parent.mkdir(parents=True, exist_ok=True)
    blob = json.dumps({"texts": texts, "pairs": pairs, "labels": labels, "profiles": profiles}).encode()
    Path(to).write_bytes(gzip.compress(blob) if to.endswith(".gz") else blob)


def build(src: str, out: str, model: str | None, epochs: int, batch_size: int, lr: float) -> None:
    from xpeft_cli.bank_build import from_profiles
    from xpeft_cli.data import Examples
    from xpeft_cli.plm import load_encoder, resolve_model
    from xpeft_cli.train import FitConfig

    raw = Path(src).read_bytes()
    d = json.loads(gzip.decompress(raw) if src.endswith(".gz") else raw)
    data = Examples(d["texts"], d["pairs"], d["labels"], src, d["profiles"])
    plm = resolve_model(model)
    enc, _ = load_encoder(plm)
    count = len(set(d["profiles"]))
    cfg = FitConfig(epochs=epochs, batch_size=batch_size, lr_adapter=lr, val_fraction=0.05, seed=0)
    bank, rep = from_profiles(plm, enc, data, count, "sa", cfg)
    bank.save(out)
    print(json.dumps({k: v for k, v in rep.items() if k != "val_accuracy"}))
    accs = [a for a in rep["val_accuracy"].values() if a is not None]
    print(f"bank of {bank.n} LoRAs at {out}; mean held-out accuracy of the source LoRAs {sum(accs) / len(accs):.3f}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("action", choices=["export", "build"])
    ap.add_argument("--data-dir", default="../shared/data")
    ap.add_argument("--to", default=".devdata/taskbank.json.gz")
    ap.add_argument("--from", dest="src", default=".devdata/taskbank.json.gz")
    ap.add_argument("-o", "--output", default=".devtaskbank")
    ap.add_argument("--model", default=None)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    args = ap.parse_args()
    if args.action == "export":
        export(args.data_dir, args.to)
    else:
        build(args.src, args.output, args.model, args.epochs, args.batch_size, args.lr)


if __name__ == "__main__":
    main()
