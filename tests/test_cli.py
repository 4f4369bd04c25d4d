"""The command line end to end on a tiny model: the card's commands, --json, exit codes, one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from xpeft_cli.errors import EXIT_DATA, EXIT_INTEGRITY, EXIT_MODEL, EXIT_USAGE

from helpers import one_line_error, sentiment_rows, write_jsonl


def test_card_commands_work_as_written(fitted, cli):
    assert (fitted / "bank" / "bank.json").is_file()
    assert (fitted / "alice.xpm").is_file() and (fitted / "alice.fit.jsonl").is_file()
    code, out, _ = cli("inspect", "alice.xpm")
    assert code == 0 and "alice" in out and "checksum" in out
    log = [json.loads(l) for l in (fitted / "alice.fit.jsonl").read_text().splitlines()]
    assert any("loss" in r for r in log) and any("val" in r for r in log)


def test_json_outputs_are_one_object(fitted, cli):
    code, out, _ = cli("inspect", "alice.xpm", "--bank", "bank", "--json")
    info = json.loads(out)
    assert code == 0 and info["bank_match"] is True and info["n"] == 16 and info["k"] == 4
    assert info["labels"] == ["neg", "pos"] and len(info["selected"]) == info["L"] == 4
    assert all(len(s["A"]) == 4 for s in info["selected"])
    assert sum(info["sections"].values()) == info["bytes"]
    code, out, _ = cli("eval", "--profile", "alice.xpm", "--data", "alice_test.jsonl", "--json")
    ev = json.loads(out)
    assert code == 0 and ev["metrics"]["n"] == 12 and 0 <= ev["metrics"]["accuracy"] <= 1
    assert {"macro_f1", "mcc"} <= set(ev["metrics"])
    code, out, _ = cli("report", "memory", "--bank", "bank", "--profile", "alice.xpm", "--json")
    rep = json.loads(out)
    m = rep["measured"][0]
    assert m["xpm_bytes"] == (fitted / "alice.xpm").stat().st_size
    assert m["lora_safetensors_bytes"] > m["xpm_masks_only_bytes"]
    code, out, _ = cli("bank", "verify", "--json")
    assert code == 0 and json.loads(out)["ok"] is True


def test_fit_json_and_predictions_file(fitted, cli):
    code, out, _ = cli("fit", "-p", "al2", "-d", "alice.jsonl", "--epochs", "1", "--mask", "soft", "--json")
    res = json.loads(out)
    assert code == 0 and res["output"] == "al2.xpm" and res["mask"] == "soft" and res["k"] == 0
    code, _, _ = cli("eval", "-p", "al2.xpm", "-d", "alice_test.jsonl", "--predictions", "preds.jsonl")
    rows = [json.loads(l) for l in (fitted / "preds.jsonl").read_text().splitlines()]
    assert code == 0 and len(rows) == 12 and {r["prediction"] for r in rows} <= {"pos", "neg"}


def test_bad_data_rows(fitted, cli):
    (fitted / "nocol.jsonl").write_text('{"sentence": "good", "label": "pos"}\n')
    (fitted / "empty.jsonl").write_text("")
    (fitted / "badline.jsonl").write_text('{"text": "good", "label": "pos"}\n{"text": oops}\n')
    (fitted / "nolabel.jsonl").write_text('{"text": "good", "label": "pos"}\n{"text": "bad"}\n')
    cases = [
        (("fit", "-p", "x", "-d", "nocol.jsonl"), "missing column 'text'"),
        (("fit", "-p", "x", "-d", "empty.jsonl"), "empty"),
        (("fit", "-p", "x", "-d", "badline.jsonl"), "line 2"),
        (("fit", "-p", "x", "-d", "nolabel.jsonl"), "row 2"),
        (("fit", "-p", "x", "-d", "missing.jsonl"), "no such data file"),
    ]
    for args, needle in cases:
        code, out, err = cli(*args)
        assert code == EXIT_DATA, (args, err)
        one_line_error(err)
        assert needle in err, err
    assert not (fitted / "x.xpm").exists()


def test_wrong_bank_and_damaged_files(fitted, cli):
    assert cli("bank", "create", "--random", "-n", "16", "--seed", "1", "-o", "bank2")[0] == 0
    for args in (
        ("eval", "-p", "alice.xpm", "-d", "alice_test.jsonl", "--bank", "bank2"),
        ("inspect", "alice.xpm", "--bank", "bank2"),
    ):
        code, _, err = cli(*args)
        assert code == EXIT_INTEGRITY
        one_line_error(err)
    data = (fitted / "alice.xpm").read_bytes()
    (fitted / "cut.xpm").write_bytes(data[: len(data) // 2])
    (fitted / "text.xpm").write_bytes(b"hello, I am not a profile\n")
    for f in ("cut.xpm", "text.xpm"):
        for args in (("inspect", f), ("eval", "-p", f, "-d", "alice_test.jsonl")):
            code, _, err = cli(*args)
            assert code == EXIT_INTEGRITY, (args, err)
            one_line_error(err)


def test_existing_bank_is_not_overwritten(fitted, cli):
    before = (fitted / "bank" / "bank.json").read_bytes()
    code, _, err = cli("bank", "create", "--random", "-n", "8")
    assert code == EXIT_USAGE and "--force" in err
    assert (fitted / "bank" / "bank.json").read_bytes() == before


def test_usage_errors(cli):
    for args in (("fit", "-p", "x", "-d", "a.jsonl", "--mask", "medium"), ("fit", "--nope"), ("bank", "create")):
        code, _, err = cli(*args)
        assert code == EXIT_USAGE, (args, err)
        one_line_error(err)


def test_missing_model(cli, monkeypatch):
    monkeypatch.setenv("XPEFT_MODEL", "/no/such/model")
    code, _, err = cli("bank", "create", "--random", "-n", "4")
    assert code == EXIT_MODEL
    one_line_error(err)


def test_missing_bank(cli):
    write_jsonl(Path("a.jsonl"), sentiment_rows(4))
    code, _, err = cli("fit", "-p", "x", "-d", "a.jsonl")
    assert code == EXIT_DATA and "no bank at bank" in err


def test_table1_exact(cli):
    code, out, _ = cli("report", "memory", "--json")
    rows = json.loads(out)["table1"]["rows"]
    got = [(r["mode"], r["n"], r["trainable_display"], r["bytes_display"]) for r in rows]
    assert got == [
        ("x_peft (hard)", 100, "3.5K", "0.3K"),
        ("x_peft (hard)", 200, "5.9K", "0.6K"),
        ("x_peft (hard)", 400, "10.7K", "1.2K"),
        ("x_peft (soft)", 100, "3.5K", "10K"),
        ("x_peft (soft)", 200, "5.9K", "20K"),
        ("x_peft (soft)", 400, "10.7K", "40K"),
        ("single_adapter", None, "884.7K", "3.5M"),
    ]
    assert [r["trainable"] for r in rows] == [3552, 5952, 10752, 3552, 5952, 10752, 884736]
    assert [r["bytes"] for r in rows] == [312, 600, 1200, 9600, 19200, 38400, 3538944]


def test_subprocess_console_script_no_traceback(tmp_path, tiny_bert):
    """The installed entry point, as a shell would run it."""
    (tmp_path / "broken.xpm").write_bytes(b"\x89XPM\r\n\x1a\n" + b"\x00" * 10)
    env = dict(os.environ, XPEFT_MODEL=str(tiny_bert))
    p = subprocess.run(
        [sys.executable, "-m", "xpeft_cli", "inspect", str(tmp_path / "broken.xpm")],
        capture_output=True,
        text=True,
        env=env,
    )
    assert p.returncode == EXIT_INTEGRITY and p.stdout == ""
    one_line_error(p.stderr)


def _commands():
    """(path, click command) of every leaf command of the CLI, e.g. (["bank", "create"], …)."""
    import typer

    from xpeft_cli.cli.app import app

    found = []

    def walk(cmd, path):
        if hasattr(cmd, "commands"):
            for name, sub in cmd.commands.items():
                walk(sub, path + [name])
            return
        found.append((path, cmd))

    walk(typer.main.get_command(app), [])
    return found


def test_every_command_has_json_and_quiet():
    missing = []
    for path, cmd in _commands():
        opts = {o for p in cmd.params for o in p.opts}
        missing.extend(" ".join(path) + f" {flag}" for flag in ("--json", "--quiet") if flag not in opts)
    assert missing == []


def test_quiet_prints_nothing_and_keeps_exit_codes(fitted, cli):
    write_jsonl(
        fitted / "req.jsonl",
        [{"profile": "alice", "text": "the film was good"}, {"profile": "alice", "text": "the food was awful"}],
    )
    quiet_runs = [
        ("inspect", "alice.xpm", "--bank", "bank"),
        ("eval", "-p", "alice.xpm", "-d", "alice_test.jsonl"),
        ("verify", "alice.xpm"),
        ("bank", "info"),
        ("bank", "verify"),
        ("bank", "hash"),
        ("report", "memory"),
        ("pack", "alice.xpm", "-o", "alice.xps"),
        ("unpack", "alice.xpm", "-o", "alice.json"),
        ("predict", "-P", ".", "--data", "req.jsonl", "-o", "answers.jsonl"),
    ]
    for args in quiet_runs:
        code, out, err = cli(*args, "--quiet")
        assert (code, out, err) == (0, "", ""), args
    assert len((fitted / "answers.jsonl").read_text().splitlines()) == 2
    code, out, _ = cli("predict", "-P", ".", "--data", "req.jsonl", "-q")  # stdout is the data: still written
    assert code == 0 and len(out.splitlines()) == 2
    code, out, _ = cli("predict", "-P", ".", "--data", "req.jsonl", "-o", "a2.jsonl", "--json")
    assert code == 0 and json.loads(out) | {"seconds": 0} == {
        "output": "a2.jsonl",
        "answers": 2,
        "profiles": 1,
        "seconds": 0,
    }
    code, out, err = cli("predict", "-P", ".", "--data", "req.jsonl", "--json")
    assert code == 2 and "--json needs --output" in err
    assert json.loads(out) == {"error": "--json needs --output: without it stdout carries the answers", "exit_code": 2}
    code, out, _ = cli("bank", "hash", "--json")
    assert code == 0 and len(json.loads(out)["bank_hash"]) == 64
    # failures still say why, on one line, with their exit code
    cli("bank", "create", "--random", "-n", "4", "-o", "bank2", "--seed", "9", "-q")
    code, out, err = cli("inspect", "alice.xpm", "--bank", "bank2", "-q")
    assert code == 4 and out == ""
    one_line_error(err)


@pytest.mark.parametrize(
    "opt",
    [["--rank", "0"], ["--init-scale", "nan"], ["--init-scale", "inf"], ["--init-scale", "0"], ["--init-scale", "-1"]],
)
def test_bank_create_refuses_a_zero_rank_and_non_finite_scales(cli, opt):
    code, _, err = cli("bank", "create", "--random", "-n", "8", *opt)
    assert code == 2
    one_line_error(err)


def test_version_and_device_validation(cli, fitted):
    code, out, _ = cli("--version")
    assert code == 0 and out.startswith("xpeft ")
    for dev in ("gpu", "cuda:7" if not __import__("torch").cuda.is_available() else "tpu"):
        code, _, err = cli("eval", "-p", "alice.xpm", "-d", "alice_test.jsonl", "--device", dev)
        assert code == 2 and "--device" in err
        one_line_error(err)


def test_inspect_shows_hostile_names_escaped(cli, fitted):
    """A profile name or label with terminal escape codes or rich markup is shown as text, never sent raw."""
    from xpeft_cli.xpm import read_xpm, write_xpm

    p = read_xpm(fitted / "alice.xpm")
    p.name, p.labels = "evil\x1b[2J[bold]x", ["neg\x07", "[red]pos"]
    write_xpm(p, fitted / "evil.xpm")
    code, out, err = cli("inspect", "evil.xpm")
    assert code == 0, err
    assert "\x1b" not in out and "\x07" not in out
    assert "evil\\x1b[2J[bold]x" in out and "[red]pos" in out and "neg\\x07" in out


def _numeric_options():
    """(command path, option flag, int or float, min, max) of every numeric option of every command."""
    import typing

    found = []
    for path, cmd in _commands():
        for p in cmd.params:
            td = getattr(p, "type_descriptor", None)
            ann = getattr(td, "annotation", None)
            base = [t for t in (typing.get_args(ann) or (ann,)) if t in (int, float)]
            if base:
                found.append((path, p.opts[0], base[0], p.min, p.max))
    return found


def test_every_numeric_option_has_a_range():
    opts = _numeric_options()
    assert len(opts) > 40
    assert [(" ".join(c), f) for c, f, _, lo, hi in opts if lo is None or hi is None] == []


def test_every_numeric_option_refuses_nan_inf_negative_and_huge(cli):
    """0 is legal for some options (seeds, --cache-gb); below the minimum, NaN, ±inf and huge never are."""
    for path, flag, kind, lo, hi in _numeric_options():
        values = ["nan", "inf", "-inf", "1e300"] if kind is float else ["99999999999999999999999"]
        values.append(str(lo - 1 if kind is int else lo - 1.0))
        for v in values:
            code, out, err = cli(*path, flag, v)
            assert code == 2, (path, flag, v, code, err)
            assert flag in err and out == "", (path, flag, v, err)
            one_line_error(err)


def test_the_command_line_starts_without_torch():
    """--help and shell completion import the CLI but no model code (3.0 s → 0.5 s for `xpeft --help` here)."""
    import subprocess
    import sys

    code = (
        "import sys, xpeft_cli, xpeft_cli.cli.app; "
        "from xpeft_cli.cli.app import app; import typer; typer.main.get_command(app); "
        "print(sorted(m for m in ('torch', 'transformers', 'datasets', 'fastapi', 'numpy') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    # the library's names still import on first use
    out = subprocess.run(
        [sys.executable, "-c", "from xpeft_cli import Bank, FitConfig, read_xpm; print(Bank.__name__)"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out.strip() == "Bank"


def test_readme_exit_code_table_one_case_each(cli, fitted, monkeypatch):
    """Every code README.md documents is what a case of it exits with."""
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    table = readme[readme.index("### Exit codes") : readme.index("### Library")]
    documented = [int(c) for c in re.findall(r"^\| (\d) \|", table, re.M)]
    assert documented == [0, 1, 2, 3, 4, 5, 6]
    (fitted / "cut.xpm").write_bytes((fitted / "alice.xpm").read_bytes()[:-9])
    cases = {
        0: ("inspect", "alice.xpm"),
        2: ("fit", "-p", "x", "-d", "alice.jsonl", "--epochs", "0"),
        3: ("fit", "-p", "x", "-d", "missing.jsonl"),
        4: ("inspect", "cut.xpm"),
        5: ("bank", "create", "--random", "-n", "4", "-o", "b5", "--model", str(fitted / "no-such-model")),
    }
    for code, args in cases.items():
        got, _, err = cli(*args)
        assert got == code, (code, args, err)
        if code:
            one_line_error(err)
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    before = (fitted / "alice.xpm").read_bytes()
    resource.setrlimit(resource.RLIMIT_FSIZE, (200, hard))  # as `ulimit -f`: Python ignores SIGXFSZ, writes fail
    try:
        got, _, err = cli("pack", "alice.xpm", "-o", "alice.xpm")
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert got == 6 and "cannot write" in err and "File too large" in err, err
    one_line_error(err)
    assert (fitted / "alice.xpm").read_bytes() == before  # the old file is kept
    import xpeft_cli.describe

    def bug(path):
        raise RuntimeError("a bug")

    monkeypatch.setattr(xpeft_cli.describe, "describe_file", bug)
    got, _, err = cli("inspect", "alice.xpm")
    assert got == 1 and err.startswith("xpeft: internal error: RuntimeError: a bug") and "Traceback" not in err


def test_json_errors_are_one_json_object_on_stdout(cli, fitted):
    (fitted / "cut.xpm").write_bytes((fitted / "alice.xpm").read_bytes()[:-9])
    for args, code in (
        (("inspect", "cut.xpm", "--json"), 4),
        (("fit", "-p", "x", "-d", "nope.jsonl", "--json"), 3),
        (("fit", "-p", "x", "-d", "alice.jsonl", "--epochs", "0", "--json"), 2),
    ):
        got, out, err = cli(*args)
        assert got == code
        obj = json.loads(out)
        assert obj["exit_code"] == code and obj["error"] and err.startswith("xpeft: error:")
    got, out, _ = cli("inspect", "cut.xpm")  # without --json stdout stays empty
    assert got == 4 and out == ""


def test_verify_json_failure_is_its_own_single_object(cli, fitted):
    """verify --json reports failures in its object; the failure adds no second one."""
    (fitted / "cut.xpm").write_bytes((fitted / "alice.xpm").read_bytes()[:-9])
    code, out, _ = cli("verify", "alice.xpm", "cut.xpm", "--json")
    assert code == 4 and json.loads(out)["failed"] == 1


def test_every_option_has_help_and_one_meaning_for_profiles():
    """Help for every option of every command; `--profiles` always names a collection of profiles."""
    missing = [
        (" ".join(path), p.opts)
        for path, cmd in _commands()
        for p in cmd.params
        if getattr(p, "param_type_name", "") == "option" and not p.help
    ]
    assert not missing, missing
    with_profiles = sorted(
        " ".join(path) for path, cmd in _commands() for p in cmd.params if "--profiles" in getattr(p, "opts", [])
    )
    assert with_profiles == ["eval", "predict", "serve"]  # a folder or store of profiles; a count is --profile-count


def test_metadata_that_verifies_but_cannot_be_used_is_exit_4(cli, fitted):
    """A file whose checksums hold can still carry what the model cannot use: a max_length of "abc" or
    -5, an LN wider than the bank's rank, a classification head without labels. eval refuses each with
    exit 4 and one line, where it used to crash (exit 1)."""
    from dataclasses import replace

    import numpy as np

    from xpeft_cli.xpm import read_xpm, write_xpm

    good = read_xpm(fitted / "alice.xpm")
    cases = {
        "abc.xpm": replace(good, meta={"fit": {"max_length": "abc"}}),
        "neg.xpm": replace(good, meta={"fit": {"max_length": -5}}),
        "wide.xpm": replace(
            good,
            ln_weight=np.ones((good.L, good.ln_weight.shape[1] + 3), np.float32),
            ln_bias=np.zeros((good.L, good.ln_weight.shape[1] + 3), np.float32),
        ),
        "nolabels.xpm": replace(good, labels=None),
    }
    for name, prof in cases.items():
        write_xpm(prof, fitted / name)
        assert cli("verify", name)[0] == 0  # the file itself is sound
        code, _, err = cli("eval", "-p", name, "-d", "alice_test.jsonl")
        assert code == 4, (name, err)
        one_line_error(err)


def test_a_profile_file_to_score_is_an_argument(cli, fitted):
    """`--profile` names a profile (fit); the file `eval` scores and `report memory` measures is an
    argument. The old `-p FILE` spelling still works, hidden from --help."""
    code, out, _ = cli("eval", "alice.xpm", "-d", "alice_test.jsonl", "--json")
    assert code == 0 and json.loads(out)["profile"] == "alice"
    code, old, _ = cli("eval", "-p", "alice.xpm", "-d", "alice_test.jsonl", "--json")
    assert code == 0 and json.loads(old)["metrics"] == json.loads(out)["metrics"]
    code, _, err = cli("eval", "alice.xpm", "-p", "alice.xpm", "-d", "alice_test.jsonl")
    assert code == 2 and "once" in err
    code, out, _ = cli("report", "memory", "alice.xpm", "--bank", "bank", "--json")
    assert code == 0 and json.loads(out)["measured"][0]["profile"] == "alice"
    help_text = cli("eval", "--help")[1]
    assert "--profile " not in help_text and "FILE" in help_text
