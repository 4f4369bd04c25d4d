"""The committed man pages are what the CLI generates now, and they render without warnings."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from xpeft_cli.cli.manpages import all_pages

MAN = Path(__file__).resolve().parents[1] / "man"


def test_committed_pages_are_current():
    pages = all_pages()
    stale = [name for name, text in pages.items() if not (MAN / name).is_file() or (MAN / name).read_text() != text]
    extra = sorted(p.name for p in MAN.glob("xpeft*") if p.name not in pages)
    assert not stale and not extra, (
        f"stale man pages {stale}, extra {extra}: run 'python -m xpeft_cli.cli.manpages man'"
    )
    assert {
        "xpeft.1",
        "xpeft-fit.1",
        "xpeft-bank-create.1",
        "xpeft-inspect.1",
        "xpeft-eval.1",
        "xpeft-report-memory.1",
        "xpeft-xpm.5",
    } <= set(pages)


def test_every_page_documents_exit_status_and_options():
    for name, text in all_pages().items():
        if name.endswith(".1"):
            assert ".SH EXIT STATUS" in text and ".SH ENVIRONMENT" in text, name
    fit = all_pages()["xpeft-fit.1"]
    for opt in ("\\-\\-mask", "\\-\\-k", "\\-\\-lr\\-masks", "\\-\\-eval\\-data", "\\-\\-json"):
        assert opt in fit


@pytest.mark.skipif(shutil.which("groff") is None, reason="groff not installed")
def test_pages_render_cleanly():
    for page in sorted(MAN.glob("xpeft*")):
        r = subprocess.run(["groff", "-man", "-Tutf8", "-ww", "-z", str(page)], capture_output=True, text=True)
        assert r.returncode == 0 and r.stderr == "", (page.name, r.stderr)
