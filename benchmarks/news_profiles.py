"""The paper's LaMP experiment on the News Category Dataset (issue 5): trained banks, new
authors fitted as masks, per-author baselines, and one run for all new authors vs one per author.

    xpeft convert news-category ../shared/data/profiles/news_category/v3_head/*.json \\
        ../shared/data/profiles/news_category/v2_head/*.json -o .devdata/news
    python benchmarks/news_profiles.py --data .devdata/news --model .devmodel/minilm-fp16

The bank is made of the 40 authors with the most rows (ties by name), from their train rows;
the remaining authors are the new profiles: fitted on their train rows, scored on their 30%
test rows. Every fit uses the same label set (all 29 categories). Reads JSONL with the json
module (no `datasets`), so it runs on the GPU box as is. Writes results/news-<tag>.{json,md}.
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

from xpeft_cli.bank import Bank
from xpeft_cli.bank_build import from_profiles, pick_profiles
from xpeft_cli.baselines import write_adapter
from xpeft_cli.data import Examples, label_names
from xpeft_cli.multifit import fit_profiles, profile_filename
from xpeft_cli.plm import load_encoder, resolve_model
from xpeft_cli.serve import ProfileSource, evaluate_many
from xpeft_cli.train import FitConfig, fit_profile
from xpeft_cli.xpm import write_xpm

RESULTS = Path(__file__).resolve().parent / "results"


def read_jsonl(path: Path) -> Examples:
    rows = [json.loads(line) for line in open(path, encoding="utf-8") if line.strip()]
    return Examples(
        [r["text"] for r in rows], None, [r["label"] for r in rows], str(path), [r["profile"] for r in rows]
    )


def only(ex: Examples, names: set[str]) -> Examples:
    return ex.subset([i for i, p in enumerate(ex.profiles) if p in names])


def save_and_score(bank, res, test: Examples, folder: Path) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    sizes = []
    for name, prof in res.profiles.items():
        if hasattr(prof, "mask_a"):
            sizes.append(write_xpm(prof, folder / f"{profile_filename(name)}.xpm"))
        else:
            sizes.append(write_adapter(prof, folder / f"{profile_filename(name)}.safetensors"))
    ev, _ = evaluate_many(bank, ProfileSource(folder), test, batch_size=256)
    return {
        "mean_accuracy": round(ev["mean"]["accuracy"], 4),
        "mean_macro_f1": round(ev["mean"]["macro_f1"], 4),
        "row_weighted_accuracy": round(ev["row_weighted"]["accuracy"], 4),
        "profiles": ev["count"],
        "bytes_per_profile": round(sum(sizes) / len(sizes), 1),
        "fit_s": round(res.seconds, 2),
        "steps": res.steps,
        "per_profile": {n: round(m["accuracy"], 4) for n, m in ev["profiles"].items()},
    }


def majority_baseline(train: Examples, test: Examples) -> dict:
    """What a user tries first, with no model: each profile answers its training rows' most common label
    (ties: the first in label order), scored per profile as evaluate_many scores a method."""
    from collections import Counter

    from xpeft_cli.metrics import classification_metrics

    label_of: dict[str, str] = {}
    for name in dict.fromkeys(train.profiles):
        counts = Counter(l for l, p in zip(train.labels, train.profiles) if p == name)
        label_of[name] = min(counts, key=lambda lab: (-counts[lab], lab))
    names = sorted(set(test.labels) | set(train.labels))
    per, right = {}, 0
    for name in dict.fromkeys(test.profiles):
        gold = [names.index(l) for l, p in zip(test.labels, test.profiles) if p == name]
        pred = [names.index(label_of[name])] * len(gold)
        per[name] = classification_metrics(gold, pred, len(names), present_only=True)
        right += sum(g == q for g, q in zip(gold, pred))
    return {
        "mean_accuracy": round(sum(m["accuracy"] for m in per.values()) / len(per), 4),
        "mean_macro_f1": round(sum(m["macro_f1"] for m in per.values()) / len(per), 4),
        "row_weighted_accuracy": round(right / len(test), 4),
        "profiles": len(per),
        "bytes_per_profile": 0,
        "fit_s": 0.0,
        "steps": 0,
        "per_profile": {n: round(m["accuracy"], 4) for n, m in per.items()},
    }


def seed_summary(results: dict) -> list[str]:
    """Rows of mean ± sd over seeds, for methods run at several ("… seed N" keys)."""
    import re
    import statistics

    groups: dict[str, list[dict]] = {}
    for key, r in results.items():
        m = re.fullmatch(r"(.+) seed \d+", key)
        if m:
            groups.setdefault(m.group(1), []).append(r)

    def ms(rs: list[dict], k: str) -> str:
        xs = [r[k] for r in rs]
        return f"{statistics.mean(xs):.4f} ± {statistics.stdev(xs):.4f}" if len(xs) > 1 else f"{xs[0]:.4f}"

    rows = []
    for key, rs in sorted(groups.items(), key=lambda kv: -statistics.mean(r["mean_accuracy"] for r in kv[1])):
        rows.append(
            f"| {key} | {len(rs)} | {ms(rs, 'mean_accuracy')} | {ms(rs, 'mean_macro_f1')} | "
            f"{ms(rs, 'row_weighted_accuracy')} | {rs[0]['bytes_per_profile']} |"
        )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=Path(".devdata/news"))
    ap.add_argument("--model", default=None)
    ap.add_argument("--bank-profiles", type=int, default=40)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--ks", type=int, nargs="*", default=[4, 10])
    ap.add_argument("--limit-new", type=int, default=0, help="only this many new authors (smoke runs)")
    ap.add_argument("--skip-solo", action="store_true")
    ap.add_argument("--banks", nargs="+", default=["sa", "mtl", "random"], help="which banks to fit new authors on")
    ap.add_argument("--masks", nargs="+", default=["hard", "soft", "sign"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0], help="fit every method at each seed")
    ap.add_argument(
        "--warmups", type=float, nargs="+", default=[0.0], help="x-peft fits at each of these LR warm-up shares"
    )
    ap.add_argument("--tag", default=None)
    ap.add_argument("--results", type=Path, default=RESULTS, help="where news-TAG.json and .md are written")
    args = ap.parse_args()
    train, test = read_jsonl(args.data / "train.jsonl"), read_jsonl(args.data / "test.jsonl")
    labels = label_names(train.labels + test.labels)
    bank_names = pick_profiles(train, args.bank_profiles)
    new = [p for p in dict.fromkeys(train.profiles) if p not in set(bank_names)]
    if args.limit_new:
        new = new[: args.limit_new]
    new_train, new_test = only(train, set(new)), only(test, set(new))
    plm = resolve_model(args.model)
    cfg = FitConfig(epochs=args.epochs, labels=labels, val_fraction=0.0)
    out = {
        "meta": {
            "command": "python benchmarks/news_profiles.py " + " ".join(sys.argv[1:]),
            "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else platform.machine(),
            "torch": torch.__version__,
            "model": plm.ref,
            "bank_profiles": len(bank_names),
            "new_profiles": len(new),
            "new_train_rows": len(new_train),
            "new_test_rows": len(new_test),
            "labels": len(labels),
            "epochs": args.epochs,
        },
        "banks": {},
        "results": {},
    }
    print(json.dumps(out["meta"]), flush=True)
    banks = {}
    for method in [b for b in ("sa", "mtl") if b in args.banks]:
        enc, _ = load_encoder(plm)
        t0 = time.perf_counter()
        bank, rep = from_profiles(plm, enc, only(train, set(bank_names)), len(bank_names), method, cfg)
        banks[method] = bank
        out["banks"][method] = {
            "seconds": round(time.perf_counter() - t0, 2),
            "steps": rep["steps"],
            "rows": rep["rows"],
            "bank_hash": bank.bank_hash,
        }
        print(method, json.dumps(out["banks"][method]), flush=True)
    with tempfile.TemporaryDirectory() as tmp:

        def record(key, bank, res):
            out["results"][key] = save_and_score(bank, res, new_test, Path(tmp) / key)
            print(key, json.dumps({k: v for k, v in out["results"][key].items() if k != "per_profile"}), flush=True)

        enc, _ = load_encoder(plm)
        if "random" in args.banks:
            banks["random N=400"] = Bank.create_random(plm, enc, n=400, seed=0)  # the default bank a user starts with
        out["results"]["majority label (no model)"] = majority_baseline(new_train, new_test)
        for seed in args.seeds:
            at = f" seed {seed}" if len(args.seeds) > 1 else ""
            for base in ("single-adapter", "head-only"):
                c = FitConfig(**{**cfg.__dict__, "method": base, "seed": seed})
                any_bank = next(iter(banks.values()))  # baselines use its PLM and sites only
                record(base + at, any_bank, fit_profiles(any_bank, new_train, c))
            for bname, bank in banks.items():
                for mask in args.masks:
                    if mask == "sign" and bank.kind == "trained":
                        continue  # ±1/N over a few trained LoRAs is not what sign masks are for
                    for k in (args.ks if bank.kind == "trained" else [50]) if mask == "hard" else [0]:
                        for wu in args.warmups:
                            c = FitConfig(**{**cfg.__dict__, "mask": mask, "k": k or 50, "seed": seed, "warmup": wu})
                            key = f"x-peft {mask}{f' k={k}' if k else ''}{f' warmup {wu:g}' if wu else ''} on {bname} bank"
                            record(key + at, bank, fit_profiles(bank, new_train, c))
        # One run for all new authors against one run per author (same work, same bank and options).
        if not args.skip_solo:
            c = FitConfig(**{**cfg.__dict__, "mask": "hard", "k": args.ks[0]})
            t0 = time.perf_counter()
            fit_profiles(banks["mtl"], new_train, c)
            one_run = time.perf_counter() - t0
            t0 = time.perf_counter()
            for name in new:
                fit_profile(banks["mtl"], only(new_train, {name}), name, c)  # loads the PLM each time, as a CLI run
            per_author = time.perf_counter() - t0
            out["one_run_vs_per_profile"] = {
                "one_run_s": round(one_run, 2),
                "per_profile_runs_s": round(per_author, 2),
                "speedup": round(per_author / one_run, 1),
                "profiles": len(new),
                "note": "in-process: per-author runs exclude Python/CUDA start-up",
            }
            print(json.dumps(out["one_run_vs_per_profile"]), flush=True)
    results = args.results
    results.mkdir(parents=True, exist_ok=True)
    tag = args.tag or ("cuda" if torch.cuda.is_available() else "cpu")
    (results / f"news-{tag}.json").write_text(json.dumps(out, indent=2) + "\n")
    md = [
        f"# News Category (LaMP-2 source): {len(new)} new authors over banks of {len(bank_names)} authors",
        "",
        f"`{out['meta']['command']}` on {out['meta']['device']}, torch {out['meta']['torch']}, "
        f"{args.epochs} epochs, {len(labels)} labels, {len(new_test)} test rows.",
        "",
        "| mode | mean accuracy | mean macro-F1 | row-weighted acc | bytes/profile | fit s (one run) |",
        "|---|---|---|---|---|---|",
    ]
    for key, r in out["results"].items():
        md.append(
            f"| {key} | {r['mean_accuracy']} | {r['mean_macro_f1']} | {r['row_weighted_accuracy']} | "
            f"{r['bytes_per_profile']} | {r['fit_s']} |"
        )
    summary = seed_summary(out["results"])
    if summary:
        md += [
            "",
            f"Over seeds {', '.join(map(str, args.seeds))} (mean ± sd):",
            "",
            "| mode | seeds | mean accuracy | mean macro-F1 | row-weighted acc | bytes/profile |",
            "|---|---|---|---|---|---|",
        ] + summary
    if "one_run_vs_per_profile" in out:
        o = out["one_run_vs_per_profile"]
        md += [
            "",
            f"All {o['profiles']} new authors in one run: {o['one_run_s']} s; one run per author: "
            f"{o['per_profile_runs_s']} s; **{o['speedup']}×**.",
        ]
    (results / f"news-{tag}.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
