"""`xpeft predict`: many profiles in one request stream, answers in order, equal to `xpeft eval`."""

from __future__ import annotations

import io
import json

import pytest

from helpers import sentiment_rows, write_jsonl


def test_predict_mixed_profiles_matches_eval(cli, fitted, monkeypatch):
    # a second profile with three classes, so the head changes width between groups
    rows = [dict(r, label={"pos": "up", "neg": "down"}[r["label"]]) for r in sentiment_rows(30, 3)]
    rows += [{"text": "this game was quite fine", "label": "meh"} for _ in range(6)]
    write_jsonl(fitted / "dora.jsonl", rows)
    assert cli("fit", "-p", "dora", "-d", "dora.jsonl", "--epochs", "2", "--k", "4", "--quiet")[0] == 0
    test = [json.loads(l) for l in (fitted / "alice_test.jsonl").read_text().splitlines()]
    requests = [{"id": i, "profile": "alice" if i % 2 else "dora", "text": r["text"]} for i, r in enumerate(test)]
    (fitted / "profs").mkdir()
    for f in ("alice.xpm", "dora.xpm"):
        (fitted / "profs" / f).write_bytes((fitted / f).read_bytes())
    monkeypatch.setattr("sys.stdin", io.StringIO("".join(json.dumps(r) + "\n" for r in requests)))
    code, out, err = cli("predict", "--profiles", "profs")
    answers = [json.loads(l) for l in out.splitlines()]
    assert code == 0, err
    assert [a["id"] for a in answers] == list(range(len(requests)))
    assert all(
        a["prediction"] in ({"pos", "neg"} if a["profile"] == "alice" else {"up", "down", "meh"}) for a in answers
    )
    # the same answers as eval gives for each profile alone
    code, _, _ = cli("eval", "-p", "alice.xpm", "-d", "alice_test.jsonl", "--predictions", "alice_preds.jsonl")
    by_eval = [json.loads(l)["prediction"] for l in (fitted / "alice_preds.jsonl").read_text().splitlines()]
    assert [a["prediction"] for a in answers if a["profile"] == "alice"] == by_eval[1::2]
    # dora has sign masks (fit's default), alice hard ones: one batch serves both kinds
    assert json.loads(cli("inspect", "dora.xpm", "--json")[1])["mask"] == "sign"
    write_jsonl(fitted / "dora_test.jsonl", [dict(r, label={"pos": "up", "neg": "down"}[r["label"]]) for r in test])
    code, _, _ = cli("eval", "-p", "dora.xpm", "-d", "dora_test.jsonl", "--predictions", "dora_preds.jsonl")
    by_eval = [json.loads(l)["prediction"] for l in (fitted / "dora_preds.jsonl").read_text().splitlines()]
    assert code == 0 and [a["prediction"] for a in answers if a["profile"] == "dora"] == by_eval[0::2]
    # a store serves the same answers; a request for an unknown profile is bad input (exit 3)
    assert cli("pack", "profs", "-o", "all.xps")[0] == 0
    write_jsonl(fitted / "req.jsonl", requests)
    code, out2, _ = cli("predict", "--profiles", "all.xps", "--data", "req.jsonl")
    assert code == 0 and out2 == out
    write_jsonl(fitted / "bad.jsonl", [{"profile": "nobody", "text": "hi"}])
    code, _, err = cli("predict", "--profiles", "profs", "--data", "bad.jsonl")
    assert code == 3 and "nobody" in err
    # mixing per batch (--cache-gb 0) answers the same; CUDA graphs without a GPU is a usage error (2)
    code, out3, _ = cli("predict", "--profiles", "all.xps", "--data", "req.jsonl", "--cache-gb", "0")
    per_batch = [json.loads(l) for l in out3.splitlines()]
    assert code == 0 and [a["prediction"] for a in per_batch] == [a["prediction"] for a in answers]
    assert [a["score"] for a in per_batch] == pytest.approx([a["score"] for a in answers], abs=1e-5)
    code, _, err = cli("predict", "--profiles", "profs", "--data", "req.jsonl", "--device", "cpu", "--cuda-graphs")
    assert code == 2 and "CUDA" in err and len(err.strip().splitlines()) == 1


def test_predict_streams_answers_and_reports_bad_lines_in_place(cli, fitted):
    """An answer comes back while stdin is still open; a bad line gets an error record and the rest go on."""
    import os
    import subprocess
    import sys

    proc = subprocess.Popen(
        [sys.executable, "-m", "xpeft_cli", "predict", "--profiles", "alice.xpm", "--device", "cpu"],
        cwd=fitted,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ),
    )
    try:
        proc.stdin.write(json.dumps({"id": 1, "profile": "alice", "text": "what a fun film"}) + "\n")
        proc.stdin.flush()
        first = json.loads(proc.stdout.readline())  # before stdin is closed
        assert first["id"] == 1 and first["prediction"] in ("pos", "neg")
        assert set(first["scores"]) == {"pos", "neg"} and abs(sum(first["scores"].values()) - 1) < 1e-4
        assert first["score"] == max(first["scores"].values())
        proc.stdin.write(
            "{not json\n"
            + json.dumps({"id": 3, "profile": "nobody", "text": "x"})
            + "\n"
            + json.dumps({"id": 4, "profile": "alice"})
            + "\n"
            + json.dumps({"id": 5, "profile": "alice", "text": "so sad"})
            + "\n"
        )
        proc.stdin.close()
        rest = [json.loads(l) for l in proc.stdout.read().splitlines()]
        err = proc.stderr.read()
        proc.wait(60)
    finally:
        proc.kill()
    assert [r.get("line") for r in rest[:3]] == [2, 3, 4]
    assert "not valid JSON" in rest[0]["error"] and "no profile 'nobody'" in rest[1]["error"] and rest[1]["id"] == 3
    assert "needs string fields" in rest[2]["error"] and rest[3]["id"] == 5 and "prediction" in rest[3]
    assert proc.returncode == 3
    lines = [l for l in err.splitlines() if l.strip()]
    assert len(lines) == 1 and "3 of 5 requests could not be answered" in lines[0]


def test_eval_scores_rows_with_labels_the_profile_never_saw(cli, fitted):
    """A test label unseen in training does not stop `eval`: such rows count as errors and are counted."""
    import json as _json

    rows = sentiment_rows(12, 1) + [{"text": "the film was fine today", "label": "meh"}] * 3
    write_jsonl(fitted / "mixed.jsonl", rows)
    code, out, err = cli("eval", "-p", "alice.xpm", "--data", "mixed.jsonl", "--json")
    assert code == 0, err
    m = _json.loads(out)["metrics"]
    assert m["unseen_labels"] == {"meh": 3} and m["n"] == 15
    code, out, _ = cli("eval", "-p", "alice.xpm", "--data", "alice_test.jsonl", "--json")
    known = _json.loads(out)["metrics"]
    assert "unseen_labels" not in known
    assert m["accuracy"] == pytest.approx(known["accuracy"] * 12 / 15)  # alice_test.jsonl's 12 rows + 3 errors


def test_a_profile_remembers_its_columns(cli, fitted):
    """Fitted from other column names, a profile keeps them: `eval` reads the same columns untold, and a
    missing column's message names the option that picks another."""
    import json as _json

    rename = [{"sentence": r["text"], "y": r["label"]} for r in sentiment_rows(40, 0)]
    write_jsonl(fitted / "renamed.jsonl", rename)
    write_jsonl(
        fitted / "renamed_test.jsonl", [{"sentence": r["text"], "y": r["label"]} for r in sentiment_rows(12, 1)]
    )
    code, _, err = cli("fit", "-p", "ren", "-d", "renamed.jsonl", "--epochs", "1", "--quiet")
    assert code == 3 and "--text-column" in err
    code, _, err = cli(
        "fit",
        "-p",
        "ren",
        "-d",
        "renamed.jsonl",
        "--text-column",
        "sentence",
        "--label-column",
        "y",
        "--epochs",
        "1",
        "-q",
    )
    assert code == 0, err
    code, out, err = cli("eval", "-p", "ren.xpm", "-d", "renamed_test.jsonl", "--json")
    assert code == 0, err
    assert _json.loads(out)["metrics"]["n"] == 12
