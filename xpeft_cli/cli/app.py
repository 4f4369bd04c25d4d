"""Entry point: builds the Typer app and turns every error into one line and an exit code."""

from __future__ import annotations

import os
import sys

import click
import typer

from ..errors import EXIT_INTERNAL, EXIT_USAGE, XpeftError

# Typer ≥ 0.20 raises exceptions of its vendored click (typer._click); older ones of click itself.
_CLICK = [click.exceptions]
try:
    from typer._click import exceptions as _typer_click_exceptions  # type: ignore

    _CLICK.append(_typer_click_exceptions)
except ImportError:
    pass
_EXIT = (typer.Exit, click.exceptions.Exit)
_ABORT = (typer.Abort, click.exceptions.Abort)
_CLICK_ERROR = tuple(m.ClickException for m in _CLICK)
_NO_ARGS_HELP = tuple(getattr(m, "NoArgsIsHelpError") for m in _CLICK if hasattr(m, "NoArgsIsHelpError"))

app = typer.Typer(
    name="xpeft",
    help="X-PEFT profiles: fit tiny per-user masks over one shared bank of LoRA adapters.\n\n"
    "Exit codes: 0 ok, 1 internal error, 2 usage, 3 bad input data, 4 integrity failure, 5 model missing, "
    "6 cannot write (disk full; the old file is kept).",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            print(f"xpeft {version('xpeft')}")
        except PackageNotFoundError:  # run from a source tree that is not installed
            print("xpeft (not installed)")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_print_version, is_eager=True, help="Print xpeft's version and exit."
    ),
) -> None:
    """X-PEFT profiles: fit tiny per-user masks over one shared bank of LoRA adapters."""


def _register() -> None:
    from . import (
        bank_cmd,
        bench_cmd,
        convert_cmd,
        eval_cmd,
        export_cmd,
        fit_cmd,
        inspect_cmd,
        model_cmd,
        pack_cmd,
        plot_cmd,
        predict_cmd,
        report_cmd,
        serve_cmd,
    )

    app.add_typer(bank_cmd.app, name="bank")
    app.add_typer(report_cmd.app, name="report")
    app.add_typer(bench_cmd.app, name="bench")
    app.add_typer(convert_cmd.app, name="convert")
    app.add_typer(plot_cmd.app, name="plot")
    app.add_typer(model_cmd.app, name="model")
    app.command("fit")(fit_cmd.fit)
    app.command("inspect")(inspect_cmd.inspect)
    app.command("eval")(eval_cmd.evaluate)
    app.command("predict")(predict_cmd.predict)
    app.command("serve")(serve_cmd.serve)
    app.command("export")(export_cmd.export)
    app.command("pack")(pack_cmd.pack)
    app.command("unpack")(pack_cmd.unpack)
    app.command("verify")(pack_cmd.verify)


_register()


def _one_line(msg: str) -> str:
    return " ".join(str(msg).split())


ARGV: list[str] = []  # this run's arguments, for `--devices` to start the same command again


def _json_error(message: str, code: int) -> None:
    """Under --json, a failure is also one JSON object on stdout, so a script reading stdout sees it."""
    from . import output

    if "--json" in ARGV and not output.EMITTED:  # verify --json reports its failures in its own object
        import json

        sys.stdout.write(json.dumps({"error": message, "exit_code": code}) + "\n")
        sys.stdout.flush()


def _internal(exc: BaseException) -> int:
    """A bug: one line, with a way to see more (XPEFT_DEBUG=1 re-raises for the traceback)."""
    if os.environ.get("XPEFT_DEBUG"):
        raise exc
    print(
        f"xpeft: internal error: {exc.__class__.__name__}: {_one_line(exc)[:300]} (set XPEFT_DEBUG=1 for a traceback)",
        file=sys.stderr,
    )
    return EXIT_INTERNAL


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; never lets a traceback reach the user unless XPEFT_DEBUG=1."""
    command = typer.main.get_command(app)
    ARGV[:] = sys.argv[1:] if argv is None else list(argv)
    from . import output

    output.EMITTED.clear()
    try:
        rv = command.main(args=argv, prog_name="xpeft", standalone_mode=False)
        code = rv if isinstance(rv, int) else 0
    except XpeftError as exc:
        print(f"xpeft: error: {_one_line(exc)}", file=sys.stderr)
        code = exc.exit_code
        _json_error(_one_line(exc), code)
    except _EXIT as exc:
        code = exc.exit_code
    except _ABORT:
        print("xpeft: aborted", file=sys.stderr)
        code = 130
    except _NO_ARGS_HELP as exc:  # a bare group: its help, as --help would print
        print(exc.format_message(), file=sys.stderr)
        code = EXIT_USAGE
    except _CLICK_ERROR as exc:  # bad options: click's UsageError, BadParameter, …
        hint = ""
        ctx = getattr(exc, "ctx", None)
        if ctx is not None:
            hint = f" (see '{ctx.command_path} --help')"
        print(f"xpeft: error: {_one_line(exc.format_message())}{hint}", file=sys.stderr)
        code = exc.exit_code if exc.exit_code else EXIT_USAGE
        _json_error(_one_line(exc.format_message()), code)
    except KeyboardInterrupt:
        print("xpeft: interrupted", file=sys.stderr)
        code = 130
    except OSError as exc:  # a write outside atomic_path (a log, a folder) on a full disk: exit 6, not a bug
        from ..errors import WRITE_ERRNOS, write_error

        if exc.errno not in WRITE_ERRNOS or os.environ.get("XPEFT_DEBUG"):
            code = _internal(exc)
        else:
            err = write_error(exc.filename or "an output", exc)
            print(f"xpeft: error: {_one_line(err)}", file=sys.stderr)
            code = err.exit_code
            _json_error(_one_line(err), code)
    except Exception as exc:  # a bug: still one line, with a way to see more
        code = _internal(exc)
    if code:
        from ..distributed import mark_failed

        mark_failed()
    sys.exit(code)
