"""GLUE and SuperGLUE presets: file layouts, label sets and official metrics.

Each preset knows how its files in a data folder (laid out as ../shared/data: glue/<task>/,
superglue/<task>/) are read — TSV without quote handling, BOMs, missing headers, string labels —
and which metrics the benchmark reports. Files are read with `datasets` local loaders.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .data import Examples
from .errors import DataError, UsageError
from .metrics import classification_metrics, regression_metrics
from .model import TASK_CLASSIFICATION, TASK_REGRESSION

ENV_DATA_DIR = "XPEFT_DATA_DIR"
TSV: dict[str, Any] = {"delimiter": "\t", "quoting": 3, "keep_default_na": False, "na_filter": False}  # csv.QUOTE_NONE


@dataclass(frozen=True)
class Split:
    path: str  # relative to the data folder
    builder: str = "csv"  # datasets builder: csv | json
    options: dict = field(default_factory=dict)
    text: str = "sentence"
    text_pair: str | None = None
    label: str = "label"
    label_map: dict | None = None  # raw label → preset label name


@dataclass(frozen=True)
class Preset:
    name: str
    task_type: str
    labels: tuple[str, ...] | None  # class names in head order (None for regression)
    metric: str  # mcc | acc | acc_f1 | pearson_spearman | acc_gps
    train: Split | None
    dev: Split | None
    trained_on: str | None = None  # diagnostics are fitted on another task's train split
    note: str = ""


def _glue(task: str, file: str, **kw) -> Split:
    return Split(path=f"glue/{task}/{file}", **kw)


COLA = dict(options=TSV | {"header": None, "column_names": ["source", "label", "judgement", "sentence"]})
PAIR_NLI = dict(text="sentence1", text_pair="sentence2", options=TSV)
MRPC = dict(text="#1 String", text_pair="#2 String", label="Quality", options=TSV | {"encoding": "utf-8-sig"})
QQP = dict(
    text="question1",
    text_pair="question2",
    label="is_duplicate",
    options=TSV | {"header": None, "column_names": ["id", "qid1", "qid2", "question1", "question2", "is_duplicate"]},
)
NLI_JSON: dict[str, Any] = dict(builder="json", text="premise", text_pair="hypothesis")
TO_BINARY = {"entailment": "entailment", "neutral": "not_entailment", "contradiction": "not_entailment"}

PRESETS: dict[str, Preset] = {
    p.name: p
    for p in [
        Preset(
            "cola",
            TASK_CLASSIFICATION,
            ("0", "1"),
            "mcc",
            _glue("cola", "train.tsv", **COLA),
            _glue("cola", "dev.tsv", **COLA),
        ),
        Preset(
            "sst2",
            TASK_CLASSIFICATION,
            ("0", "1"),
            "acc",
            _glue("sst2", "train.tsv", options=TSV),
            _glue("sst2", "dev.tsv", options=TSV),
        ),
        Preset(
            "mrpc",
            TASK_CLASSIFICATION,
            ("0", "1"),
            "acc_f1",
            _glue("mrpc", "train.tsv", **MRPC),
            _glue("mrpc", "dev.tsv", **MRPC),
        ),
        Preset(
            "qqp",
            TASK_CLASSIFICATION,
            ("0", "1"),
            "acc_f1",
            _glue("qqp", "train_subset.tsv", **QQP),
            None,
            note="only a 23,497-row subset of train exists here; no dev split",
        ),
        Preset(
            "stsb",
            TASK_REGRESSION,
            None,
            "pearson_spearman",
            _glue("stsb", "train.tsv", text="sentence1", text_pair="sentence2", label="score", options=TSV),
            _glue("stsb", "dev.tsv", text="sentence1", text_pair="sentence2", label="score", options=TSV),
        ),
        Preset(
            "mnli",
            TASK_CLASSIFICATION,
            ("contradiction", "entailment", "neutral"),
            "acc",
            None,
            _glue("mnli", "dev_matched.jsonl", **NLI_JSON),
            note="only dev_matched exists here",
        ),
        Preset(
            "qnli",
            TASK_CLASSIFICATION,
            ("entailment", "not_entailment"),
            "acc",
            None,
            _glue("qnli", "dev.tsv", text="question", text_pair="sentence", options=TSV),
            note="only dev exists here",
        ),
        Preset(
            "rte",
            TASK_CLASSIFICATION,
            ("entailment", "not_entailment"),
            "acc",
            _glue("rte", "train.tsv", **PAIR_NLI),
            _glue("rte", "dev.tsv", **PAIR_NLI),
        ),
        Preset(
            "wnli",
            TASK_CLASSIFICATION,
            ("0", "1"),
            "acc",
            _glue("wnli", "train.tsv", **PAIR_NLI),
            _glue("wnli", "dev.tsv", **PAIR_NLI),
        ),
        Preset(
            "cb",
            TASK_CLASSIFICATION,
            ("contradiction", "entailment", "neutral"),
            "acc",
            Split("superglue/cb/train.jsonl", **NLI_JSON),
            Split("superglue/cb/val.jsonl", **NLI_JSON),
        ),
        Preset(
            "boolq",
            TASK_CLASSIFICATION,
            ("0", "1"),
            "acc",
            None,
            Split(
                "superglue/boolq/val.csv",
                text="question",
                text_pair="passage",
                options={"keep_default_na": False, "na_filter": False},
            ),
            note="only val exists here",
        ),
        Preset(
            "axb",
            TASK_CLASSIFICATION,
            ("entailment", "not_entailment"),
            "mcc",
            None,
            Split(
                "superglue/axb/diagnostic-full.tsv",
                text="Premise",
                text_pair="Hypothesis",
                label="Label",
                options=TSV,
                label_map=TO_BINARY,
            ),
            trained_on="rte",
        ),
        Preset(
            "axg",
            TASK_CLASSIFICATION,
            ("entailment", "not_entailment"),
            "acc_gps",
            None,
            Split("superglue/axg/AX-g.jsonl", **NLI_JSON),
            trained_on="rte",
        ),
    ]
}


def preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise UsageError(f"unknown task {name!r}; known: {', '.join(PRESETS)}") from None


def default_data_dir() -> Path:
    import os

    env = os.environ.get(ENV_DATA_DIR)
    return Path(env) if env else Path("data")


@dataclass
class Loaded:
    examples: Examples
    dropped: int  # rows without a usable label (e.g. QQP's one malformed row)


def load_split(p: Preset, which: str, data_dir: str | Path) -> Loaded:
    """Read the train or dev split of a preset (for diagnostics, 'train' is the trained_on task's)."""
    if which == "train" and p.trained_on:
        return load_split(preset(p.trained_on), "train", data_dir)
    split = p.train if which == "train" else p.dev
    if split is None:
        raise DataError(f"task {p.name} has no {which} split here ({p.note or 'not available'})")
    path = Path(data_dir) / split.path
    if not path.is_file():
        raise DataError(f"{path}: no such file (point --data-dir at the folder holding glue/ and superglue/)")
    import datasets
    from datasets import load_dataset

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)
    try:
        ds = load_dataset(split.builder, data_files=str(path), split="train", keep_in_memory=True, **split.options)
    except Exception as exc:
        raise DataError(f"{path}: cannot parse ({str(exc).splitlines()[0][:200]})") from None
    table = ds.to_dict()
    for col in (split.text, split.text_pair, split.label):
        if col and col not in table:
            raise DataError(f"{path}: missing column {col!r}")
    texts: list[str] = []
    pairs: list[str] | None = [] if split.text_pair else None
    labels: list = []
    dropped = 0
    names = p.labels or ()
    for i, raw in enumerate(table[split.label]):
        text = table[split.text][i]
        if raw is None or (isinstance(raw, float) and np.isnan(raw)) or str(raw).strip() == "" or text is None:
            dropped += 1
            continue
        if p.task_type == TASK_REGRESSION:
            labels.append(float(raw))
        else:
            name = str(int(raw)) if isinstance(raw, (int, float)) and not isinstance(raw, bool) else str(raw).strip()
            if split.label_map:
                name = split.label_map.get(name, name)
            if name in ("True", "False"):
                name = "1" if name == "True" else "0"
            if name not in names:
                raise DataError(f"{path}: row {i + 1}: label {name!r} is not one of {', '.join(names)}")
            labels.append(name)
        texts.append(str(text))
        if pairs is not None:
            pairs.append(str(table[split.text_pair][i] or ""))
    return Loaded(Examples(texts, pairs, labels, str(path)), dropped)


def gender_parity(preds: list) -> float:
    """AX-g: share of consecutive (male, female) pairs, rows 2i and 2i+1, predicted alike, in percent."""
    pairs = len(preds) // 2
    same = sum(preds[2 * i] == preds[2 * i + 1] for i in range(pairs))
    return 100.0 * same / pairs if pairs else 0.0


def official_metrics(p: Preset, y_true: list, y_pred: list) -> dict:
    """The benchmark's metrics, plus `score`: the one number of the paper's tables (mean where several)."""
    if p.task_type == TASK_REGRESSION:
        m = regression_metrics(y_true, y_pred)
        return m | {"score": (m["pearson"] + m["spearman"]) / 2}
    m = classification_metrics(y_true, y_pred, len(p.labels or ()))
    if p.metric == "mcc":
        return m | {"score": m["mcc"]}
    if p.metric == "acc_f1":
        from sklearn.metrics import f1_score

        f1 = float(f1_score(y_true, y_pred, pos_label=1, average="binary", zero_division=0))
        return m | {"f1": f1, "score": (m["accuracy"] + f1) / 2}
    if p.metric == "acc_gps":
        return m | {"gender_parity": gender_parity(y_pred), "score": m["accuracy"]}
    return m | {"score": m["accuracy"]}
