"""GPU time of one X-PEFT site's forward+backward, and of the bank mixing, in several formulations.

    python benchmarks/site_variants.py          # H100/H200, bert-base site shape, 64×128 tokens, bf16

Each variant is captured as a CUDA graph (12 sites back to back, forward and backward) and
replayed, so the numbers are the GPU's own time per site, not the host's launch time. This is
how the formulations in layer.py and mixing.py were chosen. Writes
benchmarks/results/site-variants-<tag>.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

RESULTS = Path(__file__).resolve().parent / "results"


def timed_graph(fn, reps: int = 50) -> float:
    """µs per call of fn, captured as a CUDA graph and replayed `reps` times."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    g.replay()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        g.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) * 1000 / reps


def site_variants(tokens: int, d: int, b: int, sites: int, host: bool = False) -> dict[str, float]:
    dev = torch.device("cuda")
    g = torch.Generator(device=dev).manual_seed(0)
    x = torch.randn(tokens, d, device=dev, dtype=torch.bfloat16, generator=g).requires_grad_()
    gout = torch.randn(tokens, d, device=dev, dtype=torch.bfloat16, generator=g)
    a = (torch.randn(d, b, device=dev, generator=g) / d**0.5).to(torch.bfloat16).requires_grad_()
    bh = (torch.randn(b, d, device=dev, generator=g) / b**0.5).to(torch.bfloat16).requires_grad_()
    gamma = torch.ones(b, device=dev, requires_grad=True)
    beta = torch.zeros(b, device=dev, requires_grad=True)
    lora_a = torch.randn(d, b, device=dev, generator=g, requires_grad=True)
    lora_b = torch.randn(b, d, device=dev, generator=g, requires_grad=True)
    eps = 1e-5

    def autocast():
        return torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False)

    def lora():
        with autocast():
            return 1.0 * ((x @ lora_a.to(x.dtype)) @ lora_b.to(x.dtype)), (x, lora_a, lora_b)

    def current():  # layer.py before: LN with affine under autocast (float32), matmuls cast
        with autocast():
            h = F.layer_norm(x @ a, (b,), gamma, beta, eps)
            return h @ bh, (x, a, bh, gamma, beta)

    def bf16_ln():  # LN on the bf16 h, outside autocast: no casts around it
        with autocast():
            h = x @ a
        with torch.autocast("cuda", enabled=False):
            hn = F.layer_norm(h, (b,), gamma.to(h.dtype), beta.to(h.dtype), eps)
            return hn @ bh, (x, a, bh, gamma, beta)

    def bf16_ln_mixed():  # the same with float32 γ, β (mixed-type LayerNorm)
        with autocast():
            h = x @ a
        with torch.autocast("cuda", enabled=False):
            hn = F.layer_norm(h, (b,), gamma, beta, eps)
            return hn @ bh, (x, a, bh, gamma, beta)

    def folded():  # LN without affine; γ, β folded into B̂ and a bias: LN(h)·diag(γ)B̂ + βB̂
        with autocast():
            h = x @ a
        with torch.autocast("cuda", enabled=False):
            hn = F.layer_norm(h, (b,), None, None, eps)
            w = gamma.to(bh.dtype).unsqueeze(1) * bh
            c = beta.to(bh.dtype) @ bh
            return torch.addmm(c, hn, w), (x, a, bh, gamma, beta)

    def folded_nobias():  # LN without affine, γ folded into B̂, β B̂ added after
        with autocast():
            h = x @ a
        with torch.autocast("cuda", enabled=False):
            hn = F.layer_norm(h, (b,), None, None, eps)
            w = gamma.to(bh.dtype).unsqueeze(1) * bh
            return hn @ w + beta.to(bh.dtype) @ bh, (x, a, bh, gamma, beta)

    def addcmul_affine():  # LN without affine in bf16, affine as one addcmul
        with autocast():
            h = x @ a
        with torch.autocast("cuda", enabled=False):
            hn = F.layer_norm(h, (b,), None, None, eps)
            hn = torch.addcmul(beta.to(h.dtype), hn, gamma.to(h.dtype))
            return hn @ bh, (x, a, bh, gamma, beta)

    ln_c = torch.compile(lambda h, w, c: F.layer_norm(h.float(), (b,), w, c, eps).to(h.dtype), dynamic=False)

    def compiled_ln():  # LN (float32 inside, bf16 out) as Inductor kernels
        with autocast():
            h = x @ a
        with torch.autocast("cuda", enabled=False):
            return ln_c(h, gamma, beta) @ bh, (x, a, bh, gamma, beta)

    ln_d = torch.compile(lambda h, w, c: F.layer_norm(h.float(), (b,), w, c, eps).to(h.dtype), dynamic=True)

    def compiled_ln_dynamic():  # the same, compiled for any number of rows
        with autocast():
            h = x @ a
        with torch.autocast("cuda", enabled=False):
            return ln_d(h, gamma, beta) @ bh, (x, a, bh, gamma, beta)

    site_c = torch.compile(lambda x, a, bh, w, c: F.layer_norm(x @ a, (b,), w, c, eps) @ bh, dynamic=False)

    def compiled_site():  # the whole site through torch.compile, under autocast
        with autocast():
            return site_c(x, a, bh, gamma, beta), (x, a, bh, gamma, beta)

    def run(variant):
        def step():
            for _ in range(sites):
                out, inputs = variant()
                torch.autograd.grad(out, inputs, gout)

        return step

    if host:  # eager wall time: what a launch-bound host pays per site, GPU work overlapped
        out = {}
        for name, v in [
            ("lora", lora),
            ("current", current),
            ("compiled_ln", compiled_ln),
            ("compiled_ln_dynamic", compiled_ln_dynamic),
        ]:
            step = run(v)
            for _ in range(3):
                step()
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(20):
                step()
            torch.cuda.synchronize()
            out[name] = round((time.perf_counter() - t0) / 20 / sites * 1e6, 1)
            print(json.dumps({"site_eager_wall": name, "us": out[name]}), flush=True)
        return out

    rows = {}
    for name, v in [
        ("lora", lora),
        ("current", current),
        ("bf16_ln", bf16_ln),
        ("bf16_ln_mixed", bf16_ln_mixed),
        ("folded", folded),
        ("folded_nobias", folded_nobias),
        ("addcmul_affine", addcmul_affine),
        ("compiled_ln", compiled_ln),
        ("compiled_ln_dynamic", compiled_ln_dynamic),
        ("compiled_site", compiled_site),
    ]:
        try:
            rows[name] = round(timed_graph(run(v)) / sites, 2)
        except Exception as exc:  # a formulation this torch cannot run
            rows[name] = f"error: {type(exc).__name__}: {str(exc)[:120]}"
        print(json.dumps({"site": name, "us": rows[name]}), flush=True)
    return rows


def mixing_variants(n: int, k: int, sites: int, d: int, b: int) -> dict[str, float]:
    dev = torch.device("cuda")
    g = torch.Generator(device=dev).manual_seed(0)
    D = d * b
    bank = torch.randn(sites, n, D, device=dev, generator=g).to(torch.bfloat16)
    w = torch.softmax(torch.randn(sites, 1, n, device=dev, generator=g), -1).to(torch.bfloat16)
    gr = torch.randn(sites, 1, D, device=dev, generator=g).to(torch.bfloat16)
    chosen = torch.argsort(torch.randn(sites, 1, n, device=dev, generator=g), -1)[..., :k]
    flat = (chosen + torch.arange(0, sites * n, n, device=dev).view(sites, 1, 1)).reshape(sites, k)
    ones = torch.full((sites, 1, k), 1.0 / k, device=dev, dtype=torch.bfloat16)
    csr = torch.sparse_csr_tensor(
        torch.arange(0, sites * k + 1, k, device=dev),
        flat.view(-1),
        torch.full((sites * k,), 1.0 / k, device=dev, dtype=torch.bfloat16),
        size=(sites, sites * n),
    )
    per_site = [bank[i] for i in range(sites)]
    dot_c = torch.compile(lambda bank, g: (bank.float() * g.float()).sum(-1), dynamic=False)
    c = 8
    chunked = bank.view(sites, n * c, D // c)
    v = bank.view(sites * n, D)
    variants = {
        "dense fwd bmm(w, bank)": lambda: torch.bmm(w, bank),
        "dense fwd bmm(bankT, wT)": lambda: torch.bmm(bank.transpose(1, 2), w.transpose(1, 2)),
        "dense bwd bmm(g, bankT)": lambda: torch.bmm(gr, bank.transpose(1, 2)),
        "dense bwd bmm(bank, gT)": lambda: torch.bmm(bank, gr.transpose(1, 2)),
        "dense bwd (bank*g).sum": lambda: (bank * gr).sum(-1, dtype=torch.float32),
        "dense bwd F.linear per site": lambda: [F.linear(gr[i], per_site[i]) for i in range(sites)],
        "dense bwd compiled (bank*g).sum": lambda: dot_c(bank, gr),
        "dense bwd chunked bmm + diagonal": lambda: (
            torch.bmm(chunked, gr.view(sites, c, D // c).transpose(1, 2))
            .view(sites, n, c, c)
            .diagonal(dim1=2, dim2=3)
            .sum(-1)
        ),
        "hard fwd embedding_bag": lambda: F.embedding_bag(flat, v, mode="mean"),
        "hard fwd index_select+sum(f32)": lambda: (
            v.index_select(0, flat.view(-1)).view(sites, k, D).sum(1, dtype=torch.float32)
        ),
        "hard fwd sparse csr @ bank": lambda: csr @ v,
        "hard fwd index_select+bmm": lambda: torch.bmm(ones, v.index_select(0, flat.view(-1)).view(sites, k, D)),
        "hard fwd index_select+mean": lambda: v.index_select(0, flat.view(-1)).view(sites, k, D).float().mean(1),
    }
    rows = {}
    for name, fn in variants.items():
        try:
            rows[name] = round(timed_graph(fn, reps=20), 1)
        except Exception as exc:
            rows[name] = f"error: {type(exc).__name__}: {str(exc)[:120]}"
        print(json.dumps({"mix": name, "n": n, "us": rows[name]}), flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=64 * 128)
    ap.add_argument("--hidden", type=int, default=768)
    ap.add_argument("--rank", type=int, default=48)
    ap.add_argument("--sites", type=int, default=12)
    ap.add_argument("--ns", type=int, nargs="*", default=[100, 800])
    ap.add_argument("--k", type=int, default=50)
    ap.add_argument("--tag", default="cuda")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("site_variants.py needs a CUDA device (it times CUDA graphs)")
    sites = site_variants(args.tokens, args.hidden, args.rank, args.sites)
    host = site_variants(args.tokens, args.hidden, args.rank, args.sites, host=True)
    mixing = {n: mixing_variants(n, min(args.k, n), args.sites, args.hidden, args.rank) for n in args.ns}
    meta = {
        "command": "python benchmarks/site_variants.py " + " ".join(sys.argv[1:]),
        "device": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "shape": f"{args.tokens} tokens, hidden {args.hidden}, rank {args.rank}, {args.sites} sites, k {args.k}",
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"site-variants-{args.tag}.json").write_text(
        json.dumps({"meta": meta, "site_us": sites, "site_eager_wall_us": host, "mixing_us": mixing}, indent=2) + "\n"
    )
    md = [
        f"# One site and the bank mixing, as CUDA graphs ({meta['device']}, {meta['shape']})",
        "",
        f"Command: `{meta['command']}`; torch {meta['torch']}.",
        "",
        "| site formulation (forward+backward) | µs per site |",
        "|---|---|",
    ]
    md += [f"| {k} | {v} |" for k, v in sites.items()]
    md += ["", "| site formulation, eager (host time included) | µs per site, wall |", "|---|---|"]
    md += [f"| {k} | {v} |" for k, v in host.items()]
    md += [
        "",
        "| mixing, all sites, one bank tensor | " + " | ".join(f"N={n} µs" for n in args.ns) + " |",
        "|---|" + "---|" * len(args.ns),
    ]
    md += [f"| {k} | " + " | ".join(str(mixing[n][k]) for n in args.ns) + " |" for k in mixing[args.ns[0]]]
    (RESULTS / f"site-variants-{args.tag}.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
