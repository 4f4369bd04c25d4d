"""Generate man pages from the Typer app: `python -m xpeft_cli.cli.manpages man/`.

The option lists come from the CLI itself, so a test can tell when the committed pages are stale;
EXIT STATUS, ENVIRONMENT, FILES and EXAMPLES are written here by hand.
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from .. import __version__
from .app import app

DATE = "2026-11"
EXIT_STATUS = [
    ("0", "Success."),
    ("1", "Internal error (a bug); set XPEFT_DEBUG=1 for a traceback."),
    ("2", "Usage: bad or conflicting options, or an existing bank without --force."),
    ("3", "Bad input data: no such file, unparsable line, missing column, empty or unknown label, no bank folder."),
    ("4", "Integrity: damaged, truncated or forged .xpm file, a profile of another bank, bank or PLM hash mismatch."),
    ("5", "The PLM is not available offline."),
]
ENVIRONMENT = [
    ("XPEFT_BANK", "Bank folder used when --bank is not given (default ./bank)."),
    ("XPEFT_MODEL", "PLM folder or locally cached hub id (default: the bundled all-MiniLM-L6-v2)."),
    ("XPEFT_DEBUG", "When set, internal errors show a Python traceback."),
    (
        "RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT",
        "Set by --devices, accelerate launch or torchrun: this process is one worker of a data-parallel "
        "fit; only rank 0 prints and writes.",
    ),
]
FILES = [
    ("bank/bank.json", "Bank manifest with the bank hash (formats/bank.md)."),
    ("bank/adapters-<hash>.safetensors", "Bank tensors, for trained or materialised banks (named by content)."),
    ("PROFILE.xpm", "A profile (formats/xpm.md, xpeft-xpm(5))."),
    ("PROFILE.fit.jsonl", "Loss and validation log of a fit, one JSON object per line."),
]
EXAMPLES = {
    "xpeft": [
        "xpeft bank create --random -n 400",
        "xpeft fit --profile alice --data alice.jsonl",
        "xpeft inspect alice.xpm",
        "xpeft eval alice.xpm --data test.jsonl --json | jq .metrics",
    ],
    "xpeft-bank-create": [
        "xpeft bank create --random -n 400",
        "xpeft bank create --random -n 100 --model ./my-bert --targets query,value -o bank-qv",
        "xpeft bank create --from-profiles authors.jsonl --profile-column author --profiles 40 "
        "--method mtl -o bank-mtl --devices 2",
    ],
    "xpeft-bank-verify": ["xpeft bank verify bank || echo 'bank damaged'"],
    "xpeft-fit": [
        "xpeft fit --profile alice --data alice.jsonl",
        "xpeft fit --profile sst2-lora --task sst2 --data-dir ../shared/data --method single-adapter",
        "xpeft fit -p bob -d bob.csv --text-column review --label-column stars --mask soft --epochs 5",
        "xpeft fit -d authors.jsonl --profile-column author -o profiles/ --devices 2",
        "accelerate launch --num_processes 2 -m xpeft_cli fit -d authors.jsonl --profile-column author -o profiles/",
    ],
    "xpeft-inspect": ["xpeft inspect alice.xpm --bank bank", "xpeft inspect alice.xpm --json | jq .sections"],
    "xpeft-eval": ["xpeft eval alice.xpm --data alice_test.jsonl --predictions preds.jsonl"],
    "xpeft-report-memory": ["xpeft report memory", "xpeft report memory alice.xpm --bank bank --json"],
    "xpeft-bench-glue": [
        "xpeft bench glue --data-dir ../shared/data --tasks rte --tasks mrpc --n 100 --n 400",
        "xpeft bench glue --data-dir data --methods x-peft --mask hard -o runs/hard",
    ],
    "xpeft-pack": ["xpeft pack profiles/ -o all.xps", "xpeft pack sofia.xpm --k 50 -o sofia-hard.xpm"],
    "xpeft-predict": [
        "xpeft predict --profiles profiles/ < requests.jsonl > answers.jsonl",
        'echo \'{"profile": "alice", "text": "What a match!"}\' | xpeft predict -P all.xps',
    ],
    "xpeft-serve": [
        "xpeft serve --profiles profiles/ --port 8080",
        'curl -s localhost:8080/v1/classify -d \'{"profile": "alice", "text": "What a match!"}\'',
        "curl -s --data-binary @erin.xpm localhost:8080/v1/profiles",
    ],
    "xpeft-verify": ["xpeft verify profiles/*.xpm --bank bank || echo 'some profiles failed'"],
}


def _esc(text: str) -> str:
    text = text.replace("\\", "\\e").replace("-", "\\-")
    text = "".join(c if ord(c) < 128 else f"\\[u{ord(c):04X}]" for c in text)  # groff's Unicode escape
    return "\n".join(("\\&" + l) if l.startswith((".", "'")) else l for l in text.splitlines())


def _walk(cmd, path: list[str]):
    yield path, cmd
    for name, sub in sorted(getattr(cmd, "commands", {}).items()):
        yield from _walk(sub, path + [name])


def _option_lines(cmd, name: str) -> list[str]:
    """Each parameter's names and help as click itself would print them (defaults, env vars)."""
    ctx = cmd.context_class(cmd, info_name=name)
    out = []
    for p in cmd.params:
        if getattr(p, "hidden", False) or p.name in ("install_completion", "show_completion"):
            continue
        record = p.get_help_record(ctx)
        if record is None:
            continue
        names, help_ = record
        out += [".TP", f"\\fB{_esc(names)}\\fR", _esc(help_.strip() or "-")]
    return out


def render(path: list[str], cmd) -> tuple[str, str]:
    page = "-".join(path)
    title = page.upper()
    help_text = (cmd.help or "").strip()
    summary = help_text.splitlines()[0] if help_text else ""
    lines = [
        f'.TH {_esc(title)} 1 "{DATE}" "xpeft {__version__}" "xpeft manual"',
        ".SH NAME",
        f"{_esc(page)} \\- {_esc(summary)}",
        ".SH SYNOPSIS",
        f"\\fB{_esc(' '.join(path))}\\fR "
        + (
            "COMMAND [OPTIONS]"
            if hasattr(cmd, "commands")
            else "[OPTIONS]" + "".join(f" {a.name.upper()}" for a in cmd.params if a.param_type_name == "argument")
        ),
    ]
    lines += [".SH DESCRIPTION", _esc(help_text)]
    if hasattr(cmd, "commands"):
        lines += [".SH COMMANDS"]
        for name, sub in sorted(cmd.commands.items()):
            lines += [
                ".TP",
                f"\\fB{_esc(name)}\\fR",
                _esc((sub.help or "").strip().splitlines()[0] if sub.help else ""),
            ]
    opts = _option_lines(cmd, path[-1])
    if opts:
        lines += [".SH OPTIONS"] + opts
    lines += [".SH EXIT STATUS"]
    for code, text in EXIT_STATUS:
        lines += [".TP", f"\\fB{code}\\fR", _esc(text)]
    lines += [".SH ENVIRONMENT"]
    for name, text in ENVIRONMENT:
        lines += [".TP", f"\\fB{name}\\fR", _esc(text)]
    lines += [".SH FILES"]
    for name, text in FILES:
        lines += [".TP", f"\\fI{_esc(name)}\\fR", _esc(text)]
    if page in EXAMPLES:
        lines += [".SH EXAMPLES"]
        for ex in EXAMPLES[page]:
            lines += [".PP", ".nf", f"  {_esc(ex)}", ".fi"]
    see = sorted({"-".join(p) for p, _ in _walk(typer.main.get_command(app), ["xpeft"])} - {page})
    lines += [".SH SEE ALSO", ", ".join(f"\\fB{_esc(s)}\\fR(1)" for s in see) + ", \\fBxpeft\\-xpm\\fR(5)"]
    return f"{page}.1", "\n".join(lines) + "\n"


XPM5 = """.TH XPEFT-XPM 5 "{date}" "xpeft {version}" "xpeft manual"
.SH NAME
xpeft\\-xpm \\- the .xpm profile file format
.SH DESCRIPTION
An .xpm file holds one X\\-PEFT profile: two mask tensors M_A and M_B (L rows of N adapters each) over one
bank, named by the bank's 32\\-byte SHA\\-256 hash, and optionally the profile's bottleneck LayerNorm affine,
task head, label names and metadata.
.PP
Layout, little\\-endian: magic 89 58 50 4D 0D 0A 1A 0A; major and minor version (u8 each); mask encoding
(u8: 0 hard bits, 1 soft f16, 2 soft f32); reserved u8; N, L, k (u16 each); bank hash (32 bytes); name length
(u8) and UTF\\-8 name; masks (hard rows: ceil(N/8) bytes, most significant bit first, exactly k bits set);
sections (u8 id, u32 length, payload: 0x01 LN, 0x02 head, 0x03 labels, 0x80 meta; ids below 0x80 are
critical); CRC\\-32 of all preceding bytes (u32).
.PP
A masks\\-only hard profile takes 2*L*ceil(N/8) + 55 + name\\-length bytes.
.PP
The normative specification is formats/xpm.md in the xpeft source tree.
.SH SEE ALSO
\\fBxpeft\\-inspect\\fR(1), \\fBxpeft\\-fit\\fR(1)
"""


def all_pages() -> dict[str, str]:
    pages = dict(render(path, cmd) for path, cmd in _walk(typer.main.get_command(app), ["xpeft"]))
    pages["xpeft-xpm.5"] = XPM5.format(date=DATE, version=__version__)
    return pages


def main(argv: list[str] | None = None) -> None:
    out = Path((argv or sys.argv[1:] or ["man"])[0])
    out.mkdir(parents=True, exist_ok=True)
    for name, text in all_pages().items():
        (out / name).write_text(text)
    print(f"wrote {len(all_pages())} pages to {out}")


if __name__ == "__main__":
    main()
