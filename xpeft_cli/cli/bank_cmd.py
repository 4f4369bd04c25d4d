"""`xpeft bank …`: create, describe and verify adapter banks."""
from __future__ import annotations

import json
import time
from pathlib import Path

import typer
from rich.table import Table

from ..bank import MANIFEST, Bank, SiteConfig, read_manifest
from ..errors import UsageError
from ..plm import load_encoder, resolve_model
from . import output
from .common import JsonOpt, OptStr, QuietOpt

app = typer.Typer(help="Create, describe and verify adapter banks.", no_args_is_help=True)


def _summary(bank: Bank, folder: Path) -> dict:
    return {"bank": str(folder), "bank_hash": bank.bank_hash, "kind": bank.kind, "n_adapters": bank.n,
            "rank": bank.rank, "sites": len(bank.sites), "model": bank.plm.ref,
            "model_sha256": bank.plm.fingerprint, "generator": bank.generator}


@app.command("create")
def create(
    random: bool = typer.Option(False, "--random", help="A random bank, regenerated from its seed (stores no tensors)."),
    n: int = typer.Option(400, "-n", "--n-adapters", help="Number of adapters N per site."),
    rank: int = typer.Option(None, "--rank", "-r", help="Bottleneck b (default: hidden size / 16)."),
    seed: int = typer.Option(0, "--seed", help="Generator seed."),
    targets: OptStr = typer.Option(None, "--targets", help="Comma-separated Linear module-name suffixes "
                                   "(default: the attention output projection of each block)."),
    init_scale: float = typer.Option(1.0, "--init-scale", help="Scale of the random B matrices."),
    ln: str = typer.Option("layernorm", "--ln", help="Bottleneck normalisation of every site: layernorm (the "
                           "paper's LN(x Â) B̂) or none (x Â B̂: profiles then export exactly as LoRA adapters)."),
    model: OptStr = typer.Option(None, "--model", envvar="XPEFT_MODEL", show_envvar=True,
                                 help="PLM folder or cached hub id (default: the bundled all-MiniLM-L6-v2)."),
    output_dir: Path = typer.Option(Path("bank"), "--output", "-o", envvar="XPEFT_BANK", help="Bank folder to write."),
    materialize: bool = typer.Option(False, "--materialize", help="Also write the tensors (adapters.safetensors)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing bank in that folder."),
    json_out: bool = JsonOpt,
    quiet: bool = QuietOpt,
) -> None:
    """Create a bank of N adapters per site over a PLM."""
    if not random:
        raise UsageError("say which bank to make: --random (trained banks are not available yet)")
    if ln not in ("layernorm", "none"):
        raise UsageError("--ln must be 'layernorm' or 'none'")
    if (output_dir / MANIFEST).exists() and not force:
        raise UsageError(f"{output_dir} already holds a bank; pass --force to replace it "
                         "(profiles fitted on it will no longer match)")
    t0 = time.perf_counter()
    plm = resolve_model(model)
    encoder, _ = load_encoder(plm)
    bank = Bank.create_random(plm, encoder, n=n, rank=rank, seed=seed, targets=targets, init_scale=init_scale,
                              config=SiteConfig(ln=ln == "layernorm"))
    bank.save(output_dir, materialize=materialize)
    info = _summary(bank, output_dir) | {"materialized": materialize, "seconds": round(time.perf_counter() - t0, 2)}
    if json_out:
        output.emit_json(info)
    elif not quiet:
        output.stdout.print(f"bank {output_dir}: N={bank.n} adapters × {len(bank.sites)} sites, rank {bank.rank}, "
                            f"model {plm.ref}")
        output.stdout.print(f"bank hash {bank.bank_hash}")


@app.command("info")
def info(bank_dir: Path = typer.Argument(Path("bank"), envvar="XPEFT_BANK", help="Bank folder."),
         json_out: bool = JsonOpt) -> None:
    """Show a bank's manifest (fast: does not regenerate or hash the tensors)."""
    m = read_manifest(bank_dir)
    if json_out:
        output.emit_json(m)
        return
    t = Table(show_header=False, box=None)
    for key in ("bank_hash", "kind", "n_adapters", "rank", "dtype", "tensors"):
        t.add_row(key, str(m.get(key)))
    t.add_row("model", f"{m['plm']['ref']} (sha256 {m['plm']['fingerprint']})")
    t.add_row("sites", ", ".join(s["name"] for s in m["sites"]))
    t.add_row("generator", json.dumps(m.get("generator")))
    output.stdout.print(t)


@app.command("verify")
def verify(bank_dir: Path = typer.Argument(Path("bank"), envvar="XPEFT_BANK", help="Bank folder."),
           model: OptStr = typer.Option(None, "--model", envvar="XPEFT_MODEL", help="Where to find the PLM."),
           json_out: bool = JsonOpt) -> None:
    """Regenerate or read the tensors and check them against the recorded bank hash (exit 4 if not)."""
    t0 = time.perf_counter()
    bank = Bank.load(bank_dir, model=model)
    res = _summary(bank, bank_dir) | {"ok": True, "seconds": round(time.perf_counter() - t0, 2)}
    if json_out:
        output.emit_json(res)
    else:
        output.stdout.print(f"ok: {bank_dir} matches bank hash {bank.bank_hash}")


@app.command("hash")
def hash_(bank_dir: Path = typer.Argument(Path("bank"), envvar="XPEFT_BANK", help="Bank folder.")) -> None:
    """Print the recorded bank hash (for scripts)."""
    output.stdout.print(read_manifest(bank_dir)["bank_hash"])
