"""`xpeft pack`, `xpeft unpack`, `xpeft verify`: move profiles between forms and check them."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import List, Optional

import typer

from ..atomic import atomic_write_text, atomic_write_with
from ..errors import DataError, IntegrityError, UsageError, XpeftError
from ..names import profile_filename
from . import output
from .common import JsonOpt, OptPath, OptStr, QuietOpt
from .inspect_cmd import recorded_bank_hash


def _expand(paths: list[Path]) -> list[Path]:
    out = []
    for p in paths:
        if p.is_dir():
            out += sorted(p.glob("*.xpm")) + sorted(p.glob("*.xps"))
        elif p.exists():
            out.append(p)
        else:
            raise DataError(f"{p}: no such file")
    return out


def _profiles(path: Path, k: int | None = None) -> list:
    from ..store import Store, is_store
    from ..xpm import read_xpm

    if path.name.endswith(".safetensors"):  # a fit checkpoint (xpeft fit --checkpoint-every)
        from ..checkpoint import profile_from_checkpoint

        return [profile_from_checkpoint(path, k)]
    if is_store(path):
        with Store(path) as s:
            return list(s)
    return [read_xpm(path)]


def pack(
    inputs: List[Path] = typer.Argument(
        ..., help=".xpm files, stores, fit checkpoints (*.ckpt.safetensors), or folders of them."
    ),
    out: Path = typer.Option(..., "--output", "-o", help="An .xpm (one input) or an .xps store (any number)."),
    k: Optional[int] = typer.Option(
        None, "--k", min=1, max=65535, help="Turn soft profiles into hard ones selecting k adapters."
    ),
    masks_only: bool = typer.Option(False, "--masks-only", help="Drop LN, head, labels and meta (bank supplies them)."),
    json_out: bool = JsonOpt,
    quiet: bool = QuietOpt,
) -> None:
    """Convert profiles (soft → hard with --k, a fit checkpoint → .xpm, masks-only) or pack many into a store (.xps)."""
    from ..atomic import locked

    # Adding to a store reads it and writes it back: hold its lock throughout, so that two packs into
    # one store (or a pack and a serving `POST /v1/profiles`) follow each other and lose nothing.
    with locked(out) if out.suffix == ".xps" else contextlib.nullcontext():
        res = _pack(inputs, out, k, masks_only)
    if json_out:
        output.emit_json(res)
    elif not quiet:
        output.stdout.print(f"wrote {out}: {res['profiles']} profile(s), {res['bytes']:,} bytes")


def _pack(inputs: list[Path], out: Path, k: int | None, masks_only: bool) -> dict:
    from ..profile import convert
    from ..store import write_store
    from ..xpm import write_xpm

    profiles = [p for path in _expand(inputs) for p in _profiles(path, k)]
    if not profiles:
        raise DataError("no profiles found in the inputs")
    converted = [convert(p, k, masks_only) for p in profiles]
    if out.suffix == ".xps":
        size = write_store(converted, out)
    elif len(converted) == 1:
        size = write_xpm(converted[0], out)
    else:
        raise UsageError(f"{len(converted)} profiles need a store: name the output *.xps")
    return {
        "output": str(out),
        "profiles": len(converted),
        "bytes": size,
        "bytes_per_profile": round(size / len(converted), 1),
    }


def _save_npy(path, array) -> None:
    import numpy as np  # here, not at import: `xpeft --help` should not pay for numpy

    with open(path, "wb") as fh:
        np.save(fh, array, allow_pickle=False)


def unpack(
    file: Path = typer.Argument(..., help="An .xpm file or an .xps store."),
    out: OptPath = typer.Option(None, "--output", "-o", help="JSON file (default: stdout)."),
    npy: OptPath = typer.Option(None, "--npy", help="Write arrays as .npy files into this folder instead."),
    name: OptStr = typer.Option(None, "--name", help="From a store: only this profile (an O(1) lookup)."),
    json_out: bool = typer.Option(
        False,
        "--json",
        help="With --output or --npy: print one JSON object saying what "
        "was written (without them stdout carries the decoded JSON itself).",
    ),
    quiet: bool = QuietOpt,
) -> None:
    """Decode profiles to JSON (lossless) or to NumPy .npy arrays plus a JSON summary."""
    from ..profile import profile_to_json
    from ..store import Store, is_store
    from ..xpm import read_xpm

    if is_store(file):
        with Store(file) as s:
            profiles = [s.get(name)] if name else list(s)
    else:
        profiles = [read_xpm(file)]
    if npy:
        npy.mkdir(parents=True, exist_ok=True)
        for p in profiles:
            stem = profile_filename(p.name)  # a name read from a file is never a path (names.py)
            arrays = {
                "mask_a": p.mask_a,
                "mask_b": p.mask_b,
                "ln_weight": p.ln_weight,
                "ln_bias": p.ln_bias,
                "head_weight": p.head_weight,
                "head_bias": p.head_bias,
            }
            for key, arr in arrays.items():
                if arr is not None:
                    atomic_write_with(npy / f"{stem}.{key}.npy", lambda tmp, a=arr: _save_npy(tmp, a))
            summary = {k: v for k, v in profile_to_json(p).items() if k not in ("masks", "ln", "head")}
            atomic_write_text(npy / f"{stem}.json", json.dumps(summary, indent=2) + "\n")
        _unpacked({"output": str(npy), "format": "npy", "profiles": len(profiles)}, json_out, quiet)
        return
    doc = (
        profile_to_json(profiles[0])
        if len(profiles) == 1 and not is_store(file)
        else {"profiles": [profile_to_json(p) for p in profiles]}
    )
    text = json.dumps(doc) + "\n"
    if out:
        atomic_write_text(out, text)
        _unpacked({"output": str(out), "format": "json", "profiles": len(profiles)}, json_out, quiet)
    elif json_out:
        raise UsageError("--json needs --output or --npy: without them stdout carries the decoded profiles")
    else:
        output.stdout.file.write(text)


def _unpacked(res: dict, json_out: bool, quiet: bool) -> None:
    if json_out:
        output.emit_json(res)
    else:
        output.note(f"wrote {res['profiles']} profile(s) to {res['output']}", quiet)


def verify(
    files: List[Path] = typer.Argument(..., help="Profiles, stores, or folders of them."),
    bank: OptPath = typer.Option(None, "--bank", "-b", help="Also check each profile belongs to this bank."),
    json_out: bool = JsonOpt,
    quiet: bool = QuietOpt,
) -> None:
    """Check many profiles: readable, checksums intact, and (with --bank) of that bank. Exit 4 if any fails."""
    from ..store import Store, is_store
    from ..xpm import read_xpm_full

    expected = recorded_bank_hash(bank) if bank else None
    results = []
    for path in _expand(files):
        try:
            if is_store(path):
                with Store(path) as s:
                    profiles = list(s)
            else:
                profiles = [read_xpm_full(path).profile]
            wrong = [p.name for p in profiles if expected and p.bank_hash != expected]
            if wrong:
                raise IntegrityError(f"fitted on another bank: {', '.join(wrong[:5])}")
            results.append({"file": str(path), "ok": True, "profiles": len(profiles)})
        except XpeftError as exc:
            msg = str(exc).removeprefix(f"{path}: ")  # the file is named once, in "file"
            results.append({"file": str(path), "ok": False, "error": msg})
    failed = [r for r in results if not r["ok"]]
    if json_out:
        output.emit_json({"ok": not failed, "checked": len(results), "failed": len(failed), "files": results})
    elif not quiet:
        for r in results:
            output.stdout.print(f"ok    {r['file']}" if r["ok"] else f"FAIL  {r['file']}: {r['error']}")
    if failed:
        raise IntegrityError(f"{len(failed)} of {len(results)} file(s) failed verification")
