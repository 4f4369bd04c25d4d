"""`xpeft bank …`: create, describe and verify adapter banks."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import List, Literal, Optional

import typer
from rich.table import Table

from ..config import FitConfig
from ..errors import UsageError
from ..plm import load_encoder, resolve_model
from . import output
from .common import (
    BATCH_MAX,
    EPOCHS_MAX,
    LR_MAX,
    SEED_MAX,
    TOKENS_MAX,
    DeviceOpt,
    DevicesOpt,
    JsonOpt,
    LabelCol,
    OptPath,
    OptStr,
    PairCol,
    PrecisionOpt,
    QuietOpt,
    TextCol,
    devices_launch,
    label_list,
)

app = typer.Typer(help="Create, describe and verify adapter banks.", no_args_is_help=True)


def _summary(bank: "Bank", folder: Path) -> dict:  # noqa: F821 (a Bank; not imported: torch stays unloaded)
    return {
        "bank": str(folder),
        "bank_hash": bank.bank_hash,
        "kind": bank.kind,
        "n_adapters": bank.n,
        "rank": bank.rank,
        "sites": len(bank.sites),
        "model": bank.plm.ref,
        "model_sha256": bank.plm.fingerprint,
        "generator": bank.generator,
    }


@app.command("create")
def create(
    random: bool = typer.Option(
        False, "--random", help="A random bank, regenerated from its seed (stores no tensors)."
    ),
    n: int = typer.Option(400, "-n", "--n-adapters", min=1, max=65535, help="Number of adapters N per site."),
    rank: int = typer.Option(None, "--rank", "-r", min=1, max=65535, help="Bottleneck b (default: hidden size / 16)."),
    seed: int = typer.Option(0, "--seed", min=0, max=SEED_MAX, help="Generator seed."),
    targets: OptStr = typer.Option(
        None,
        "--targets",
        help="Comma-separated Linear module-name suffixes (default: both output projections of each block, "
        "attention and feed-forward; attention.output.dense alone is the paper's one site per block).",
    ),
    init_scale: float = typer.Option(1.0, "--init-scale", min=1e-6, max=1e6, help="Scale of the random B matrices."),
    ln: Optional[Literal["layernorm", "none"]] = typer.Option(
        None,
        "--ln",
        help="Bottleneck normalisation of every site: layernorm (the "
        "paper's LN(x Â) B̂; the default for random banks) or none (x Â B̂: profiles then export "
        "exactly as LoRA adapters; the default for trained banks, whose adapters carry "
        "their own scale).",
    ),
    from_profiles: OptPath = typer.Option(
        None,
        "--from-profiles",
        help="Train the bank: one LoRA per profile of this labelled file (the --profile-count largest profiles).",
    ),
    profile_column: str = typer.Option("profile", "--profile-column", help="Column naming each row's profile."),
    profiles: int = typer.Option(
        40,
        "--profile-count",
        min=1,
        max=1_000_000,
        help="How many profiles (the ones with the most rows, ties by name) give the bank its adapters.",
    ),
    method: Literal["sa", "mtl"] = typer.Option(
        "sa",
        "--method",
        help="sa: a LoRA and a head per profile; mtl: the LoRAs trained "
        "jointly with one shared head, which the bank keeps for its profiles.",
    ),
    from_peft: bool = typer.Option(
        False,
        "--from-peft",
        help="Import the peft LoRA folders given as arguments "
        "(adapter_config.json + adapter_model.safetensors), one adapter each.",
    ),
    adapters: Optional[List[Path]] = typer.Argument(
        None, help="peft adapter folders (with --from-peft).", show_default=False
    ),
    epochs: int = typer.Option(10, "--epochs", min=1, max=EPOCHS_MAX, help="Training epochs (--from-profiles)."),
    batch_size: int = typer.Option(
        16, "--batch-size", min=1, max=BATCH_MAX, help="Rows per profile per step (--from-profiles)."
    ),
    lr_adapter: float = typer.Option(
        FitConfig.lr_adapter, "--lr-adapter", min=0, max=LR_MAX, help="LoRA learning rate."
    ),
    lr_head: float = typer.Option(FitConfig.lr_head, "--lr-head", min=0, max=LR_MAX, help="Head learning rate."),
    max_length: int = typer.Option(128, "--max-length", min=1, max=TOKENS_MAX, help="Tokens per example."),
    text_column: str = TextCol,
    text_pair_column: OptStr = PairCol,
    label_column: str = LabelCol,
    labels: OptStr = typer.Option(
        None,
        "--labels",
        help="Comma-separated class names in output order (--from-profiles; default: those in the data, sorted).",
    ),
    val_fraction: float = typer.Option(
        FitConfig.val_fraction,
        "--val-fraction",
        min=0,
        max=0.99,
        help="Share of each profile's rows held out to report its adapter's accuracy (--from-profiles; 0: none).",
    ),
    device: str = DeviceOpt,
    model: OptStr = typer.Option(
        None,
        "--model",
        envvar="XPEFT_MODEL",
        show_envvar=True,
        help="PLM folder or cached hub id (default: the bundled all-MiniLM-L6-v2).",
    ),
    output_dir: Path = typer.Option(Path("bank"), "--output", "-o", envvar="XPEFT_BANK", help="Bank folder to write."),
    materialize: bool = typer.Option(
        False, "--materialize", help="Also write the tensors (adapters-<hash>.safetensors)."
    ),
    force: bool = typer.Option(False, "--force", help="Replace an existing bank in that folder."),
    devices: int = DevicesOpt,
    precision: Literal["auto", "bf16", "fp32"] = PrecisionOpt,
    json_out: bool = JsonOpt,
    quiet: bool = QuietOpt,
) -> None:
    """Create a bank over a PLM: random (--random -n N), trained from profiles (--from-profiles FILE
    --method sa|mtl), or imported from peft LoRA folders (--from-peft DIR...).

    --from-profiles runs data-parallel with --devices N (or under accelerate launch): the
    profiles are dealt to the processes; an mtl bank's shared head sums its gradients over them.
    """
    from ..bank import MANIFEST, Bank, SiteConfig
    from ..bank_build import from_peft as from_peft_folders
    from ..bank_build import from_profiles as build_from_profiles
    from ..data import Columns, load_examples
    from ..distributed import is_main_process

    if devices != 1 and from_profiles is None:
        raise UsageError("--devices is for training a bank (--from-profiles)")
    devices_launch(devices, device)
    main = is_main_process()
    quiet = quiet or not main
    kinds = [random, from_profiles is not None, from_peft]
    if sum(kinds) != 1:
        raise UsageError("say which bank to make: --random, --from-profiles FILE or --from-peft DIR... (one of them)")
    if adapters and not from_peft:
        raise UsageError(f"unexpected argument {adapters[0]} (adapter folders go with --from-peft)")
    ln = ln or ("layernorm" if random else "none")  # the choices are declared: nothing else reaches here
    if (output_dir / MANIFEST).exists() and not force:
        raise UsageError(
            f"{output_dir} already holds a bank; pass --force to replace it "
            "(profiles fitted on it will no longer match)"
        )
    t0 = time.perf_counter()
    plm = resolve_model(model)
    encoder, _ = load_encoder(plm)
    config = SiteConfig(ln=ln == "layernorm")
    report = None
    if random:
        bank = Bank.create_random(
            plm, encoder, n=n, rank=rank, seed=seed, targets=targets, init_scale=init_scale, config=config
        )
    elif from_peft:
        bank = from_peft_folders(plm, encoder, list(adapters or []), config=config)
    else:
        cols = Columns(text=text_column, text_pair=text_pair_column, label=label_column, profile=profile_column)
        data = load_examples(from_profiles, cols)
        cfg = FitConfig(
            labels=label_list(labels),
            val_fraction=val_fraction,
            epochs=epochs,
            batch_size=batch_size,
            lr_adapter=lr_adapter,
            lr_head=lr_head,
            seed=seed,
            max_length=max_length,
            device=device,
            precision=precision,
        )
        output.note(f"training {profiles} adapters ({method}) from {from_profiles}", quiet or json_out)
        with output.progress(f"bank {method}", enabled=not (quiet or json_out)) as update:
            bank, report = build_from_profiles(
                plm, encoder, data, profiles, method, cfg, rank=rank, targets=targets, config=config, on_step=update
            )
    if not main:
        return
    bank.save(output_dir, materialize=materialize)
    info = _summary(bank, output_dir) | {
        "materialized": materialize or bank.kind != "random",
        "seconds": round(time.perf_counter() - t0, 2),
        "shared_head": bank.head is not None,
        "training": report,
    }
    if json_out:
        output.emit_json(info)
    elif not quiet:
        output.stdout.print(
            f"bank {output_dir}: N={bank.n} {bank.kind} adapters × {len(bank.sites)} sites, "
            f"rank {bank.rank}, model {plm.ref}" + (", shared head" if bank.head is not None else "")
        )
        output.stdout.print(f"bank hash {bank.bank_hash}")
        accs = [a for a in ((report or {}).get("val_accuracy") or {}).values() if isinstance(a, float)]
        if accs:
            output.stdout.print(
                f"held out {val_fraction:.0%} of each profile's rows: mean accuracy of its adapter "
                f"{sum(accs) / len(accs):.3f} over {len(accs)} profiles"
            )
        if bank.config.ln:
            output.note(
                "note: its profiles do not export as peft LoRA adapters (LN(x Â) B̂ is not a LoRA); "
                "--ln none makes a bank whose profiles do",
                quiet,
            )


@app.command("info")
def info(
    bank_dir: Path = typer.Argument(Path("bank"), envvar="XPEFT_BANK", help="Bank folder."),
    json_out: bool = JsonOpt,
    quiet: bool = QuietOpt,
) -> None:
    """Show a bank's manifest (fast: does not regenerate or hash the tensors)."""
    from ..bank import read_manifest

    m = read_manifest(bank_dir)
    if json_out:
        output.emit_json(m)
        return
    if quiet:
        return
    t = Table(show_header=False, box=None)
    for key in ("bank_hash", "kind", "n_adapters", "rank", "dtype", "tensors"):
        t.add_row(key, str(m.get(key)))
    t.add_row("model", f"{m['plm']['ref']} (sha256 {m['plm']['fingerprint']})")
    t.add_row("sites", ", ".join(s["name"] for s in m["sites"]))
    ln = bool(m.get("config", {}).get("ln", True)) if isinstance(m.get("config"), dict) else True
    t.add_row(
        "export to peft",
        "no: the sites normalise the bottleneck (LN(x Â) B̂), which no LoRA equals; a bank made with "
        "--ln none exports exactly"
        if ln
        else "yes, exactly (xpeft export --to peft)",
    )
    if m.get("generator"):
        t.add_row("generator", json.dumps(m.get("generator")))
    if m.get("head"):
        t.add_row(
            "shared head",
            f"{m['head']['task']}, {m['head']['outputs']} outputs"
            + (f": {', '.join(m['head']['labels'])}" if m["head"].get("labels") else ""),
        )
    if m.get("origin"):
        o = dict(m["origin"])
        listed = o.pop("profiles", None) or o.pop("adapters", None)
        t.add_row(
            "made by",
            json.dumps(o)
            + (
                f"; from {len(listed)}: {', '.join(map(str, listed[:5]))}" + (" …" if len(listed) > 5 else "")
                if listed
                else ""
            ),
        )
    output.stdout.print(t)


@app.command("verify")
def verify(
    bank_dir: Path = typer.Argument(Path("bank"), envvar="XPEFT_BANK", help="Bank folder."),
    model: OptStr = typer.Option(None, "--model", envvar="XPEFT_MODEL", help="Where to find the PLM."),
    json_out: bool = JsonOpt,
    quiet: bool = QuietOpt,
) -> None:
    """Regenerate or read the tensors and check them against the recorded bank hash (exit 4 if not)."""
    from ..bank import Bank

    t0 = time.perf_counter()
    bank = Bank.load(bank_dir, model=model)
    res = _summary(bank, bank_dir) | {"ok": True, "seconds": round(time.perf_counter() - t0, 2)}
    if json_out:
        output.emit_json(res)
    elif not quiet:
        output.stdout.print(f"ok: {bank_dir} matches bank hash {bank.bank_hash}")


@app.command("hash")
def hash_(
    bank_dir: Path = typer.Argument(Path("bank"), envvar="XPEFT_BANK", help="Bank folder."),
    json_out: bool = JsonOpt,
    quiet: bool = QuietOpt,
) -> None:
    """Print the recorded bank hash (for scripts); --quiet only checks the manifest reads."""
    from ..bank import read_manifest

    h = read_manifest(bank_dir)["bank_hash"]
    if json_out:
        output.emit_json({"bank": str(bank_dir), "bank_hash": h})
    elif not quiet:
        output.stdout.print(h)
