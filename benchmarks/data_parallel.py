"""Data-parallel fits (issue 7): the same work on 1 and on 2 GPUs, through the CLI, and whether results match.

    python benchmarks/data_parallel.py --data .devdata/news --model .devmodel/minilm-fp16 --devices 1,2

Runs `xpeft` as a user would (subprocesses; `--devices D`), on the News Category profiles
(`xpeft convert news-category`, see news_profiles.py):
  many:  every author fitted in one multi-profile run (hard masks over a random N=400 bank);
         profiles are dealt to the processes; scored on the authors' test rows (`xpeft eval -P`);
  many-fp32: the same with --precision fp32, where 1 and D devices should agree bit for bit;
  mtl:   `bank create --from-profiles --method mtl` from the 40 largest authors: profiles dealt,
         the shared head's gradients summed over processes every step;
  lone:  one profile made of every training row (batch 128): each batch split over processes,
         gradients summed.
Reports the wall time of each command (start-up, loading and tokenising included) and the time
of its training loop (the `seconds` of its --json), the speed-ups over 1 device, and how far
the results of D devices are from those of 1. Writes results/data-parallel-<tag>.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from xpeft_cli.bank import Bank
from xpeft_cli.multifit import profile_filename
from xpeft_cli.xpm import read_xpm

RESULTS = Path(__file__).resolve().parent / "results"


def xpeft(args: list[str], env: dict, cwd: Path) -> tuple[dict, float]:
    t0 = time.perf_counter()
    r = subprocess.run(
        [sys.executable, "-m", "xpeft_cli", *args, "--json"], env=env, cwd=cwd, capture_output=True, text=True
    )
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        sys.exit(f"xpeft {' '.join(args)} failed ({r.returncode}): {r.stderr.strip()[-2000:]}")
    return json.loads(r.stdout), wall


def profile_diff(a, b) -> dict:
    """How far profile b is from a: equal mask bits, and the largest LN / head difference."""
    bits = np.concatenate([a.mask_a.ravel(), a.mask_b.ravel()]) == np.concatenate([b.mask_a.ravel(), b.mask_b.ravel()])
    diffs = [
        np.abs(x - y).max()
        for x, y in (
            (a.ln_weight, b.ln_weight),
            (a.ln_bias, b.ln_bias),
            (a.head_weight, b.head_weight),
            (a.head_bias, b.head_bias),
        )
        if x is not None
    ]
    return {"bits_equal": float(bits.mean()), "max_abs_diff": float(max(diffs)) if diffs else 0.0}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, required=True, help="folder from `xpeft convert news-category`")
    ap.add_argument("--model", required=True)
    ap.add_argument("--devices", default="1,2")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--lone-epochs", type=int, default=3)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--tag", default=None)
    ap.add_argument("--only", default="many,many-fp32,mtl,lone")
    args = ap.parse_args()
    counts = [int(x) for x in args.devices.split(",")]
    work = Path(tempfile.mkdtemp(prefix="xpeft-dp-"))
    train = str((args.data / "train.jsonl").resolve())
    env = dict(os.environ, XPEFT_MODEL=str(Path(args.model).resolve()))
    env.pop("XPEFT_BANK", None)
    common = ["--device", args.device, "-q"]
    xpeft(["bank", "create", "--random", "-n", "400", "-o", "random"], env, work)
    only = set(args.only.split(","))
    out: dict = {
        "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]),
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else platform.machine(),
        "gpus": torch.cuda.device_count(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "runs": {},
    }
    test = str((args.data / "test.jsonl").resolve())
    for name in ("many", "many-fp32", "mtl", "lone"):
        if name not in only:
            continue
        runs = {}
        for d in counts:
            if name.startswith("many"):
                cmd = [
                    "fit",
                    "--data",
                    train,
                    "--profile-column",
                    "profile",
                    "-b",
                    "random",
                    "--k",
                    "50",
                    "--epochs",
                    str(args.epochs),
                    "-o",
                    f"{name}{d}",
                ]
                if name == "many-fp32":
                    cmd += ["--precision", "fp32"]
            elif name == "mtl":
                cmd = [
                    "bank",
                    "create",
                    "--from-profiles",
                    train,
                    "--profile-count",
                    "40",
                    "--method",
                    "mtl",
                    "--epochs",
                    str(args.epochs),
                    "-o",
                    f"mtl{d}",
                ]
            else:
                cmd = [
                    "fit",
                    "-p",
                    "everyone",
                    "--data",
                    train,
                    "-b",
                    "random",
                    "--k",
                    "50",
                    "--batch-size",
                    "128",
                    "--epochs",
                    str(args.lone_epochs),
                    "-o",
                    f"lone{d}.xpm",
                ]
            res, wall = xpeft(cmd + common + ["--devices", str(d)], env, work)
            runs[d] = {
                "wall_s": round(wall, 2),
                "train_s": res.get("seconds") if name != "mtl" else res["training"]["seconds"],
                "steps": res.get("steps") or res["training"]["steps"],
            }
            if name.startswith("many"):
                ev, _ = xpeft(
                    [
                        "eval",
                        "-P",
                        f"{name}{d}",
                        "--data",
                        test,
                        "--profile-column",
                        "profile",
                        "-b",
                        "random",
                        "--device",
                        args.device,
                    ],
                    env,
                    work,
                )
                runs[d]["test_mean_accuracy"] = round(ev["mean"]["accuracy"], 4)
            print(name, d, runs[d], flush=True)
        base = counts[0]
        for d in counts[1:]:
            r = runs[d]
            r["speedup_wall"] = round(runs[base]["wall_s"] / r["wall_s"], 2)
            r["speedup_train"] = round(runs[base]["train_s"] / r["train_s"], 2)
            if name.startswith("many"):
                names = [json.loads(l)["profile"] for l in open(train, encoding="utf-8")]
                diffs = [
                    profile_diff(
                        read_xpm(work / f"{name}{base}" / f"{profile_filename(n)}.xpm"),
                        read_xpm(work / f"{name}{d}" / f"{profile_filename(n)}.xpm"),
                    )
                    for n in sorted(set(names))
                ]
                r["profiles"] = len(diffs)
                r["profiles_all_bits_equal"] = sum(x["bits_equal"] == 1.0 for x in diffs)
                r["bits_equal"] = round(float(np.mean([x["bits_equal"] for x in diffs])), 6)
                r["max_abs_diff"] = float(max(x["max_abs_diff"] for x in diffs))
            elif name == "mtl":
                a, b = Bank.load(work / f"mtl{base}"), Bank.load(work / f"mtl{d}")
                r["max_abs_diff_adapters"] = float(max((x - y).abs().max() for x, y in zip(a.A + a.B, b.A + b.B)))
                r["max_abs_diff_head"] = float((a.head.weight - b.head.weight).abs().max())
                r["max_abs_adapter"] = float(max(x.abs().max() for x in a.B))
            else:
                r.update(profile_diff(read_xpm(work / f"lone{base}.xpm"), read_xpm(work / f"lone{d}.xpm")))
        out["runs"][name] = runs
    tag = args.tag or ("cuda" if torch.cuda.is_available() else "cpu")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"data-parallel-{tag}.json").write_text(json.dumps(out, indent=2) + "\n")
    md = [
        f"# Data-parallel fits, {out['device']} × {max(counts)} (torch {out['torch']})",
        "",
        f"`{out['command']}`",
        "",
        "| work | devices | steps | wall s | train s | speed-up wall | speed-up train | test mean acc | "
        "results vs 1 device |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, runs in out["runs"].items():
        for d, r in runs.items():
            if name.startswith("many") and "bits_equal" in r:
                match = (
                    f"{r['profiles_all_bits_equal']}/{r['profiles']} profiles bit-identical masks, "
                    f"{r['bits_equal']:.4%} of bits; LN/head max diff {r['max_abs_diff']:.2g}"
                )
            elif name == "mtl" and "max_abs_diff_head" in r:
                match = (
                    f"adapters max diff {r['max_abs_diff_adapters']:.2g} (largest |B| {r['max_abs_adapter']:.2g}), "
                    f"head {r['max_abs_diff_head']:.2g}"
                )
            elif "bits_equal" in r:
                match = f"{r['bits_equal']:.4%} of mask bits equal; LN/head max diff {r['max_abs_diff']:.2g}"
            else:
                match = "(reference)"
            md.append(
                f"| {name} | {d} | {r['steps']} | {r['wall_s']} | {r['train_s']} | {r.get('speedup_wall', '')} | "
                f"{r.get('speedup_train', '')} | {r.get('test_mean_accuracy', '')} | {match} |"
            )
    (RESULTS / f"data-parallel-{tag}.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
