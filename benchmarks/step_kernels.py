"""Where a training step's GPU time goes: kernel time per step, by kernel, X-PEFT against LoRA.

    python benchmarks/step_kernels.py                          # H100/H200: bert-base shape, 64×128, bf16
    python benchmarks/step_kernels.py --tiny --device cpu      # smoke run (CPU ops instead of kernels)

Runs eager steps of each configuration under torch.profiler and sums every kernel's device
time per step. That is the GPU's own work, which a CUDA graph replays back to back, so the
rows explain the graph step times of speed.py; the host's launch time does not enter.
Writes benchmarks/results/step-kernels-<tag>.{json,md}.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import sys
from collections import defaultdict
from pathlib import Path

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile
from transformers import BertConfig

sys.path.insert(0, str(Path(__file__).resolve().parent))
from speed import RESULTS, Stepper, build, random_batch  # noqa: E402

from xpeft_cli import fused  # noqa: E402


def kernel_times(stepper: Stepper, steps: int, cuda: bool) -> dict[str, float]:
    """µs per step by kernel name (by op name on the CPU)."""
    stepper.run(3)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=acts) as prof:
        stepper.run(steps)
    per: dict[str, float] = defaultdict(float)
    if cuda:
        for e in prof.events():
            # kernels only: a range such as Optimizer.step also shows on the GPU timeline, idle gaps and all
            if (
                e.device_type == DeviceType.CUDA
                and not getattr(e, "is_user_annotation", False)
                and not e.name.startswith("Optimizer.")
            ):
                per[e.name] += e.time_range.elapsed_us() / steps
    else:
        for e in prof.key_averages():
            per[e.key] += e.self_cpu_time_total / steps
    return dict(per)


def short(name: str, width: int = 70) -> str:
    name = name.replace("|", "/")
    return name if len(name) <= width else name[: width - 1] + "…"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument(
        "--configs",
        nargs="*",
        default=["single_adapter:0", "soft:100", "soft:800", "hard:100", "hard:800"],
        help="KIND:N (KIND single_adapter, head_only, soft, hard)",
    )
    ap.add_argument("--top", type=int, default=25, help="kernels listed (by their largest difference from the first)")
    ap.add_argument("--tag", help="results name: step-kernels-TAG (default: the device type)")
    ap.add_argument(
        "--fused",
        action="store_true",
        help="with the compiled kernels that CUDA graphs use (fused.py), as the graphed step runs",
    )
    args = ap.parse_args()
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    cfg, batch_shape = BertConfig(), (64, 128)
    if args.tiny:
        cfg = BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128)
        batch_shape, args.configs = (4, 16), [c.replace("800", "16").replace("100", "8") for c in args.configs]
    g = torch.Generator().manual_seed(0)
    batch = random_batch(*batch_shape, device, g)
    labels = torch.randint(0, 2, (batch_shape[0],), generator=g).to(device)
    dtype = torch.bfloat16 if cuda else None
    table: dict[str, dict[str, float]] = {}
    for spec in args.configs:
        kind, n = spec.split(":")
        model = build(kind, int(n), cfg, device, dtype)
        with fused.compiled() if args.fused else contextlib.nullcontext():
            table[spec] = kernel_times(Stepper(model, batch, labels, device), args.steps, cuda)
        print(
            json.dumps({"config": spec, "kernel_ms_per_step": round(sum(table[spec].values()) / 1000, 3)}), flush=True
        )
        del model
        if cuda:
            torch.cuda.empty_cache()
    first = args.configs[0]
    names = sorted(
        {k for t in table.values() for k in t},
        key=lambda k: -max(abs(t.get(k, 0.0) - table[first].get(k, 0.0)) for t in table.values()),
    )
    meta = {
        "command": "python benchmarks/step_kernels.py " + " ".join(sys.argv[1:]),
        "device": torch.cuda.get_device_name(0) if cuda else platform.machine(),
        "torch": torch.__version__,
        "shape": f"hidden {cfg.hidden_size}, layers {cfg.num_hidden_layers}, batch {batch_shape[0]}x{batch_shape[1]}",
        "steps": args.steps,
        "fused": args.fused,
    }
    RESULTS.mkdir(exist_ok=True)
    tag = args.tag or ("tiny-cpu" if args.tiny else device.type)
    (RESULTS / f"step-kernels-{tag}.json").write_text(json.dumps({"meta": meta, "us_per_step": table}, indent=2) + "\n")
    unit = "kernel" if cuda else "op (CPU self time)"
    md = [
        f"# {'GPU' if cuda else 'CPU'} time per training step by {unit} ({meta['device']}, {meta['shape']})",
        "",
        f"Command: `{meta['command']}`; torch {meta['torch']}; mean of {args.steps} profiled eager steps"
        + (", with the fused kernels of the graphed step." if args.fused else "."),
        "",
        "| " + unit + " | " + " | ".join(f"{c} µs" for c in args.configs) + " |",
        "|---|" + "---|" * len(args.configs),
    ]
    md.append(
        "| **total (ms)** | " + " | ".join(f"**{sum(table[c].values()) / 1000:.3f}**" for c in args.configs) + " |"
    )
    for k in names[: args.top]:
        md.append(f"| `{short(k)}` | " + " | ".join(f"{table[c].get(k, 0.0):.1f}" for c in args.configs) + " |")
    (RESULTS / f"step-kernels-{tag}.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
