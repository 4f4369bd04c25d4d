"""Accuracy against bytes per profile: X-PEFT designs and the peft peers, each with its own LR search.

    python benchmarks/glue_grid.py export --data-dir ../shared/data --tasks cola sst2 mrpc stsb rte  # here
    python benchmarks/frontier.py run --plan sweep --jobs 12 -o .devfrontier --model .devmodel/minilm-fp16  # GPU
    python benchmarks/frontier.py report -o benchmarks/results/frontier --tag minilm      # here: table + PNG

Every cell (one task, one method configuration, one learning rate) is a fit through
`train.fit_profile`, the loop `xpeft fit` runs: the same tokenisation, batches, data order, linear
schedule, bf16 autocast and mean-pooled head for every method. Peers come from Hugging Face peft
(peers.py). A cell's score is the task's official GLUE metric on its dev split; its bytes are
what one profile costs on disk: the `.xpm` file for X-PEFT (the bank is shared and not counted),
peft's own saved state plus the head for a peer. Cells run in parallel worker processes (a
MiniLM step is bound by kernel launches, so one GPU serves many), each written to OUT/cells/ as
it finishes, so an interrupted run resumes and a later call adds to it.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import multiprocessing as mp
import os
import platform
import random
import sys
import time
from dataclasses import replace
from pathlib import Path

TASKS = ["cola", "sst2", "mrpc", "stsb", "rte"]
TWO_SITES = "attention.output.dense,output.dense"  # BERT: both output projections of each block
ALL_SIX = "attention.self.query,attention.self.key,attention.self.value," + TWO_SITES + ",intermediate.dense"
TASK_BANK = os.environ.get("XPEFT_TASK_BANK", "/root/taskbank")
# What every x-peft configuration starts from (warm-up 0: as the plans were recorded before it became the default)
XP = {"method": "x-peft", "n": 400, "k": 50, "mask": "hard", "warmup": 0.0}


def xp(label: str, **over) -> dict:
    return {"label": label, "family": "x-peft " + over.get("mask", "hard")} | XP | over


# X-PEFT configurations that differ only in learning rates: reported together, best LR per task, as
# the peers are. The default design's seed-0 cell (xp-sign-2sites, run before "tune" existed) is one of them.
TUNE_LABELS = {"xp-sign-2sites": "x-peft sign, N=400, r=24, 2 sites"}


def peer(kind: str, spec: str, lrs: list[float]) -> list[dict]:
    return [{"label": f"{spec}@{lr:g}", "family": spec, "method": "peft", "peer": spec, "lr": lr} for lr in lrs]


def variant(cells: list[dict], suffix: str, note: str, **over) -> list[dict]:
    """Peer cells run another way (`over`: other sites, warm-up, a seed): label + `suffix`, family + ` (note)`."""
    return [c | over | {"label": c["label"] + suffix, "family": f"{c['family']} ({note})"} for c in cells]


def plan(name: str) -> list[dict]:
    """Method configurations, in the order they are run (most informative first)."""
    if name == "sweep":
        designs = [
            xp("xp-base"),
            xp("xp-lnlr", lr_ln=1e-2),
            xp("xp-anneal", soft_warmup=0.5),
            xp("xp-outvec", out_vector=True),
            xp("xp-gamma0", ln_init=0.0, lr_ln=1e-2),
            xp("xp-anneal-lnlr", soft_warmup=0.5, lr_ln=1e-2),
            xp("xp-outvec-anneal-lnlr", out_vector=True, soft_warmup=0.5, lr_ln=1e-2),
            xp("xp-soft", mask="soft"),
            xp("xp-soft-lnlr", mask="soft", lr_ln=1e-2),
            xp("xp-lr2x", lr_masks=0.1, lr_ln=2e-3, lr_head=6e-3),
            xp("xp-lr0.5x", lr_masks=0.025, lr_ln=5e-4, lr_head=1.5e-3),
            xp("xp-lnlr-head1e-2", lr_ln=1e-2, lr_head=1e-2),
            xp("xp-r96-gamma0-lnlr", rank=96, ln_init=0.0, lr_ln=1e-2),
        ]
        task = {"bank": TASK_BANK, "n": 64}  # 64 LoRAs of QQP, MNLI, QNLI and BoolQ shards (task_bank.py)
        trained = [
            xp("xp-taskbank-k8", k=8, **task),
            xp("xp-taskbank-k16", k=16, **task),
            xp("xp-taskbank-soft", mask="soft", **task),
            xp("xp-taskbank-k8-anneal", k=8, soft_warmup=0.5, **task),
        ]
        peers = (
            peer("lora", "lora:r=24", [3e-4, 1e-3, 3e-3])
            + peer("lora", "lora:r=4", [3e-4, 1e-3, 3e-3])
            + peer("lora", "lora:r=1", [3e-4, 1e-3, 3e-3])
            + peer("vera", "vera:r=256", [3e-3, 1e-2, 3e-2])
            + peer("vblora", "vblora", [3e-3, 1e-2, 3e-2])
            + peer("ia3", "ia3", [3e-3, 1e-2, 3e-2])
            + peer("head", "head", [3e-3, 1e-2, 3e-2])
            + peer("bitfit", "bitfit", [1e-3, 3e-3, 1e-2])
        )
        return designs + peers + trained
    if (
        name == "sweep2"
    ):  # after sweep: sign and linear masks; the peers' LR grids extended where the best was at an edge
        designs = [
            xp("xp-sign", mask="sign", lr_ln=1e-2),
            xp("xp-linear", mask="linear", lr_ln=1e-2),
            xp("xp-sign-lrm1e-2", mask="sign", lr_masks=1e-2, lr_ln=1e-2),
            xp("xp-linear-lrm1e-2", mask="linear", lr_masks=1e-2, lr_ln=1e-2),
            xp("xp-anneal-lnlr-s1", soft_warmup=0.5, lr_ln=1e-2, seed=1),
            xp("xp-base-s1", seed=1),
            xp("xp-sign-n1600", mask="sign", n=1600, lr_ln=1e-2),
            xp("xp-linear-n100", mask="linear", n=100, lr_ln=1e-2),
            xp("xp-k100-anneal-lnlr", k=100, soft_warmup=0.5, lr_ln=1e-2),
            xp("xp-sign-n800", mask="sign", n=800, lr_ln=1e-2),
            xp("xp-sign-2sites", mask="sign", lr_ln=1e-2, targets=TWO_SITES),
            xp("xp-linear-2sites", mask="linear", lr_ln=1e-2, targets=TWO_SITES),
            xp("xp-sign-r48", mask="sign", rank=48, lr_ln=1e-2),
        ]
        peers = (
            peer("lora", "lora:r=24", [1e-2])
            + peer("lora", "lora:r=4", [1e-2])
            + peer("lora", "lora:r=1", [1e-2, 3e-2])
            + peer("vera", "vera:r=256", [1e-1])
            + peer("vblora", "vblora", [1e-1])
            + peer("head", "head", [1e-1])
        )
        seed1 = variant(peer("lora", "lora:r=24", [3e-3]), "-s1", "seed 1", seed=1)
        return designs + peers + seed1
    if name == "final":  # after sweep2: sign masks on two sites per block, checked with another seed and N,
        # against hard masks and LoRA on the same two sites
        two = {"targets": TWO_SITES}
        return [
            xp("xp-sign-2sites-s1", mask="sign", lr_ln=1e-2, seed=1, **two),
            xp("xp-sign-2sites-n800", mask="sign", n=800, lr_ln=1e-2, **two),
            xp("xp-hard-2sites", **two),
        ] + variant(peer("lora", "lora:r=24", [3e-3]) + peer("lora", "lora:r=1", [1e-2]), "-2sites", "two sites", **two)
    if name == "design3":  # after final: the default (sign, two sites, r=b) against low-rank banks, more sites,
        # and its own LR search (every peer has one)
        sg = {"mask": "sign", "family": "x-peft sign"}
        tune = {"tune": "x-peft sign, N=400, r=24, 2 sites"}
        return [
            xp("s-r4", rank=4, **sg),
            xp("s-r8", rank=8, **sg),
            xp("s-r2", rank=2, **sg),
            xp("s-r1-noln", rank=1, ln=False, **sg),
            xp("s-r4-n800", rank=4, n=800, **sg),
            xp("s-lrm2e-2", lr_masks=2e-2, **sg, **tune),
            xp("s-lrm1e-1", lr_masks=1e-1, **sg, **tune),
            xp("s-ln3e-3", lr_ln=3e-3, **sg, **tune),
            xp("s-ln3e-2", lr_ln=3e-2, **sg, **tune),
            xp("s-head1e-2", lr_head=1e-2, **sg, **tune),
            xp("s-4sites", targets="attention.self.query,attention.self.value," + TWO_SITES, **sg),
            xp("s-6sites-r4", rank=4, targets=ALL_SIX, **sg),
            xp("s-r4-s1", rank=4, seed=1, **sg),
            xp("s-r4-lrm1e-1", rank=4, lr_masks=1e-1, **sg),
        ]
    if name == "mpnet":  # the 12-layer PLM (issue 15): Table 2's rows plus the peers, fewest configs first
        sg = {"mask": "sign", "family": "x-peft sign"}
        return (
            [xp("xp-sign", **sg), xp("xp-hard"), xp("xp-soft", mask="soft", family="x-peft soft")]
            + peer("lora", "lora:r=48", [1e-3, 3e-3])
            + peer("head", "head", [3e-2, 1e-1])
            + peer("lora", "lora:r=1", [1e-2])
            + peer("vera", "vera:r=256", [3e-2])
            + peer("ia3", "ia3", [1e-2])
            + [
                xp("xp-hard-n100", n=100),
                xp("xp-soft-n100", n=100, mask="soft", family="x-peft soft"),
                xp("xp-sign-r4", rank=4, **sg),
            ]
            + peer("lora", "lora:r=48", [3e-4])
            + peer("lora", "lora:r=4", [3e-3])
        )
    if name == "mpnet2":  # the mpnet grid's holes: IA3 (its MPNet targets now given) and LoRA r=1/r=4 LR grids
        return (
            peer("ia3", "ia3", [3e-3, 1e-2, 3e-2])
            + peer("lora", "lora:r=1", [3e-3, 3e-2])
            + peer("lora", "lora:r=4", [1e-3, 1e-2])
        )
    if name == "mpnet3":  # after mpnet2: LoRA r=1/r=4 collapse on STS-B at every LR ≥ 1e-3; lower LRs, and
        # warm-up + clipping, for them and for X-PEFT's default
        wc = {"warmup": 0.06, "clip_norm": 1.0}
        wcp = variant(
            peer("lora", "lora:r=1", [3e-3]) + peer("lora", "lora:r=4", [1e-3]), "-wc", "warm-up + clipping", **wc
        )
        return (
            [xp("xp-sign-wc", mask="sign", family="x-peft sign (warm-up + clipping)", **wc)]
            + wcp
            + peer("lora", "lora:r=1", [3e-4])
            + peer("lora", "lora:r=4", [3e-4])
        )
    if name == "long":  # run with --epochs 10 (xpeft fit's default): does the gap to LoRA shrink with a longer fit?
        one = {"targets": "attention.output.dense"}  # LoRA's tuned runs were on the paper's one site
        tune = {"mask": "sign", "family": "x-peft sign", "tune": "x-peft sign, 10 epochs"}
        return [xp("xp-sign", **tune), xp("s-lrm2e-2", lr_masks=2e-2, **tune), xp("s-ln3e-3", lr_ln=3e-3, **tune)] + [
            c | one for c in peer("lora", "lora:r=24", [1e-3, 3e-3]) + peer("lora", "lora:r=1", [1e-2])
        ]
    if name == "design4":  # next: warm-up and clipping for every method (LoRA collapsed on STS-B at LR ≥ 1e-3 on
        # mpnet without them), and X-PEFT's LR search with them
        wc = {"warmup": 0.06, "clip_norm": 1.0}
        sg = {"mask": "sign", "family": "x-peft sign"}
        tune = {"tune": "x-peft sign, warm-up + clipping"}
        lora_grid = peer("lora", "lora:r=24", [1e-3, 3e-3, 1e-2]) + peer("lora", "lora:r=1", [3e-3, 1e-2, 3e-2])
        wcp = variant(lora_grid, "-wc", "warm-up + clipping", **wc)
        return [
            xp("s-wc", **wc, **sg, **tune),
            xp("s-wc-lrm1e-1", lr_masks=1e-1, **wc, **sg, **tune),
            xp("s-wc-ln3e-2", lr_ln=3e-2, **wc, **sg, **tune),
        ] + wcp
    if name == "design5":  # after design3: the sign estimator (BinaryConnect's latent clipping), banks in the PLM's
        # own singular subspaces, design4's warm-up + clipping, and more seeds of the default and of LoRA
        sg = {"mask": "sign", "family": "x-peft sign"}
        wc = {"warmup": 0.06, "clip_norm": 1.0}
        tune = {"tune": "x-peft sign, warm-up + clipping"}
        two = {"targets": TWO_SITES}  # the peers on X-PEFT's default sites (the default bank's)
        lora_grid = peer("lora", "lora:r=24", [1e-3, 3e-3, 1e-2]) + peer("lora", "lora:r=1", [3e-3, 1e-2, 3e-2])
        wcp = variant(lora_grid, "-wc-2sites", "two sites, warm-up + clipping", **wc, **two)
        seeds = [
            c
            for s in (1, 2)
            for c in variant(peer("lora", "lora:r=1", [1e-2]), f"-2sites-s{s}", f"two sites, seed {s}", seed=s, **two)
        ] + variant(peer("lora", "lora:r=24", [3e-3]), "-2sites-s2", "two sites, seed 2", seed=2, **two)
        return (
            [
                xp("s-clip1", mask_clip=1.0, **sg),
                xp("s-clip0.2", mask_clip=0.2, **sg),
                xp("s-svdtop", subspace="top", **sg),
                xp("s-svdbottom", subspace="bottom", **sg),
                xp("s-s2", seed=2, **sg),
                xp("s-wc", **wc, **sg, **tune),
                xp("s-wc-lrm1e-1", lr_masks=1e-1, **wc, **sg, **tune),
                xp("s-wc-ln3e-2", lr_ln=3e-2, **wc, **sg, **tune),
            ]
            + seeds
            + wcp
        )
    if name.startswith("defaults"):  # issue 26: what `xpeft fit` gives a user who tunes nothing, 3 seeds,
        # beside candidate defaults and a default single-adapter; run with --epochs 10 --batch-size 16
        # --max-train-rows 0 (the CLI's) and graphs. "defaults-s0" runs seed 0 only, "defaults-s12" seeds 1, 2.
        seeds = {"defaults": (0, 1, 2), "defaults-s0": (0,), "defaults-s12": (1, 2)}[name]
        sign = {"mask": "sign", "family": "x-peft sign (CLI defaults)", "cuda_graphs": True}
        configs = [
            ("d-sign", sign),
            ("d-sign-lrm2e-2", sign | {"lr_masks": 2e-2}),
            ("d-sign-ln3e-3", sign | {"lr_ln": 3e-3}),
            ("d-sign-head1e-3", sign | {"lr_head": 1e-3}),
            ("d-sign-head1e-2", sign | {"lr_head": 1e-2}),
            ("d-sign-wu", sign | {"warmup": 0.06}),
            ("d-sign-wu-lrm1e-1", sign | {"warmup": 0.06, "lr_masks": 1e-1}),
            ("d-sign-wu-head1e-2", sign | {"warmup": 0.06, "lr_head": 1e-2}),
            ("d-soft", sign | {"mask": "soft", "family": "x-peft soft (CLI defaults)"}),
        ]
        sa = {
            "label": "d-sa",
            "family": "single-adapter (CLI defaults)",
            "method": "single-adapter",
            "cuda_graphs": True,
        }
        return [xp(f"{label}-s{s}", seed=s, **over) for s in seeds for label, over in configs] + [
            sa | {"label": f"d-sa-s{s}", "seed": s} for s in seeds
        ]
    if name == "smoke":  # seconds on a CPU, with --tiny data
        return (
            [
                xp("xp-base", n=8, k=2),
                xp("xp-anneal-outvec", n=8, k=2, soft_warmup=0.5, out_vector=True),
                xp("xp-soft", n=8, mask="soft"),
                xp("xp-sign", n=8, mask="sign"),
                xp("xp-linear", n=8, mask="linear"),
            ]
            + peer("lora", "lora:r=2", [1e-3])
            + peer("vera", "vera:r=16", [1e-2])
            + peer("ia3", "ia3", [1e-2])
            + peer("vblora", "vblora:r=2,num_vectors=16,vector_length=16,topk=2", [1e-2])
            + peer("head", "head", [1e-2])
            + peer("bitfit", "bitfit", [1e-3])
        )
    raise SystemExit(f"unknown plan {name!r}")


def cell_id(task: str, cfg: dict) -> str:
    return f"{task}--{cfg['label']}".replace("/", "_").replace(":", "_").replace("=", "")


# ---- one cell ------------------------------------------------------------------------------
_CACHE: dict = {}


def _data(src: str, task: str, which: str, max_rows: int | None):
    from xpeft_cli.data import Examples

    key = ("data", task, which)
    if key not in _CACHE:
        path = Path(src, f"{task}.{which}.json")
        d = json.loads(
            gzip.decompress(path.with_suffix(".json.gz").read_bytes()) if not path.is_file() else path.read_text()
        )
        ex = Examples(d["texts"], d["pairs"], d["labels"], d["source"])
        if which == "train" and max_rows and len(ex) > max_rows:
            ex = ex.subset(sorted(random.Random(0).sample(range(len(ex)), max_rows)))
        _CACHE[key] = ex
    return _CACHE[key]


def subspace_bank(bank, encoder, which: str, share: float = 0.25):
    """A design probe: the random bank with every adapter projected onto the `top` (or `bottom`) singular
    subspace of its site's PLM weight, `share` of its dimensions, rescaled to keep each adapter's norm, so
    that a mix spends its few bits in the directions the PLM already uses (top) or does not (bottom)."""
    import torch

    with torch.no_grad():
        for l, site in enumerate(bank.sites):
            w = encoder.get_submodule(site.name).weight.float()  # (d_out, d_in)
            u, _, vh = torch.linalg.svd(w, full_matrices=False)
            m = u.shape[1]
            s = max(1, int(m * share))
            keep = slice(0, s) if which == "top" else slice(m - s, m)
            v, u = vh[keep].T, u[:, keep]  # (d_in, s), (d_out, s)
            a, b = bank.A[l], bank.B[l]  # (N, d_in, r), (N, r, d_out)
            bank.A[l] = (v @ (v.T @ a)) * math.sqrt(site.d_in / s)
            bank.B[l] = ((b @ u) @ u.T) * math.sqrt(site.d_out / s)
    bank.kind, bank.generator = "trained", None
    bank.origin = {"method": f"random, projected on the {which} {share:g} of each site's singular subspace"}
    bank.bank_hash = bank.compute_hash()
    return bank


def _bank(
    model: str | None,
    n: int,
    rank: int | None,
    folder: str | None = None,
    targets: str | None = None,
    ln: bool = True,
    init_scale: float = 1.0,
    subspace: str | None = None,
):
    from xpeft_cli.bank import Bank, SiteConfig
    from xpeft_cli.plm import load_encoder, resolve_model

    key = ("bank", n, rank, folder, targets, ln, init_scale, subspace)
    if folder and key not in _CACHE:  # a trained bank (benchmarks/task_bank.py), perhaps still being built
        t0 = time.time()
        while not Path(folder, "bank.json").is_file() and time.time() - t0 < 900:
            time.sleep(2)
        _CACHE[key] = Bank.load(folder, model=model)
    if key not in _CACHE:
        plm = resolve_model(model)
        enc, _ = load_encoder(plm)
        _CACHE[key] = Bank.create_random(
            plm, enc, n=n, rank=rank, seed=0, targets=targets, init_scale=init_scale, config=SiteConfig(ln=ln)
        )
        if subspace:
            _CACHE[key] = subspace_bank(_CACHE[key], enc, subspace)
    return _CACHE[key]


def run_cell(task: str, cfg: dict, args) -> dict:
    import torch

    from xpeft_cli import xpm
    from xpeft_cli.batches import score
    from xpeft_cli.distributed import pick_device
    from xpeft_cli.peers import profile_bytes
    from xpeft_cli.profile import apply_profile
    from xpeft_cli.tasks import official_metrics, preset
    from xpeft_cli.train import FitConfig, fit_profile

    p = preset(task)
    train, dev = _data(args.src, task, "train", args.max_train_rows), _data(args.src, task, "dev", None)
    fit_keys = set(FitConfig.__dataclass_fields__) - {"method"}
    over = {k: v for k, v in cfg.items() if k in fit_keys}
    base = FitConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        device=args.device,
        task=p.task_type,
        val_fraction=0.0,
        seed=args.seed,
    )
    if cfg["method"] in ("single-adapter", "head-only"):  # a baseline with the CLI's defaults
        fc = replace(base, method=cfg["method"], **over)
    elif cfg["method"] == "peft":
        lr = cfg["lr"]
        fc = replace(
            base,
            method="peft",
            peer=cfg["peer"],
            lr_adapter=lr,
            seed=cfg.get("seed", base.seed),
            lr_head=lr if cfg["peer"] == "head" else base.lr_head,
            **{k: over[k] for k in ("warmup", "clip_norm") if k in over},
        )
    else:
        fc = replace(base, **over)
    bank = _bank(
        args.model,
        cfg.get("n", 400) if cfg["method"] == "x-peft" else 8,
        cfg.get("rank"),
        cfg.get("bank"),
        cfg.get("targets"),
        cfg.get("ln", True),
        cfg.get("init_scale", 1.0),
        cfg.get("subspace"),
    )
    t0 = time.perf_counter()
    fit = fit_profile(bank, train, task, fc)
    device = pick_device(fc.device)
    y_dev = (
        [float(v) for v in dev.labels]
        if p.task_type == "regression"
        else [fit.profile.labels.index(v) for v in dev.labels]
    )
    n_out = 1 if p.task_type == "regression" else len(fit.profile.labels)
    # Every method is scored as kept on disk in float16 (x-peft: its .xpm read back; a peer: its
    # trained tensors rounded), and its bytes are those of that file; float32 bytes are recorded too.
    if cfg["method"] == "x-peft" and fit.profile.mask_kind == "linear":
        # linear masks have no .xpm encoding: measured as a soft float16 file
        prof = replace(fit.profile, mask_kind="soft", soft_dtype="float16", param_dtype="float16")
        blob = xpm.encode(prof)
        back = xpm.decode(blob).profile
        back.mask_kind = fit.profile.mask_kind
        apply_profile(fit.model, back)
        size = size32 = len(blob)
    elif cfg["method"] == "x-peft":
        size32 = len(xpm.encode(fit.profile))
        fit.profile.param_dtype = "float16"
        blob = xpm.encode(fit.profile)
        apply_profile(fit.model, xpm.decode(blob).profile)
        size = len(blob) + sum(int(s.out_scale.numel()) * 2 for s in fit.model.sites if s.out_scale is not None)
        if any(s.out_scale is not None for s in fit.model.sites):
            with torch.no_grad():
                for s in fit.model.sites:
                    s.out_scale.copy_(s.out_scale.half().float())
    else:
        size32 = profile_bytes(fit.profile.tensors)
        size = profile_bytes({k: v.half() if v.is_floating_point() else v for k, v in fit.profile.tensors.items()})
        baseline = cfg["method"] != "peft"  # xpeft's own single-adapter / head-only, or a peft peer
        adapters = fit.model.adapter_parameters() if baseline else [q for _, q in fit.model.adapter_named_parameters()]
        with torch.no_grad():
            for p_ in adapters + fit.model.head_parameters():
                p_.copy_(p_.half().float())
    if cfg["method"] in ("single-adapter", "head-only"):
        trainable = fit.profile.trainable_parameters()  # its tensors: the LoRA and the head
    else:
        trainable = fit.model.trainable_parameter_count() + sum(p_.numel() for p_ in fit.model.head_parameters())
    _, preds = score(fit.model, fit.tokenizer, dev, y_dev, n_out, 128, fc.max_length, device, fc.precision)
    metrics = official_metrics(p, y_dev, preds)
    return {
        "task": task,
        "config": cfg,
        "score": metrics["score"],
        "metrics": metrics,
        "bytes": size,
        "bytes_f32": size32,
        "trainable": int(trainable),
        "steps": fit.steps,
        "train_rows": len(train),
        "dev_rows": len(dev),
        "seconds": round(time.perf_counter() - t0, 1),
        "epochs": fc.epochs,
        "batch_size": fc.batch_size,
        "seed": fc.seed,
    }


def _worker(queue, args, out: str, deadline: float, wid: int) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    from xpeft_cli.atomic import atomic_write_text

    while time.time() < deadline:
        try:
            task, cfg = queue.get_nowait()
        except Exception:
            return
        path = Path(out, "cells", cell_id(task, cfg) + ".json")
        try:
            res = run_cell(task, cfg, args)
        except Exception as exc:  # one failing cell must not stop the sweep: record it
            res = {"task": task, "config": cfg, "error": f"{type(exc).__name__}: {exc}"}
        atomic_write_text(path, json.dumps(res, indent=1) + "\n")
        print(
            f"[{wid}] {cell_id(task, cfg)} "
            + (res.get("error") or f"{res['score']:.4f} {res['bytes']}B {res['seconds']}s"),
            flush=True,
        )


def run(args) -> None:
    cells_dir = Path(args.output, "cells")
    cells_dir.mkdir(parents=True, exist_ok=True)
    todo = []
    for cfg in plan(args.plan):
        if args.only and not any(s in cfg["label"] for s in args.only):
            continue
        for t in args.tasks:
            if not (cells_dir / (cell_id(t, cfg) + ".json")).is_file():
                todo.append((t, cfg))
    # longest tasks first within each configuration keeps the workers' tails short
    print(f"{len(todo)} cells to run with {args.jobs} workers", flush=True)
    deadline = time.time() + args.budget_s
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    for item in todo:
        queue.put(item)
    time.sleep(0.5)
    procs = [ctx.Process(target=_worker, args=(queue, args, args.output, deadline, i)) for i in range(args.jobs)]
    for pr in procs:
        pr.start()
    for pr in procs:
        pr.join()
    env = {"python": platform.python_version(), "argv": sys.argv}
    try:
        import peft
        import torch
        import transformers

        env |= {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "peft": peft.__version__,
            "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else platform.processor() or "cpu",
        }
    except Exception:
        pass
    Path(args.output, f"env-{args.plan}.json").write_text(json.dumps(env, indent=1) + "\n")


# ---- the report ----------------------------------------------------------------------------
def load_cells(folder: str) -> list[dict]:
    """Every cell of OUT/cells/, or of OUT/cells.json (the recorded form: one file, sorted)."""
    files = sorted(Path(folder, "cells").glob("*.json"))
    if files:
        return [json.loads(p.read_text()) for p in files]
    return json.loads(Path(folder, "cells.json").read_text())


def summarise(cells: list[dict], tasks: list[str]) -> list[dict]:
    """One row per configuration (x-peft design or peer at one LR) and one per peer family with the
    best LR chosen per task on dev (as the LoRA and VeRA papers report GLUE)."""
    ok = [c for c in cells if "error" not in c]
    by_label: dict[str, dict] = {}
    for c in ok:
        by_label.setdefault(c["config"]["label"], {})[c["task"]] = c
    rows = []
    for label, per in by_label.items():
        if not all(t in per for t in tasks):
            continue
        cfg = per[tasks[0]]["config"]
        rows.append(
            {
                "label": label,
                "family": cfg["family"],
                "kind": "config",
                "config": cfg,
                "scores": {t: per[t]["score"] for t in tasks},
                "avg": sum(per[t]["score"] for t in tasks) / len(tasks),
                "bytes": sum(per[t]["bytes"] for t in tasks) / len(tasks),
                "trainable": sum(per[t]["trainable"] for t in tasks) / len(tasks),
            }
        )
    fams: dict[str, list[dict]] = {}
    for r in rows:
        if r["config"]["method"] == "peft":
            fams.setdefault(r["family"], []).append(r)
        elif r["config"].get("tune") or r["label"] in TUNE_LABELS:
            fams.setdefault(r["config"].get("tune") or TUNE_LABELS[r["label"]], []).append(r)
    for fam, rs in fams.items():
        best = {t: max(rs, key=lambda r: r["scores"][t]) for t in tasks}
        rows.append(
            {
                "label": f"{fam} (best LR per task)",
                "family": fam,
                "kind": "tuned",
                "method": rs[0]["config"]["method"],
                "scores": {t: best[t]["scores"][t] for t in tasks},
                "lrs": {t: best[t]["config"].get("lr", best[t]["label"]) for t in tasks},
                "avg": sum(best[t]["scores"][t] for t in tasks) / len(tasks),
                "bytes": sum(r["bytes"] for r in rs) / len(rs),
                "trainable": rs[0]["trainable"],
            }
        )
    return rows


def report(args) -> None:
    cells = load_cells(args.output)
    tasks = [t for t in args.tasks if any(c["task"] == t for c in cells)]
    rows = summarise(cells, tasks)
    rows.sort(key=lambda r: -r["avg"])
    errors = [c for c in cells if "error" in c]
    envs = [json.loads(p.read_text()) for p in sorted(Path(args.output).glob("env-*.json"))]
    lines = [
        f"# Accuracy against bytes per profile ({args.tag})",
        "",
        "GLUE dev, official metric per task (MCC for cola, mean of accuracy and F1 for mrpc, mean of Pearson and "
        "Spearman for stsb, accuracy otherwise); bytes: one profile on disk, mean over the tasks.",
        "",
    ]
    for e in envs:
        lines.append(
            f"Run: `{' '.join(e.get('argv', []))}` — {e.get('device')}, torch {e.get('torch')}, "
            f"transformers {e.get('transformers')}, peft {e.get('peft')}"
        )
    lines += [
        "",
        "| method | " + " | ".join(tasks) + " | avg | bytes/profile | trainable params |",
        "|---|" + "---|" * (len(tasks) + 3),
    ]
    for r in rows:
        lines.append(
            f"| {r['label']} | "
            + " | ".join(f"{r['scores'][t]:.3f}" for t in tasks)
            + f" | **{r['avg']:.3f}** | {r['bytes']:,.0f} | {r['trainable']:,.0f} |"
        )
    if errors:
        lines += ["", "Failed cells:"] + [f"- {c['task']} {c['config']['label']}: {c['error']}" for c in errors]
    md = "\n".join(lines) + "\n"
    Path(args.output, f"frontier-{args.tag}.md").write_text(md)
    cells.sort(key=lambda c: (c["config"]["label"], c["task"]))
    Path(args.output, "cells.json").write_text(json.dumps(cells, indent=0, sort_keys=True) + "\n")
    Path(args.output, f"frontier-{args.tag}.json").write_text(
        json.dumps({"tasks": tasks, "rows": rows}, indent=1) + "\n"
    )
    plot(rows, Path(args.output, f"frontier-{args.tag}.png"), args.tag)
    print(md)


def seeds_report(args) -> None:
    """Configurations run at several seeds (labels ending -sN): mean ± sd per task and of the task
    average, over the seeds that ran every task; tasks some seeds lack are shown for those seeds."""
    import re
    import statistics

    cells = [c for c in load_cells(args.output) if "error" not in c]
    tasks = [t for t in args.tasks if any(c["task"] == t for c in cells)]
    runs: dict[str, dict[int, dict[str, float]]] = {}
    sizes: dict[str, list[int]] = {}
    for c in cells:
        m = re.fullmatch(r"(.+)-s(\d+)", c["config"]["label"])
        if m:
            runs.setdefault(m.group(1), {}).setdefault(int(m.group(2)), {})[c["task"]] = c["score"]
            sizes.setdefault(m.group(1), []).append(c["bytes"])
    full = [t for t in tasks if all(t in by for r in runs.values() for by in r.values())]

    def ms(xs: list[float]) -> str:
        return f"{statistics.mean(xs):.3f}" + (f" ± {statistics.stdev(xs):.3f}" if len(xs) > 1 else "")

    lines = [
        f"# {args.tag}: mean ± sd over seeds",
        "",
        "GLUE dev, official metric per task; avg over " + ", ".join(full) + " (the tasks every seed ran).",
        "",
        "| configuration | seeds | " + " | ".join(tasks) + " | avg | bytes/profile (mean over tasks) |",
        "|---|---|" + "---|" * (len(tasks) + 2),
    ]
    rows = []
    for label, by in runs.items():
        avgs = [statistics.mean(sc[t] for t in full) for sc in by.values() if all(t in sc for t in full)]
        cols = []
        for t in tasks:
            xs = [sc[t] for sc in by.values() if t in sc]
            cols.append(ms(xs) + ("" if len(xs) == len(by) else f" ({len(xs)} seed)") if xs else "–")
        rows.append((statistics.mean(avgs) if avgs else 0.0, label, len(by), cols, ms(avgs) if avgs else "–"))
    for _, label, n, cols, avg in sorted(rows, reverse=True):
        size = statistics.mean(sizes[label])
        lines.append(f"| {label} | {n} | " + " | ".join(cols) + f" | **{avg}** | {size:,.0f} |")
    md = "\n".join(lines) + "\n"
    Path(args.output, f"seeds-{args.tag}.md").write_text(md)
    cells.sort(key=lambda c: (c["config"]["label"], c["task"]))
    Path(args.output, "cells.json").write_text(json.dumps(cells, indent=0, sort_keys=True) + "\n")
    print(md)


def pareto(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points no other point beats on both fewer bytes and a higher score, by bytes."""
    best, out = -math.inf, []
    for b, a in sorted(points):
        if a > best:
            out.append((b, a))
            best = a
    return out


def plot(rows: list[dict], path: Path, tag: str) -> None:
    """Peers (tuned LR) as labelled circles, X-PEFT designs as stars; the dashed line is the frontier."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 6.5))
    peers = [r for r in rows if r["kind"] == "tuned" and r["method"] == "peft"]
    designs = sorted(
        (
            r
            for r in rows
            if (r["kind"] == "config" and r["config"]["method"] == "x-peft")
            or (r["kind"] == "tuned" and r["method"] == "x-peft")
        ),
        key=lambda r: -r["avg"],
    )[:16]
    for r in peers:
        ax.scatter(r["bytes"], r["avg"], marker="o", s=60, color="tab:gray", edgecolor="black", zorder=3)
        ax.annotate(r["family"], (r["bytes"], r["avg"]), textcoords="offset points", xytext=(5, 4), fontsize=8)
    cmap = plt.get_cmap("viridis")
    for i, r in enumerate(designs):
        ax.scatter(
            r["bytes"],
            r["avg"],
            marker="*",
            s=150,
            color=cmap(i / max(1, len(designs) - 1)),
            edgecolor="black",
            linewidth=0.5,
            label=f"{r['label']} ({r['avg']:.3f})",
            zorder=4,
        )
    front = pareto([(r["bytes"], r["avg"]) for r in peers + designs])
    ax.plot(*zip(*front), "--", color="tab:red", linewidth=1, zorder=2, label="frontier")
    ax.set_xscale("log")
    ax.set_xlim(right=max(r["bytes"] for r in peers + designs) * 4)  # room for the rightmost label
    ax.set_xlabel("bytes per profile on disk, float16 (log scale)")
    ax.set_ylabel("GLUE dev score, mean of the tasks")
    ax.set_title(f"Accuracy against bytes per profile — {tag}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), title="X-PEFT designs (stars)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("action", choices=["run", "report", "seeds"])
    ap.add_argument("--plan", default="sweep")
    ap.add_argument("--only", nargs="*", help="run only configurations whose label contains one of these")
    ap.add_argument("--tasks", nargs="+", default=TASKS)
    ap.add_argument("--from", dest="src", default=".devdata/presets")
    ap.add_argument("-o", "--output", default=".devfrontier")
    ap.add_argument("--model", default=None)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-train-rows", type=int, default=10000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--budget-s", type=float, default=math.inf, help="start no new cell after this many seconds")
    ap.add_argument("--tag", default="minilm")
    args = ap.parse_args()
    {"run": run, "report": report, "seeds": seeds_report}[args.action](args)


if __name__ == "__main__":
    main()
