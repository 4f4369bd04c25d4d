"""Printing: one JSON object on stdout with --json, rich tables otherwise, progress on stderr."""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.text import Text

stdout = Console(highlight=False, soft_wrap=True)
stderr = Console(stderr=True, highlight=False, soft_wrap=True)


def plain(value) -> Text:
    """A value for a terminal table, shown as text: no rich markup is interpreted, and control
    characters (escape codes in a hostile profile name or label) are shown escaped, never sent raw."""
    import unicodedata

    s = str(value)
    return Text("".join(repr(c)[1:-1] if unicodedata.category(c).startswith("C") else c for c in s))


EMITTED = []  # set once a command has written its JSON object: a failure after it adds no second one


def emit_json(obj: dict) -> None:
    """One compact line (JSON Lines: `jq -c`, log shippers, one object per line of a loop's output);
    XPEFT_JSON_INDENT=2 indents it for reading."""
    import os

    indent = os.environ.get("XPEFT_JSON_INDENT", "")
    if indent.isdigit() and 0 < int(indent) <= 16:
        text = json.dumps(obj, indent=int(indent), default=str)
    else:
        text = json.dumps(obj, separators=(",", ":"), default=str)
    sys.stdout.write(text + "\n")
    sys.stdout.flush()
    EMITTED.append(True)


def warn(msg: str | None) -> None:
    """A result the user must not miss (a fit that learned nothing): one line on stderr."""
    if msg:
        stderr.print(plain(f"xpeft: warning: {msg}"))


def note(msg: str, quiet: bool = False) -> None:
    """Human chatter goes to stderr so that stdout stays clean for pipes."""
    if not quiet:
        stderr.print(msg)


@contextmanager
def progress(description: str, enabled: bool):
    """A rich progress bar on stderr, only when stderr is a terminal and output is not --json/--quiet.

    Yields a callback(step, total, loss).
    """
    if not enabled or not stderr.is_terminal:
        yield lambda step, total, loss: None
        return
    columns = [
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TextColumn("loss {task.fields[loss]:.4f}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    ]
    with Progress(*columns, console=stderr, transient=False) as bar:
        tasks = []  # the bar appears at the first step, not as "0/None loss nan" while the model loads

        def update(step: int, total: int, loss: float) -> None:
            if not tasks:
                tasks.append(bar.add_task(description, total=total, loss=loss))
            bar.update(tasks[0], completed=step, total=total, loss=loss)

        yield update
