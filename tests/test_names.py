"""Profile names: legal ones are data, never paths; the rest are refused (exit 3) before any work."""

from __future__ import annotations

import pytest

from xpeft_cli.errors import DataError
from xpeft_cli.names import check_name, profile_filename

from helpers import one_line_error, sentiment_rows, write_jsonl


@pytest.mark.parametrize(
    "name", ["alice", "Lee Moran, Contributor", "a/b", "../../etc/passwd", "/abs", "José ☃", "x" * 255, "é" * 127]
)
def test_legal_names_pass_and_their_files_stay_in_the_folder(name):
    assert check_name(name) == name
    stem = profile_filename(name)
    assert "/" not in stem and stem not in ("", ".", "..") and not stem.startswith(".") and len(stem) <= 87


@pytest.mark.parametrize(
    "name, why",
    [
        ("", "non-empty"),
        ("x" * 256, "1..255 UTF-8 bytes"),
        ("é" * 128, "got 256"),
        ("a\tb", "U+0009"),
        ("a\x00b", "U+0000"),
        ("a\x1b[2J", "U+001B"),
        ("a\x7f", "U+007F"),
        ("a\x85", "U+0085"),
        (7, "non-empty text"),
    ],
)
def test_illegal_names_are_refused_with_the_reason(name, why):
    with pytest.raises(DataError, match=why.replace("+", r"\+").replace(".", r"\.")):
        check_name(name)


def test_fit_refuses_bad_names_and_never_writes_outside(cli, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    write_jsonl(work / "d.jsonl", sentiment_rows(16, 0))
    assert cli("bank", "create", "--random", "-n", "8", "-o", "work/bank")[0] == 0
    import os

    os.chdir(work)
    for bad in ("x" * 300, "a\tb"):
        code, _, err = cli("fit", "--profile", bad, "--data", "d.jsonl", "--epochs", "1", "-q")
        assert code == 3
        one_line_error(err)
    for name in ("a/b", "../up", "/tmp/abs-xpeft-test"):
        code, _, err = cli("fit", "--profile", name, "--data", "d.jsonl", "--epochs", "1", "-q")
        assert code == 0, err
        assert (work / f"{profile_filename(name)}.xpm").is_file()
    assert not (tmp_path / "up.xpm").exists() and not list(tmp_path.glob("up*"))
    # many profiles from a data column: hostile values stay inside the output folder
    rows = [dict(r, author=a) for a in ("../../escape", "/etc/x", "ok") for r in sentiment_rows(12, 1)]
    write_jsonl(work / "many.jsonl", rows)
    code, _, err = cli(
        "fit", "--data", "many.jsonl", "--profile-column", "author", "-o", "profs", "--epochs", "1", "-q"
    )
    assert code == 0, err
    assert sorted(p.name for p in (work / "profs").glob("*.xpm")) == sorted(
        f"{profile_filename(n)}.xpm" for n in ("../../escape", "/etc/x", "ok")
    )
    assert not (tmp_path / "escape.xpm").exists()
    write_jsonl(work / "bad.jsonl", [dict(r, author="a\x07") for r in sentiment_rows(12, 1)])
    code, _, err = cli("fit", "--data", "bad.jsonl", "--profile-column", "author", "-o", "profs2", "--epochs", "1")
    assert code == 3 and "control character" in err
    one_line_error(err)


def test_unpack_npy_names_files_safely(cli, fitted):
    from xpeft_cli.xpm import read_xpm, write_xpm

    p = read_xpm(fitted / "alice.xpm")
    p.name = "../../evil"
    write_xpm(p, fitted / "forged.xpm")
    code, _, err = cli("unpack", "forged.xpm", "--npy", "arrays")
    assert code == 0, err
    stem = profile_filename("../../evil")
    assert (fitted / "arrays" / f"{stem}.json").is_file() and (fitted / "arrays" / f"{stem}.mask_a.npy").is_file()
    assert not (fitted.parent / "evil.json").exists()


def test_predict_never_turns_a_requested_name_into_a_path(cli, fitted, monkeypatch):
    import io
    import json

    (fitted / "profs").mkdir()
    (fitted / "outside").mkdir()
    (fitted / "outside" / "alice.xpm").write_bytes((fitted / "alice.xpm").read_bytes())
    (fitted / "profs" / "bob.xpm").write_bytes((fitted / "alice.xpm").read_bytes())  # renamed: holds "alice"
    for name, why in (("../outside/alice", "no profile '../outside/alice'"), ("bob", "holds the profile 'alice'")):
        monkeypatch.setattr("sys.stdin", io.StringIO(json.dumps({"profile": name, "text": "hi"}) + "\n"))
        code, out, err = cli("predict", "--profiles", "profs")
        assert code == 3 and why in err, err
        assert why in json.loads(out)["error"] and json.loads(out)["line"] == 1  # the line's error record
        one_line_error(err)


def test_bank_manifest_tensors_must_stay_in_the_folder(cli, fitted):
    import json

    m = json.loads((fitted / "bank" / "bank.json").read_text())
    m["tensors"] = "../alice.xpm"
    (fitted / "bank" / "bank.json").write_text(json.dumps(m))
    code, _, err = cli("bank", "verify")
    assert code == 4 and "inside the bank folder" in err
    one_line_error(err)


def test_non_finite_scores_are_null_not_nan(cli, fitted, monkeypatch):
    """Huge head weights overflow the logits: predict still prints strict JSON."""
    import io
    import json

    import numpy as np

    from xpeft_cli.xpm import read_xpm, write_xpm

    p = read_xpm(fitted / "alice.xpm")
    p.param_dtype = "float32"  # finite when stored, infinite once multiplied out
    p.head_weight = np.full_like(p.head_weight, 3e38)
    p.head_weight[1] *= -1
    (fitted / "profs").mkdir()
    write_xpm(p, fitted / "profs" / "alice.xpm")
    monkeypatch.setattr("sys.stdin", io.StringIO(json.dumps({"profile": "alice", "text": "a fine day"}) + "\n"))
    code, out, err = cli("predict", "--profiles", "profs")
    assert code == 0, err

    def refuse(c):
        raise ValueError(c)

    answer = json.loads(out, parse_constant=refuse)
    assert answer["score"] is None and answer["prediction"] in ("pos", "neg")


@pytest.mark.parametrize(
    "content, why",
    [
        (b'{"text": "a\xff b", "label": "pos"}\n', "not UTF-8 text (byte 0xff"),
        (b"[" * 100_000 + b"\n", "nested too deeply"),
    ],
)
def test_hostile_data_files_exit_3_with_the_line(cli, fitted, content, why, monkeypatch):
    import io

    (fitted / "bad.jsonl").write_bytes(content)
    code, _, err = cli("fit", "-p", "x", "-d", "bad.jsonl", "--epochs", "1")
    assert code == 3 and "bad.jsonl: line 1" in err and why in err
    one_line_error(err)
    if b"[" in content:  # the same through predict's request stream
        (fitted / "profs").mkdir()
        (fitted / "profs" / "alice.xpm").write_bytes((fitted / "alice.xpm").read_bytes())
        monkeypatch.setattr("sys.stdin", io.StringIO(content.decode()))
        code, _, err = cli("predict", "--profiles", "profs")
        assert code == 3 and "nested too deeply" in err
        one_line_error(err)
