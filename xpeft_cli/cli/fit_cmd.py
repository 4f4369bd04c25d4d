"""`xpeft fit`: fit one profile from a labelled file and write PROFILE.xpm."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Literal, Optional

import typer

from ..config import FitConfig
from ..errors import UsageError
from ..names import check_name, profile_filename
from . import output
from .common import (
    BATCH_MAX,
    EPOCHS_MAX,
    LR_MAX,
    ROWS_MAX,
    SEED_MAX,
    TOKENS_MAX,
    BankOpt,
    DeviceOpt,
    DevicesOpt,
    JsonOpt,
    LabelCol,
    ModelOpt,
    OptPath,
    OptStr,
    PairCol,
    PrecisionOpt,
    QuietOpt,
    TextCol,
    devices_launch,
    label_list,
)

D = FitConfig()


def fit(
    profile: OptStr = typer.Option(
        None,
        "--profile",
        "-p",
        help="Profile name (stored in the file); or use --profile-column to fit every profile of the file in one run.",
    ),
    profile_column: OptStr = typer.Option(
        None,
        "--profile-column",
        help="Fit every profile named in this column "
        "in one batched run; -o is then a folder of NAME.xpm (or an .xps store).",
    ),
    labels: OptStr = typer.Option(
        None,
        "--labels",
        help="The class names, comma-separated, in order (default: "
        "those in the data, sorted). A multi-profile fit gives every profile this set.",
    ),
    max_batch_rows: int = typer.Option(
        2048,
        "--max-batch-rows",
        min=1,
        max=ROWS_MAX,
        help="Multi-profile fit: at most this many rows "
        "per forward pass (a step's profiles are split over several passes).",
    ),
    data: OptPath = typer.Option(
        None, "--data", "-d", help="Training data: .jsonl, .json, .csv, .tsv or .parquet (or use --task)."
    ),
    method: Literal["x-peft", "single-adapter", "head-only"] = typer.Option(
        D.method, "--method", help="x-peft, or a baseline: single-adapter (a LoRA per site, rank b) or head-only."
    ),
    task_preset: OptStr = typer.Option(
        None,
        "--task",
        help="A GLUE/SuperGLUE preset (cola, sst2, mrpc, qqp, stsb, "
        "mnli, qnli, rte, wnli, cb, boolq, axb, axg): its train split from --data-dir, "
        "validated on its dev split.",
    ),
    data_dir: Path = typer.Option(
        Path("data"),
        "--data-dir",
        envvar="XPEFT_DATA_DIR",
        show_envvar=True,
        help="Folder holding glue/ and superglue/ (for --task).",
    ),
    bank_dir: Path = BankOpt,
    out: OptPath = typer.Option(None, "--output", "-o", help="Output file (default: PROFILE.xpm)."),
    mask: Literal["sign", "hard", "soft"] = typer.Option(
        D.mask,
        "--mask",
        help="sign (every adapter with a learned ±, one bit each; the most accurate at a few hundred bytes), "
        "hard (k-hot bits, the paper's Algorithm 1) or soft (softmax weights).",
    ),
    k: int = typer.Option(
        D.k, "--k", min=1, max=65535, help="Adapters selected per site by a hard mask (capped at N)."
    ),
    epochs: int = typer.Option(D.epochs, "--epochs", min=1, max=EPOCHS_MAX, help="Passes over the training rows."),
    batch_size: int = typer.Option(D.batch_size, "--batch-size", min=1, max=BATCH_MAX, help="Rows per training step."),
    lr_masks: float = typer.Option(
        D.lr_masks, "--lr-masks", min=0, max=LR_MAX, help="Learning rate of the mask logits."
    ),
    lr_ln: float = typer.Option(
        D.lr_ln, "--lr-ln", min=0, max=LR_MAX, help="Learning rate of the bottleneck LayerNorm affine."
    ),
    lr_head: float = typer.Option(D.lr_head, "--lr-head", min=0, max=LR_MAX, help="Learning rate of the task head."),
    lr_adapter: float = typer.Option(
        D.lr_adapter, "--lr-adapter", min=0, max=LR_MAX, help="Learning rate of the LoRA matrices (single-adapter)."
    ),
    warmup: Optional[float] = typer.Option(
        None,
        "--warmup",
        min=0,
        max=0.99,
        help="Share of the steps over which the learning rates rise linearly from 0, before the linear decay "
        "(default: 0.06 for x-peft, measured at 3 seeds; 0 for the baselines).",
    ),
    nu: float = typer.Option(D.nu, "--nu", min=0, max=100, help="Gumbel noise level ν (hard masks)."),
    tau: float = typer.Option(D.tau, "--tau", min=1e-6, max=100, help="Softmax temperature τ (hard masks)."),
    seed: int = typer.Option(
        D.seed, "--seed", min=0, max=SEED_MAX, help="Seed of the data order, holdout, noise and head."
    ),
    max_length: int = typer.Option(
        D.max_length, "--max-length", min=1, max=TOKENS_MAX, help="Tokens per example (truncation)."
    ),
    val_fraction: float = typer.Option(
        D.val_fraction,
        "--val-fraction",
        min=0,
        max=0.99,
        help="Share of --data held out for validation when --eval-data is absent.",
    ),
    eval_data: OptPath = typer.Option(None, "--eval-data", help="Validation data (instead of a holdout)."),
    task: Literal["auto", "classification", "regression"] = typer.Option(
        D.task, "--task-type", help="auto, classification or regression."
    ),
    text_column: str = TextCol,
    text_pair_column: OptStr = PairCol,
    label_column: str = LabelCol,
    device: str = DeviceOpt,
    checkpoint_every: int = typer.Option(
        0,
        "--checkpoint-every",
        min=0,
        max=ROWS_MAX,
        help="Save a resumable checkpoint every N steps "
        "(beside the output, NAME.ckpt.safetensors; removed when the fit ends).",
    ),
    resume: bool = typer.Option(
        False,
        "--resume",
        help="Continue from the checkpoint of an interrupted fit "
        "(same options and data); the result is the same as an uninterrupted fit.",
    ),
    log: OptPath = typer.Option(None, "--log", help="Loss log, JSONL (default: beside the output, NAME.fit.jsonl)."),
    gradient_checkpointing: bool = typer.Option(
        False,
        "--gradient-checkpointing",
        help="Recompute activations in the backward pass: less memory for long inputs, more time.",
    ),
    cuda_graphs: bool = typer.Option(
        False,
        "--cuda-graphs",
        help="Capture each training step as a CUDA graph "
        "(one per length bucket of 32 tokens; batches padded to --batch-size rows): "
        "the GPU runs steps back to back, with fused LN and mixing kernels. "
        "Single-process fits on a GPU.",
    ),
    own_head: bool = typer.Option(
        False,
        "--own-head",
        help="Train a head for the profile even when the bank "
        "carries a shared one (mtl banks); by default it is reused and not stored.",
    ),
    devices: int = DevicesOpt,
    precision: Literal["auto", "bf16", "fp32"] = PrecisionOpt,
    param_dtype: Literal["float16", "float32"] = typer.Option(
        D.param_dtype,
        "--param-dtype",
        help="How the .xpm stores the LN and head: float16 (half the bytes; "
        "no accuracy lost on the frontier) or float32.",
    ),
    model: OptStr = ModelOpt,
    json_out: bool = JsonOpt,
    quiet: bool = QuietOpt,
) -> None:
    """Fit a profile's masks (and its LN and head) over a bank, from a labelled file.

    With --profile-column, fit every profile of the file in one run (the same result per
    profile as fitting each alone with the same seed, on a PLM without dropout).

    With --devices N (or under accelerate launch / torchrun) the fit is data-parallel: a
    multi-profile fit deals the profiles to the processes, a single profile's batches are split
    and the gradients summed.
    """
    # The fit's settings, built and checked once for a lone and a multi-profile fit alike.
    cfg = FitConfig(
        method=method,
        mask=mask,
        k=k,
        lr_adapter=lr_adapter,
        epochs=epochs,
        batch_size=batch_size,
        lr_masks=lr_masks,
        lr_ln=lr_ln,
        lr_head=lr_head,
        warmup=warmup,
        nu=nu,
        tau=tau,
        seed=seed,
        max_length=max_length,
        val_fraction=val_fraction,
        task=task,
        device=device,
        labels=label_list(labels),
        head="own" if own_head else "auto",
        gradient_checkpointing=gradient_checkpointing,
        precision=precision,
        cuda_graphs=cuda_graphs,
        param_dtype=param_dtype,
    )
    cfg.validate()
    from ..bank import Bank
    from ..baselines import write_adapter
    from ..data import Columns, load_examples
    from ..distributed import is_main_process
    from ..tasks import load_split, preset
    from ..train import fit_profile
    from ..xpm import read_xpm_full, write_xpm

    devices_launch(devices, device)
    main = is_main_process()  # in a data-parallel run only rank 0 prints and writes
    quiet = quiet or not main
    cols = Columns(text=text_column, text_pair=text_pair_column, label=label_column, profile=profile_column)
    if profile_column:
        if profile or task_preset or resume or checkpoint_every:
            raise UsageError(
                "--profile-column fits every profile of --data; it does not combine with --profile, "
                "--task, --checkpoint-every or --resume"
            )
        if gradient_checkpointing or cuda_graphs:
            raise UsageError("--gradient-checkpointing and --cuda-graphs are for single-profile fits")
        return _fit_many(
            cfg,
            data=data,
            cols=cols,
            bank_dir=bank_dir,
            model=model,
            out=out,
            log=log,
            eval_data=eval_data,
            max_batch_rows=max_batch_rows,
            json_out=json_out,
            quiet=quiet,
            main=main,
        )
    if not profile:
        raise UsageError("give --profile NAME (or --profile-column COLUMN to fit every profile in the file)")
    if (data is None) == (task_preset is None):
        raise UsageError("give the training data with --data FILE or --task PRESET (one of them)")
    check_name(profile, "--profile")  # before any path is made from it (names.py)
    out = out or Path(profile_filename(profile) + (".xpm" if method == "x-peft" else ".safetensors"))
    if (method == "x-peft") != (out.suffix == ".xpm"):
        raise UsageError("x-peft profiles are written as .xpm, baselines as .safetensors")
    stem = out.name.removesuffix(".xpm")
    log = log or out.with_name(stem + ".fit.jsonl")
    ckpt_path = out.with_name(stem + ".ckpt.safetensors")
    if checkpoint_every < 0:
        raise UsageError("--checkpoint-every must be 0 (off) or positive")
    if task_preset:
        p = preset(task_preset)
        train = load_split(p, "train", data_dir).examples
        valid = (
            load_examples(eval_data, cols)
            if eval_data
            else (load_split(p, "dev", data_dir).examples if p.dev else None)
        )
        cfg = replace(cfg, task=p.task_type)
    else:
        train = load_examples(data, cols)
        valid = load_examples(eval_data, cols) if eval_data else None
    bank = Bank.load(bank_dir, model=model)
    what = (
        f"{mask} masks over N={bank.n}" + (f" (k={min(k, bank.n)})" if mask == "hard" else "")
        if method == "x-peft"
        else method
    )
    if main:  # the profile, its log and checkpoint go beside each other: make their folder, as -o DIR/ does
        out.parent.mkdir(parents=True, exist_ok=True)
    output.note(f"fitting {profile!r}: {len(train)} rows, {what}", quiet or json_out)
    with output.progress(f"fit {profile}", enabled=not (quiet or json_out)) as update:
        result = fit_profile(
            bank,
            train,
            profile,
            cfg,
            eval_data=valid,
            on_step=update,
            log_path=log,
            checkpoint_path=ckpt_path if (checkpoint_every or resume) else None,
            checkpoint_every=checkpoint_every,
            resume=resume,
        )
    if not main:
        return
    remember_columns(result.profile, cols)
    if method == "x-peft":
        size = write_xpm(result.profile, out)
        sections, k_used = read_xpm_full(out).sizes, result.profile.k
    else:
        size, sections, k_used = write_adapter(result.profile, out), None, None
    ckpt_path.unlink(missing_ok=True)  # the profile is safely written; the checkpoint has done its job
    res = {
        "profile": profile,
        "method": method,
        "output": str(out),
        "bytes": size,
        "sections": sections,
        "mask": mask if method == "x-peft" else None,
        "n": bank.n,
        "k": k_used,
        "task": result.profile.task,
        "labels": result.profile.labels,
        "train_rows": result.profile.meta["fit"]["train_rows"],
        "steps": result.steps,
        "seconds": round(result.seconds, 2),
        "final_loss": next((h["loss"] for h in reversed(result.history) if "loss" in h), None),
        "val": result.val_metrics,
        "warning": result.warning,
        "log": str(log),
        "bank_hash": bank.bank_hash,
    }
    if json_out:
        output.emit_json(res)
    elif not quiet:
        output.warn(result.warning)
        val = ""
        if result.val_metrics:
            val = ", ".join(f"{k} {v:.3f}" for k, v in result.val_metrics.items() if k != "n" and isinstance(v, float))
            val = f"; validation ({result.val_metrics['n']} rows): {val}"
        output.stdout.print(f"wrote {out} ({size} bytes) in {result.seconds:.1f}s, {result.steps} steps{val}")


def remember_columns(profile, cols) -> None:
    """Keep the data's column names in the profile's metadata when they are not the defaults, so that
    `eval` reads the same columns without being told again."""
    from ..data import Columns

    default = Columns()
    if (cols.text, cols.text_pair, cols.label) != (default.text, default.text_pair, default.label):
        profile.meta.setdefault("fit", {})["columns"] = {
            "text": cols.text,
            "text_pair": cols.text_pair,
            "label": cols.label,
        }


def _fit_many(cfg, *, data, cols, bank_dir, model, out, log, eval_data, max_batch_rows, json_out, quiet, main) -> None:
    from ..bank import Bank
    from ..data import load_examples
    from ..multifit import fit_profiles, write_profiles

    if data is None:
        raise UsageError("--profile-column needs --data FILE")
    if eval_data is not None:
        raise UsageError("--eval-data does not combine with --profile-column (each profile holds out --val-fraction)")
    out = out or Path("profiles")
    if out.suffix == ".xps" and cfg.method != "x-peft":
        raise UsageError("an .xps store holds x-peft profiles; baselines are written to a folder")
    train = load_examples(data, cols)
    bank = Bank.load(bank_dir, model=model)
    groups = train.by_profile()
    output.note(f"fitting {len(groups)} profiles in one run: {len(train)} rows, {cfg.method}", quiet or json_out)
    log = log or (out.with_suffix(".fit.jsonl") if out.suffix == ".xps" else out / "fit.jsonl")
    if out.suffix != ".xps" and main:
        out.mkdir(parents=True, exist_ok=True)
    with output.progress(f"fit {len(groups)} profiles", enabled=not (quiet or json_out)) as update:
        result = fit_profiles(
            bank,
            train,
            cfg,
            shared_head="own" if cfg.head == "own" else "auto",
            max_batch_rows=max_batch_rows,
            on_step=update,
            log_path=log,
        )
    if not main:
        return
    for prof in result.profiles.values():
        remember_columns(prof, cols)
    files, total = write_profiles(result, out)
    method, mask = cfg.method, cfg.mask
    accs = [m["accuracy"] for m in result.val_metrics.values() if "accuracy" in m]
    res = {
        "profiles": len(result.names),
        "method": method,
        "output": str(out),
        "bytes": total,
        "mean_bytes": round(total / max(1, len(result.names)), 1),
        "files": {n: f for n, (f, _) in files.items()} or None,
        "n": bank.n,
        "mask": mask if method == "x-peft" else None,
        "steps": result.steps,
        "seconds": round(result.seconds, 2),
        "val": result.val_metrics,
        "val_mean_accuracy": (sum(accs) / len(accs)) if accs else None,
        "collapse": result.collapse,
        "warning": (result.collapse or {}).get("warning"),
        "log": str(log),
        "bank_hash": bank.bank_hash,
    }
    if json_out:
        output.emit_json(res)
    elif not quiet:
        output.warn(res["warning"])
        val = f"; mean validation accuracy {res['val_mean_accuracy']:.3f}" if accs else ""
        output.stdout.print(
            f"wrote {len(result.names)} profiles to {out} ({total} bytes) in {result.seconds:.1f}s, "
            f"{result.steps} steps{val}"
        )
