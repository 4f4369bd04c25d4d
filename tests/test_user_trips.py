"""What a peft or SetFit user trips over (issue 30): each test failed before its fix."""

from __future__ import annotations

import json

import pytest

from helpers import one_line_error, sentiment_rows, write_jsonl


def test_eval_prints_rows_with_unseen_labels(cli, fitted):
    """The human output of `eval FILE` with a test label the profile never saw (was exit 1, a TypeError)."""
    rows = sentiment_rows(12, 1) + [{"text": "the film was fine today", "label": "meh"}] * 3
    write_jsonl(fitted / "mixed.jsonl", rows)
    code, out, err = cli("eval", "alice.xpm", "--data", "mixed.jsonl")
    assert code == 0, err
    assert "rows with unseen labels" in out and "3" in out.split("rows with unseen labels")[1].splitlines()[0]
    assert "accuracy" in out and "3 test rows have labels the profile was not fitted on" in err


@pytest.fixture()
def many(cli, tmp_path):
    rows = [r | {"profile": p} for p, seed in (("ann", 0), ("bob", 1)) for r in sentiment_rows(24, seed)]
    write_jsonl(tmp_path / "many.jsonl", rows)
    assert cli("bank", "create", "--random", "-n", "8")[0] == 0
    code, _, err = cli("fit", "-d", "many.jsonl", "--profile-column", "profile", "--epochs", "1", "-o", "profs", "-q")
    assert code == 0, err
    return tmp_path


def test_eval_many_scores_unseen_labels_instead_of_failing(cli, many):
    """`eval -P` used to run all its inference and then exit 3 at the first gold label a profile never saw."""
    test = [r | {"profile": "ann"} for r in sentiment_rows(6, 2)] + [
        {"text": "the team was quite sad today", "label": "meh", "profile": "bob"},
        {"text": "the food was good today", "label": "pos", "profile": "bob"},
    ]
    write_jsonl(many / "test.jsonl", test)
    code, out, err = cli("eval", "-P", "profs", "-d", "test.jsonl", "--json")
    assert code == 0, err
    res = json.loads(out)
    assert res["unseen_label_rows"] == 1 and res["profiles"]["bob"]["unseen_labels"] == {"meh": 1}
    assert "unseen_labels" not in res["profiles"]["ann"] and res["profiles"]["bob"]["n"] == 2
    assert res["profiles"]["bob"]["accuracy"] <= 0.5  # the unseen row is an error
    code, out, err = cli("eval", "-P", "profs", "-d", "test.jsonl")
    assert code == 0 and "bob" in out and "1 rows have labels their profile was not fitted on" in err


def test_eval_many_writes_predictions(cli, many):
    """`eval -P --predictions FILE` wrote nothing and exited 0."""
    test = [r | {"profile": p} for p, seed in (("bob", 3), ("ann", 4)) for r in sentiment_rows(3, seed)]
    write_jsonl(many / "test.jsonl", test)
    code, out, err = cli("eval", "-P", "profs", "-d", "test.jsonl", "--predictions", "preds.jsonl", "-q")
    assert code == 0, err
    lines = [json.loads(l) for l in (many / "preds.jsonl").read_text().splitlines()]
    assert [(l["profile"], l["text"], l["label"]) for l in lines] == [
        (r["profile"], r["text"], r["label"]) for r in test
    ]
    assert all(l["prediction"] in ("pos", "neg") for l in lines)


def test_macro_f1_has_one_definition(cli, fitted):
    """The same rows under `eval FILE` and under `eval -P` give the same macro-F1 (they differed: all of a
    profile's classes against those present): over the classes in the rows' labels or predictions,
    scikit-learn's default. A class the profile has but the rows never show does not count as F1 0."""
    from sklearn.metrics import f1_score

    write_jsonl(fitted / "cat.jsonl", sentiment_rows(40, 0))
    code, _, err = cli(
        "fit", "-p", "cat", "-d", "cat.jsonl", "--labels", "pos,neg,meh", "--epochs", "2", "-o", "cats/cat.xpm", "-q"
    )
    assert code == 0, err
    test = [r | {"profile": "cat"} for r in sentiment_rows(10, 5)]
    write_jsonl(fitted / "test.jsonl", test)
    code, out, _ = cli("eval", "cats/cat.xpm", "-d", "test.jsonl", "--json", "--predictions", "p1.jsonl")
    one = json.loads(out)["metrics"]
    code2, out2, _ = cli("eval", "-P", "cats", "-d", "test.jsonl", "--json")
    assert code == code2 == 0
    preds = [json.loads(l)["prediction"] for l in (fitted / "p1.jsonl").read_text().splitlines()]
    expected = f1_score([r["label"] for r in test], preds, average="macro", zero_division=0)
    assert one["macro_f1"] == pytest.approx(expected) == json.loads(out2)["profiles"]["cat"]["macro_f1"]
    assert one["accuracy"] == pytest.approx(json.loads(out2)["profiles"]["cat"]["accuracy"])


def test_an_explicit_column_wins_over_the_remembered_one(cli, fitted):
    """A profile fitted from column `sentence` remembers it, but `--text-column text` given by hand wins
    (it was ignored, since it equals the default)."""
    rows = [{"sentence": "x", "text": r["text"], "label": r["label"]} for r in sentiment_rows(40, 0)]
    write_jsonl(fitted / "both.jsonl", rows)
    code, _, err = cli("fit", "-p", "ren", "-d", "both.jsonl", "--text-column", "sentence", "--epochs", "1", "-q")
    assert code == 0, err
    test = [{"text": r["text"], "label": r["label"]} for r in sentiment_rows(6, 1)]  # no `sentence` column
    write_jsonl(fitted / "plain.jsonl", test)
    code, _, err = cli("eval", "ren.xpm", "-d", "plain.jsonl", "-q")
    assert code == 3 and "sentence" in err  # untold, it reads the remembered column
    one_line_error(err)
    code, out, err = cli("eval", "ren.xpm", "-d", "plain.jsonl", "--text-column", "text", "--json")
    assert code == 0, err and json.loads(out)["metrics"]["n"] == 6


def test_a_bank_made_with_a_relative_model_path_works_from_elsewhere(cli, tiny_bert, tmp_path, monkeypatch):
    """`bank create --model ./m -o bank-rel`, then any command from another folder exited 5."""
    import shutil

    work = tmp_path / "work"
    shutil.copytree(tiny_bert, work / "m")
    monkeypatch.chdir(work)
    monkeypatch.delenv("XPEFT_MODEL")
    assert cli("bank", "create", "--random", "-n", "4", "--model", "./m", "-o", "bank-rel")[0] == 0
    assert json.loads((work / "bank-rel" / "bank.json").read_text())["plm"]["ref"] == str((work / "m").resolve())
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    code, out, err = cli("bank", "verify", "../work/bank-rel", "--json")  # loads the bank and its PLM
    assert code == 0, err


def test_fit_makes_the_output_folder(cli, fitted):
    """`fit -o new/dir/a.xpm` where new/dir does not exist was exit 1 (FileNotFoundError on its log)."""
    code, out, err = cli("fit", "-p", "a", "-d", "alice.jsonl", "--epochs", "1", "-o", "new/dir/a.xpm", "--json")
    assert code == 0, err
    assert (fitted / "new" / "dir" / "a.xpm").is_file() and (fitted / "new" / "dir" / "a.fit.jsonl").is_file()


def test_labels_on_a_bank_with_a_shared_head_is_refused(cli, tmp_path):
    """`fit --labels` on an mtl bank was ignored: the profile answered with the bank's labels."""
    rows = [r | {"author": a} for a, seed in (("ann", 0), ("bob", 1), ("cy", 2)) for r in sentiment_rows(16, seed)]
    write_jsonl(tmp_path / "multi.jsonl", rows)
    create = ("bank", "create", "--from-profiles", "multi.jsonl", "--profile-column", "author", "--method", "mtl")
    assert cli(*create, "--profile-count", "3", "--epochs", "1", "-o", "mtl", "-q")[0] == 0
    write_jsonl(tmp_path / "dee.jsonl", sentiment_rows(20, 3))
    fit = ("fit", "-p", "dee", "-d", "dee.jsonl", "-b", "mtl", "--epochs", "1")
    code, _, err = cli(*fit, "--labels", "pos,neg,meh", "-q")
    assert code == 2 and "--labels does not apply to a bank with a shared head" in err and "--own-head" in err
    one_line_error(err)
    code, out, err = cli(*fit, "--labels", "pos,neg,meh", "--own-head", "--json")
    assert code == 0, err
    assert json.loads(out)["labels"] == ["pos", "neg", "meh"]
    code, out, err = cli(*fit, "--json")  # masks only: the bank's head and labels answer, as before
    assert code == 0 and json.loads(out)["labels"] is None


def test_option_choices_are_declared_and_complete(tmp_path):
    """--mask, --method, --ln, --precision … list their choices in --help, refuse others with exit 2
    before any work, and TAB completes them (they completed nothing)."""
    import os
    import shutil
    import subprocess

    xpeft = shutil.which("xpeft")
    if xpeft is None:
        pytest.skip("needs the installed xpeft command")
    run = lambda *a, **env: subprocess.run(  # noqa: E731
        [xpeft, *a], capture_output=True, text=True, env=dict(os.environ, COLUMNS="200", **env), cwd=tmp_path
    )
    fit_help = run("fit", "--help").stdout
    for choices in ("sign|hard|soft", "x-peft|single-adapter|head-only", "auto|bf16|fp32", "float16|float32"):
        assert choices in fit_help, choices
    bank_help = run("bank", "create", "--help").stdout
    assert "layernorm|none" in bank_help and "sa|mtl" in bank_help
    bad = run("fit", "-p", "a", "-d", "nothing.jsonl", "--mask", "linear")
    assert bad.returncode == 2 and "'linear' is not one of 'sign', 'hard', 'soft'" in bad.stderr
    one_line_error(bad.stderr)
    done = run(_XPEFT_COMPLETE="complete_bash", COMP_WORDS="xpeft fit --mask ", COMP_CWORD="3")
    assert done.stdout.split() == ["sign", "hard", "soft"]


def test_json_is_one_compact_line(cli, fitted, monkeypatch):
    """`--json` printed 126 indented lines for one inspect: now one line per object; XPEFT_JSON_INDENT=2
    indents it."""
    code, out, _ = cli("inspect", "alice.xpm", "--bank", "bank", "--json")
    assert code == 0 and len(out.splitlines()) == 1 and json.loads(out)["profile"] == "alice"
    monkeypatch.setenv("XPEFT_JSON_INDENT", "2")
    code, out2, _ = cli("inspect", "alice.xpm", "--bank", "bank", "--json")
    assert code == 0 and len(out2.splitlines()) > 10 and json.loads(out2) == json.loads(out)


def test_bank_from_profiles_takes_labels_holdout_and_pairs(cli, tmp_path):
    """`bank create --from-profiles` always held out 10%, said so only in --json, and had no --labels,
    --val-fraction or --text-pair-column."""
    rows = [
        {"a": r["text"], "b": "and the ending", "label": r["label"], "author": au}
        for au, seed in (("ann", 0), ("bob", 1))
        for r in sentiment_rows(20, seed)
    ]
    write_jsonl(tmp_path / "pairs.jsonl", rows)
    create = (
        "bank", "create", "--from-profiles", "pairs.jsonl", "--profile-column", "author", "--method", "mtl",
        "--profile-count", "2", "--epochs", "1", "--text-column", "a", "--text-pair-column", "b",
        "--labels", "pos,neg,meh",
    )  # fmt: skip
    code, out, err = cli(*create, "--val-fraction", "0.25", "-o", "b1", "--json")
    assert code == 0, err
    info = json.loads(out)
    assert set(info["training"]["val_accuracy"]) == {"ann", "bob"}
    assert json.loads((tmp_path / "b1" / "bank.json").read_text())["head"]["labels"] == ["pos", "neg", "meh"]
    code, out, err = cli(*create, "--val-fraction", "0.25", "-o", "b2")
    assert code == 0 and "held out 25% of each profile's rows" in out
    code, out, err = cli(*create, "--val-fraction", "0", "-o", "b3", "--json")
    assert code == 0 and not json.loads(out)["training"]["val_accuracy"]


def test_a_missing_device_is_refused_before_any_load(cli, tmp_path):
    """`--device cuda` on a CPU machine was refused only after the bank and model loads: now while the
    options are read, before the (here missing) bank is even looked at."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    for args in (("eval", "nothing.xpm", "-d", "x.jsonl"), ("fit", "-p", "a", "-d", "x.jsonl"), ("predict",)):
        code, _, err = cli(*args, "-b", "no-bank", "--device", "cuda")
        assert code == 2 and "--device cuda: no such CUDA device" in err, (args, err)
        one_line_error(err)
