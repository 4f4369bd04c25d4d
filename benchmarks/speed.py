"""Training-step speed and memory of X-PEFT against its baselines, side by side in one run.

    python benchmarks/speed.py                      # GPU, paper scale: bert-base shape, batch 64×128, bf16
    python benchmarks/speed.py --tiny --device cpu  # a quick CPU smoke run of the same code

Every configuration wraps a fresh random-weight BertConfig() encoder (speed does not depend on
weight values), runs warm-up steps, then times forward+backward+AdamW steps with CUDA events and
reports the median. Reference rows run all N adapters on the activations (the paper's cost).
Writes benchmarks/results/speed-<device>.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
import types
from pathlib import Path

import torch
from transformers import BertConfig, BertModel

from xpeft_cli.bank import Bank, Site, SiteConfig
from xpeft_cli.baselines import BaselineModel
from xpeft_cli.graphs import capture
from xpeft_cli.layer import reference_delta
from xpeft_cli.masks import MaskSpec
from xpeft_cli.model import XPeftModel
from xpeft_cli.plm import PLMRef

RESULTS = Path(__file__).resolve().parent / "results"


def random_bank(encoder, n: int, rank: int, device, dtype=torch.float32) -> Bank:
    sites = [
        Site(name, m.in_features, m.out_features)
        for name, m in encoder.named_modules()
        if name.endswith("attention.output.dense")
    ]
    g = torch.Generator(device=device).manual_seed(0)
    A = [torch.randn(n, s.d_in, rank, device=device, generator=g, dtype=dtype) / s.d_in**0.5 for s in sites]
    B = [torch.randn(n, rank, s.d_out, device=device, generator=g, dtype=dtype) / rank**0.5 for s in sites]
    return Bank(
        plm=PLMRef("random", Path("."), "0" * 64),
        model_type="bert",
        sites=sites,
        n=n,
        rank=rank,
        A=A,
        B=B,
        config=SiteConfig(),
        bank_hash="0" * 64,
    )


def build(kind: str, n: int, cfg: BertConfig, device, bank_dtype, checkpointing: bool = False) -> torch.nn.Module:
    model = _build(kind, n, cfg, device, bank_dtype)
    if checkpointing:
        model.gradient_checkpointing()
    return model


def _build(kind: str, n: int, cfg: BertConfig, device, bank_dtype) -> torch.nn.Module:
    torch.manual_seed(0)
    enc = BertModel(cfg).to(device)
    rank = cfg.hidden_size // 16
    if kind in ("head_only", "single_adapter"):
        sites = [name for name, _ in enc.named_modules() if name.endswith("attention.output.dense")]
        return BaselineModel(enc, kind.replace("_", "-"), sites, rank, 2).to(device)
    mask, _, variant = kind.partition(":")
    bank = random_bank(enc, n, rank, device)
    model = XPeftModel(
        enc, bank, 2, spec=MaskSpec(kind=mask, k=min(50, n), generator=torch.Generator(device=device).manual_seed(1))
    )
    model.to(device)
    if variant == "unfused":  # each site mixes its own Â, B̂ (the code before site-batched mixing)
        for s in model.sites:
            s.bank_a, s.bank_b = s.bank_a.to(bank_dtype or torch.float32), s.bank_b.to(bank_dtype or torch.float32)
    elif bank_dtype is not None:
        model.cast_bank(bank_dtype)
    if variant == "reference":
        for layer in model.sites:
            layer.delta = types.MethodType(reference_delta, layer)
    return model


def random_batch(rows: int, seq: int, device, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Random token ids, every position attended: what a step costs does not depend on the words."""
    return {
        "input_ids": torch.randint(1000, 20000, (rows, seq), generator=generator).to(device),
        "attention_mask": torch.ones(rows, seq, dtype=torch.long).to(device),
    }


class Stepper:
    """One configuration's model, optimizer and batch: runs timed steps, returns ms per step."""

    def __init__(self, model, batch, labels, device, train: bool = True):
        self.model, self.batch, self.labels, self.device, self.train = model, batch, labels, device, train
        params = [p for p in model.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(params, lr=1e-3) if train else None
        self.autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
        model.train(train)

    def step(self) -> None:
        """One training step: forward under autocast, cross-entropy, backward, AdamW."""
        self.opt.zero_grad(set_to_none=True)
        with self.autocast:
            out = self.model(**self.batch)
        torch.nn.functional.cross_entropy(out.float(), self.labels).backward()
        self.opt.step()

    def run(self, steps: int) -> list[float]:
        cuda = self.device.type == "cuda"
        times = []
        for _ in range(steps):
            if cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
            else:
                t0 = time.perf_counter()
            if self.train:
                self.step()
            else:
                with torch.no_grad(), self.autocast:
                    self.model(**self.batch)
            if cuda:
                end.record()
                torch.cuda.synchronize()
                times.append(start.elapsed_time(end))
            else:
                times.append((time.perf_counter() - t0) * 1000)
        return times


class GraphStepper(Stepper):
    """The same training step captured whole as a CUDA graph (forward, backward, AdamW), replayed.

    What is left is the GPU's own work: a launch-bound host no longer decides the step time.
    AdamW runs with capturable=True; the Gumbel generator of a hard mask is registered with the
    graph, so every replay draws new noise, as eager steps do. Shapes are those of `batch`.
    """

    def __init__(self, model, batch, labels, device, warmup: int = 3):
        self.model, self.batch, self.labels, self.device, self.train = model, batch, labels, device, True
        params = [p for p in model.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(params, lr=1e-3, capturable=True)
        self.autocast = torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False)
        model.train(True)
        gen = getattr(getattr(model, "spec", None), "generator", None)
        self.graph, _ = capture(self.step, device, warmup, generators=[gen] if gen is not None else [])

    def run(self, steps: int) -> list[float]:
        times = []
        for _ in range(steps):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            self.graph.replay()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        return times


def time_steps(model, batch, labels, device, warmup: int, steps: int, train: bool) -> tuple[float, int]:
    """Median ms per step after warm-up, and the peak GPU memory of those steps."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    stepper = Stepper(model, batch, labels, device, train)
    stepper.run(warmup)
    ms = statistics.median(stepper.run(steps))
    peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else 0
    return ms, peak


def interleaved_ratios(
    plan, cfg, device, batch, labels, warmup: int, steps: int, rounds: int, graphs: bool = False
) -> list[dict]:
    """Each configuration's step time over/under single_adapter's, measured in interleaved rounds.

    All models stay resident; every round times each configuration for `steps` steps, in an
    order rotated by one each round, so that slow drifts of a launch-bound host hit every
    configuration alike. Reports the median ratio over rounds and its range.
    """
    make = GraphStepper if graphs else Stepper
    steppers = [(kind, n, make(build(kind, n, cfg, device, dtype), batch, labels, device)) for kind, n, dtype in plan]
    for _, _, st in steppers:
        st.run(warmup)
    per_round: list[dict[tuple, float]] = []
    for r in range(rounds):
        order = steppers[r % len(steppers) :] + steppers[: r % len(steppers)]
        per_round.append({(kind, n): statistics.median(st.run(steps)) for kind, n, st in order})
    out = []
    for kind, n, _ in steppers:
        ratios = [rd[(kind, n)] / rd[("single_adapter", 0)] for rd in per_round]
        out.append(
            {
                "config": (kind if not n else f"xpeft {kind} N={n}") + (" (CUDA graph)" if graphs else ""),
                "kind": kind,
                "n": n,
                "cuda_graph": graphs,
                "train_ms": round(statistics.median(rd[(kind, n)] for rd in per_round), 2),
                "vs_single_adapter": round(statistics.median(ratios), 3),
                "ratio_min": round(min(ratios), 3),
                "ratio_max": round(max(ratios), 3),
            }
        )
        print(json.dumps(out[-1]), flush=True)
    del steppers
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--tiny", action="store_true", help="small model and batch (smoke test)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--ns", type=int, nargs="*", default=[100, 200, 400, 800])
    ap.add_argument("--reference-ns", type=int, nargs="*", default=[100, 200])
    ap.add_argument("--compile", action="store_true", help="also time torch.compile'd single_adapter and N=400")
    ap.add_argument(
        "--skip-sequential",
        action="store_true",
        help="skip the one-at-a-time pass (its peak memory, fp32-bank, unfused and reference rows)",
    )
    ap.add_argument("--profile", action="store_true", help="write a torch.profiler table of one x-peft step")
    ap.add_argument("--memory-seq", type=int, default=512, help="sequence length of the checkpointing rows")
    ap.add_argument(
        "--graphs",
        action="store_true",
        help="with --rounds: also time every configuration's step captured as a CUDA graph",
    )
    ap.add_argument("--tag", help="results file name: speed-TAG.{json,md} (default: the device type)")
    ap.add_argument(
        "--rounds",
        type=int,
        default=0,
        help="also time head_only, single_adapter and x-peft at every N in this many interleaved rounds",
    )
    args = ap.parse_args()
    device = torch.device(args.device)
    cfg = BertConfig()
    if args.tiny:
        cfg = BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128)
        args.batch, args.seq, args.ns, args.reference_ns, args.steps, args.warmup = 4, 16, [8, 16], [8], 3, 1
        args.memory_seq = 32
        args.rounds = min(args.rounds, 2)
    bf16_bank = torch.bfloat16 if device.type == "cuda" else None
    plan = [("head_only", 0, None), ("single_adapter", 0, None)]
    for n in args.ns:
        plan += [("soft", n, bf16_bank), ("hard", n, bf16_bank)]
    if device.type == "cuda":
        plan += [("soft", 400, None)]  # the float32 bank that autocast re-casts every step, for comparison
    plan += [("soft:unfused", 400, bf16_bank), ("hard:unfused", 400, bf16_bank)]
    plan += [("soft:reference", n, bf16_bank) for n in args.reference_ns]
    g = torch.Generator().manual_seed(0)
    batch = random_batch(args.batch, args.seq, device, g)
    labels = torch.randint(0, 2, (args.batch,), generator=g).to(device)
    rows = []
    if args.skip_sequential:
        plan = []
    for kind, n, dtype in plan:
        model = build(kind, n, cfg, device, dtype)
        ms, peak = time_steps(model, batch, labels, device, args.warmup, args.steps, train=True)
        name = kind if not n else f"xpeft {kind} N={n}" + ("" if dtype or device.type != "cuda" else " (fp32 bank)")
        rows.append(
            {
                "config": name,
                "kind": kind,
                "n": n,
                "bank_dtype": str(dtype) if dtype else "float32",
                "train_ms": round(ms, 2),
                "peak_mem_gib": round(peak / 2**30, 2),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    rounds = []
    if args.rounds:
        ratio_plan = [("head_only", 0, None), ("single_adapter", 0, None)]
        ratio_plan += [(kind, n, bf16_bank) for n in args.ns for kind in ("soft", "hard")]
        rounds = interleaved_ratios(ratio_plan, cfg, device, batch, labels, args.warmup, args.steps // 2, args.rounds)
        if args.graphs and device.type == "cuda":
            rounds += interleaved_ratios(
                ratio_plan, cfg, device, batch, labels, args.warmup, args.steps // 2, args.rounds, graphs=True
            )
    if args.compile:
        for kind, n in (("single_adapter", 0), ("soft", 400), ("hard", 400)):
            model = torch.compile(build(kind, n, cfg, device, bf16_bank))
            ms, peak = time_steps(model, batch, labels, device, args.warmup, args.steps, train=True)
            rows.append(
                {
                    "config": f"{kind if not n else f'xpeft {kind} N={n}'} (torch.compile)",
                    "kind": kind,
                    "n": n,
                    "bank_dtype": str(bf16_bank),
                    "train_ms": round(ms, 2),
                    "peak_mem_gib": round(peak / 2**30, 2),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
            del model
    lora = next((r["train_ms"] for r in rows if r["config"] == "single_adapter"), None)
    lora_c = next((r["train_ms"] for r in rows if r["config"] == "single_adapter (torch.compile)"), None)
    for r in rows:
        r["vs_single_adapter"] = round(r["train_ms"] / (lora_c if "compile" in r["config"] else lora), 3)
    memory = []
    long = random_batch(args.batch, args.memory_seq, device, g)
    for kind, n in (("single_adapter", 0), ("hard", 400)) if not args.skip_sequential else ():
        for ck in (False, True):
            model = build(kind, n, cfg, device, bf16_bank, checkpointing=ck)
            ms, peak = time_steps(model, long, labels, device, 2, max(3, args.steps // 4), train=True)
            memory.append(
                {
                    "config": kind if not n else f"xpeft {kind} N={n}",
                    "checkpointing": ck,
                    "batch": f"{args.batch}x{args.memory_seq}",
                    "train_ms": round(ms, 2),
                    "peak_mem_gib": round(peak / 2**30, 2),
                }
            )
            print(json.dumps(memory[-1]), flush=True)
            del model
            if device.type == "cuda":
                torch.cuda.empty_cache()
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        model = build("hard", 400, cfg, device, bf16_bank)
        time_steps(model, batch, labels, device, 3, 1, train=True)
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with profile(activities=acts) as prof:
            time_steps(model, batch, labels, device, 0, 2, train=True)
        key = "cuda_time_total" if device.type == "cuda" else "cpu_time_total"
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "speed-profile.txt").write_text(prof.key_averages().table(sort_by=key, row_limit=30) + "\n")
        del model
    infer = []
    for kind, n in (("head_only", 0), ("single_adapter", 0), ("hard", 400)) if not args.skip_sequential else ():
        model = build(kind, n, cfg, device, bf16_bank)
        big = {k: v.repeat(4, 1) for k, v in batch.items()}
        ms, _ = time_steps(model, big, labels, device, args.warmup, args.steps, train=False)
        infer.append(
            {
                "config": kind if not n else f"xpeft {kind} N={n} (cached Â, B̂)",
                "batch": big["input_ids"].shape[0],
                "seqs_per_s": round(big["input_ids"].shape[0] / ms * 1000),
            }
        )
        print(json.dumps(infer[-1]), flush=True)
        del model
    dev_name = torch.cuda.get_device_name(0) if device.type == "cuda" else platform.processor() or platform.machine()
    meta = {
        "command": "python benchmarks/speed.py " + " ".join(sys.argv[1:]),
        "device": dev_name,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "shape": f"hidden {cfg.hidden_size}, layers {cfg.num_hidden_layers}, batch {args.batch}x{args.seq}",
        "precision": "bf16 autocast" if device.type == "cuda" else "float32",
        "steps": args.steps,
        "warmup": args.warmup,
        "rounds": args.rounds,
    }
    RESULTS.mkdir(exist_ok=True)
    tag = args.tag or ("tiny-cpu" if args.tiny else device.type)
    (RESULTS / f"speed-{tag}.json").write_text(
        json.dumps(
            {"meta": meta, "train": rows, "inference": infer, "checkpointing": memory, "interleaved": rounds}, indent=2
        )
        + "\n"
    )
    md = [
        f"# Training-step speed ({meta['device']}, {meta['shape']}, {meta['precision']})",
        "",
        f"Command: `{meta['command']}`; torch {meta['torch']}; median of {args.steps} steps after "
        f"{args.warmup} warm-up.",
        "",
        "| config | ms/step | × single_adapter | peak GiB |",
        "|---|---|---|---|",
    ]
    md += [f"| {r['config']} | {r['train_ms']} | {r['vs_single_adapter']} | {r['peak_mem_gib']} |" for r in rows]
    if rounds:
        md += [
            "",
            f"Interleaved: {args.rounds} rounds of {args.steps // 2} steps per configuration, all models "
            "resident, order rotated each round; ratio = median over rounds of the round's ratio (range).",
            "",
            "| config | ms/step | × single_adapter | range over rounds |",
            "|---|---|---|---|",
        ]
        md += [
            f"| {r['config']} | {r['train_ms']} | {r['vs_single_adapter']} | {r['ratio_min']}–{r['ratio_max']} |"
            for r in rounds
        ]
    md += ["", "| inference | batch | sequences/s |", "|---|---|---|"]
    md += [f"| {r['config']} | {r['batch']} | {r['seqs_per_s']} |" for r in infer]
    md += ["", "| gradient checkpointing | batch | checkpointing | ms/step | peak GiB |", "|---|---|---|---|---|"]
    md += [
        f"| {r['config']} | {r['batch']} | {r['checkpointing']} | {r['train_ms']} | {r['peak_mem_gib']} |"
        for r in memory
    ]
    (RESULTS / f"speed-{tag}.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
