"""GLUE/SuperGLUE presets, official metrics, baselines and the bench grid."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch

from xpeft_cli.baselines import BaselineModel, read_adapter
from xpeft_cli.errors import DataError
from xpeft_cli.metrics import classification_metrics, regression_metrics
from xpeft_cli.tasks import PRESETS, gender_parity, load_split, official_metrics, preset

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
needs_data = pytest.mark.skipif(not (DATA / "glue").is_dir(), reason="../shared/data is not beside the checkout")


def test_classification_metrics_by_hand():
    m = classification_metrics([0, 0, 1, 1], [0, 1, 1, 1], 2)
    assert m["accuracy"] == 0.75 and m["majority_accuracy"] == 0.5
    assert m["macro_f1"] == pytest.approx((2 / 3 + 0.8) / 2)
    assert m["mcc"] == pytest.approx(2 / 12**0.5)


def test_regression_metrics_by_hand():
    assert regression_metrics([1, 2, 3], [2, 4, 6])["pearson"] == pytest.approx(1.0)
    assert regression_metrics([1, 2, 3], [1, 3, 2])["spearman"] == pytest.approx(0.5)
    assert regression_metrics([1, 2, 3], [1, 2, 5])["mse"] == pytest.approx(4 / 3)


def test_official_metrics_by_hand():
    mrpc = official_metrics(preset("mrpc"), [1, 1, 0, 0], [1, 0, 0, 0])
    assert mrpc["f1"] == pytest.approx(2 / 3) and mrpc["score"] == pytest.approx((0.75 + 2 / 3) / 2)
    assert official_metrics(preset("cola"), [0, 0, 1, 1], [0, 1, 1, 1])["score"] == pytest.approx(2 / 12**0.5)
    stsb = official_metrics(preset("stsb"), [1.0, 2.0, 3.0], [1.0, 3.0, 2.0])
    assert stsb["score"] == pytest.approx((0.5 + 0.5) / 2)
    assert gender_parity([0, 0, 1, 0, 1, 1]) == pytest.approx(200 / 3)
    axg = official_metrics(preset("axg"), [0, 0, 1, 1], [0, 0, 1, 0])
    assert axg["gender_parity"] == 50.0 and axg["score"] == 0.75


ROWS = {
    ("cola", "train"): 8551,
    ("cola", "dev"): 1043,
    ("sst2", "train"): 67349,
    ("sst2", "dev"): 872,
    ("mrpc", "train"): 3668,
    ("mrpc", "dev"): 408,
    ("stsb", "train"): 5749,
    ("stsb", "dev"): 1500,
    ("rte", "train"): 2490,
    ("rte", "dev"): 277,
    ("wnli", "train"): 635,
    ("wnli", "dev"): 71,
    ("mnli", "dev"): 9815,
    ("qnli", "dev"): 5463,
    ("qqp", "train"): 23496,
    ("cb", "train"): 250,
    ("cb", "dev"): 56,
    ("boolq", "dev"): 3270,
    ("axb", "dev"): 1104,
    ("axg", "dev"): 356,
    ("axb", "train"): 2490,
}


@needs_data
@pytest.mark.parametrize("task,which", sorted(ROWS))
def test_preset_row_counts(task, which):
    loaded = load_split(preset(task), which, DATA)
    assert len(loaded.examples) == ROWS[(task, which)]
    assert loaded.dropped == (1 if task == "qqp" else 0)  # QQP's malformed first row (SOURCES.md)
    assert (loaded.examples.pairs is None) == (task in ("cola", "sst2"))


@needs_data
def test_label_distributions_match_sources():
    def count(task, which):
        return Counter(load_split(preset(task), which, DATA).examples.labels)

    assert count("sst2", "train")["1"] == 37569
    assert count("cola", "train")["1"] == 6023
    assert count("mrpc", "train")["1"] == 2474
    assert count("mnli", "dev") == Counter({"entailment": 3479, "contradiction": 3213, "neutral": 3123})
    assert count("cb", "train") == Counter({"contradiction": 119, "entailment": 115, "neutral": 16})
    assert count("boolq", "dev")["1"] == 2033
    assert set(count("axb", "dev")) == {"entailment", "not_entailment"}
    stsb = load_split(preset("stsb"), "dev", DATA).examples.labels
    assert min(stsb) >= 0 and max(stsb) <= 5 and any(not float(v).is_integer() for v in stsb)


@needs_data
def test_missing_splits_say_so():
    for task, which in (("qnli", "train"), ("mnli", "train"), ("qqp", "dev"), ("boolq", "train")):
        with pytest.raises(DataError, match="no .* split here"):
            load_split(preset(task), which, DATA)
    assert set(PRESETS) == {
        "cola",
        "sst2",
        "mrpc",
        "qqp",
        "stsb",
        "mnli",
        "qnli",
        "rte",
        "wnli",
        "cb",
        "boolq",
        "axb",
        "axg",
    }


def test_single_adapter_starts_as_the_frozen_encoder(tiny_bert):
    from xpeft_cli.plm import load_encoder, resolve_model

    enc, _ = load_encoder(resolve_model(str(tiny_bert)))
    ids = torch.randint(5, 60, (2, 7), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = enc(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state
    sites = [f"encoder.layer.{i}.attention.output.dense" for i in range(2)]
    model = BaselineModel(enc, "single-adapter", sites, 4, 2)
    with torch.no_grad():
        after = enc(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state
    torch.testing.assert_close(before, after)  # B = 0 at start, as in LoRA
    assert sum(p.numel() for p in model.adapter_parameters()) == 2 * 32 * 4 * 2  # 2·d·b·L
    assert {n for n, p in model.named_parameters() if p.requires_grad} >= {"head.weight", "head.bias"}


def test_baselines_through_the_cli(cli, fitted):
    code, out, err = cli(
        "fit", "-p", "sa", "-d", "alice.jsonl", "--method", "single-adapter", "--epochs", "2", "--json"
    )
    res = json.loads(out)
    assert code == 0, err
    assert res["output"] == "sa.safetensors" and res["method"] == "single-adapter"
    a = read_adapter(fitted / "sa.safetensors")
    assert a.method == "single-adapter" and a.labels == ["neg", "pos"] and a.rank == 2
    assert a.tensors["base_model.model.encoder.layer.0.attention.output.dense.lora_A.weight"].shape == (2, 32)
    assert float(a.tensors["base_model.model.encoder.layer.1.attention.output.dense.lora_B.weight"].abs().sum()) > 0
    code, out, _ = cli("fit", "-p", "ho", "-d", "alice.jsonl", "--method", "head-only", "--epochs", "2", "--json")
    assert code == 0 and read_adapter(fitted / "ho.safetensors").trainable_parameters() == 2 * 32 + 2
    for f in ("sa.safetensors", "ho.safetensors"):
        code, out, _ = cli("eval", "-p", f, "-d", "alice_test.jsonl", "--json")
        assert code == 0 and json.loads(out)["metrics"]["n"] == 12
        code, out, _ = cli("inspect", f, "--bank", "bank", "--json")
        info = json.loads(out)
        assert code == 0 and info["bank_match"] and info["bytes"] == (fitted / f).stat().st_size
    code, out, _ = cli(
        "report", "memory", "--bank", "bank", "--profile", "sa.safetensors", "--profile", "alice.xpm", "--json"
    )
    measured = json.loads(out)["measured"]
    assert measured[0]["file_bytes"] > measured[1]["xpm_bytes"]
    code, _, err = cli("fit", "-p", "x", "-d", "alice.jsonl", "--method", "single-adapter", "-o", "x.xpm")
    assert code == 2 and ".safetensors" in err


@needs_data
def test_presets_through_fit_and_eval(cli, fitted):
    code, out, err = cli(
        "fit",
        "-p",
        "rte",
        "--task",
        "rte",
        "--data-dir",
        str(DATA),
        "--epochs",
        "1",
        "--k",
        "4",
        "--max-length",
        "32",
        "--json",
    )
    assert code == 0, err
    assert json.loads(out)["labels"] == ["entailment", "not_entailment"]
    code, out, err = cli("eval", "-p", "rte.xpm", "--task", "axg", "--data-dir", str(DATA), "--json")
    m = json.loads(out)["metrics"]
    assert code == 0 and m["n"] == 356 and 0 <= m["gender_parity"] <= 100 and m["score"] == m["accuracy"]
    code, _, err = cli("fit", "-p", "q", "--task", "qnli", "--data-dir", str(DATA))
    assert code == 3 and "no train split" in err


@needs_data
def test_bench_glue_end_to_end_and_resume(cli, fitted):
    args = (
        "bench",
        "glue",
        "--tasks",
        "rte",
        "--tasks",
        "wnli",
        "--n",
        "8",
        "--mask",
        "hard",
        "--data-dir",
        str(DATA),
        "--epochs",
        "1",
        "--max-train-rows",
        "40",
        "--k",
        "4",
        "--max-length",
        "32",
        "-o",
        "bg",
        "--json",
    )
    code, out, err = cli(*args)
    doc = json.loads(out)
    assert code == 0, err
    assert set(doc["rows"]) == {"x_peft 8 (hard)", "single_adapter", "head_only"}
    assert all(len(r["scores"]) == 2 and r["avg"] is not None for r in doc["rows"].values())
    assert len(list((fitted / "bg" / "cells").glob("*.json"))) == 6
    md = (fitted / "bg" / "results.md").read_text()
    assert "| mode | rte (Acc) | wnli (Acc) | avg |" in md
    code, out2, err = cli(*args[:-1])  # resumed: every cell cached, same table
    assert code == 0 and err.count("cached") == 6
    assert json.loads((fitted / "bg" / "results.json").read_text())["rows"] == doc["rows"]


def test_damaged_adapter_file_is_refused(cli, fitted):
    from helpers import one_line_error

    assert cli("fit", "-p", "ho", "-d", "alice.jsonl", "--method", "head-only", "--epochs", "1", "--quiet")[0] == 0
    data = (fitted / "ho.safetensors").read_bytes()
    (fitted / "cut.safetensors").write_bytes(data[: len(data) // 2])
    for args in (("inspect", "cut.safetensors"), ("eval", "-p", "cut.safetensors", "-d", "alice_test.jsonl")):
        code, _, err = cli(*args)
        assert code == 4, err
        one_line_error(err)
