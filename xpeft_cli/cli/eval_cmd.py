"""`xpeft eval`: score a profile on labelled data."""
from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from ..atomic import atomic_write_text
from ..bank import Bank
from ..data import Columns, encode_labels, load_examples
from ..errors import UsageError
from ..tasks import load_split, official_metrics, preset
from ..evaluate import evaluate_profile, read_profile
from . import output
from .common import BankOpt, JsonOpt, LabelCol, ModelOpt, OptPath, OptStr, PairCol, TextCol


def evaluate(
    profile: Path = typer.Option(..., "--profile", "-p", help="Profile file (.xpm, or a baseline's .safetensors)."),
    data: OptPath = typer.Option(None, "--data", "-d", help="Labelled data to score (or use --task)."),
    task_preset: OptStr = typer.Option(None, "--task", help="A GLUE/SuperGLUE preset: score its dev split from "
                                       "--data-dir with the official metrics."),
    data_dir: Path = typer.Option(Path("data"), "--data-dir", envvar="XPEFT_DATA_DIR", show_envvar=True,
                                  help="Folder holding glue/ and superglue/ (for --task)."),
    bank_dir: Path = BankOpt,
    batch_size: int = typer.Option(64, "--batch-size"),
    max_length: int = typer.Option(None, "--max-length", help="Tokens per example (default: as fitted)."),
    text_column: str = TextCol,
    text_pair_column: OptStr = PairCol,
    label_column: str = LabelCol,
    predictions: OptPath = typer.Option(None, "--predictions", help="Also write one JSON line per row."),
    device: str = typer.Option("auto", "--device"),
    force: bool = typer.Option(False, "--force", help="Use a profile fitted on another bank (results are meaningless "
                               "unless the banks hold the same adapters)."),
    model: OptStr = ModelOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Accuracy, macro-F1 and MCC (classification) or Pearson/Spearman (regression)."""
    if (data is None) == (task_preset is None):
        raise UsageError("give the data with --data FILE or --task PRESET (one of them)")
    prof = read_profile(profile)
    if task_preset:
        p = preset(task_preset)
        examples = load_split(p, "dev", data_dir).examples
    else:
        examples = load_examples(data, Columns(text=text_column, text_pair=text_pair_column, label=label_column))
    bank = Bank.load(bank_dir, model=model)
    if force and prof.bank_hash != bank.bank_hash:
        output.stderr.print(f"WARNING: --force: {profile} was fitted on bank {prof.bank_hash[:16]}…, "
                            f"not on {bank_dir} ({bank.bank_hash[:16]}…); its masks select other adapters here")
    metrics, preds = evaluate_profile(bank, prof, examples, batch_size=batch_size, max_length=max_length,
                                      device=device, force=force)
    if task_preset:
        metrics = official_metrics(p, encode_labels(examples, prof.task, prof.labels),
                                   preds if prof.task == "regression" else [prof.labels.index(x) for x in preds])
    if predictions:
        lines = [json.dumps({"text": t, "label": y, "prediction": p})
                 for t, y, p in zip(examples.texts, examples.labels, preds)]
        atomic_write_text(predictions, "\n".join(lines) + "\n")
    res = {"profile": prof.name, "file": str(profile), "data": str(data or examples.source), "task": prof.task,
           "preset": task_preset, "metrics": metrics}
    if json_out:
        output.emit_json(res)
        return
    t = Table("metric", "value", box=None, title=f"{prof.name} on {res['data']} ({metrics['n']} rows)")
    for k, v in metrics.items():
        if k != "n":
            t.add_row(k, f"{v:.4f}")
    output.stdout.print(t)
