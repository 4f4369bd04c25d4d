"""`xpeft eval`: score a profile on labelled data."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from ..atomic import atomic_write_text
from ..errors import UsageError
from . import output
from .common import (
    BATCH_MAX,
    TOKENS_MAX,
    BankOpt,
    DeviceOpt,
    JsonOpt,
    ModelOpt,
    OptPath,
    OptStr,
    PairCol,
    QuietOpt,
)


def evaluate(
    file: OptPath = typer.Argument(None, metavar="FILE", help="Profile file (.xpm, or a baseline's .safetensors)."),
    profile: OptPath = typer.Option(
        None, "--profile", "-p", hidden=True, help="The profile file (old spelling of the FILE argument)."
    ),
    profiles: OptPath = typer.Option(
        None,
        "--profiles",
        "-P",
        help="Many profiles: a folder of NAME.xpm (or "
        "baselines' NAME.safetensors) or an .xps store; each row of --data is scored "
        "by the profile its --profile-column names.",
    ),
    profile_column: str = typer.Option(
        "profile", "--profile-column", help="With --profiles: the column naming each row's profile."
    ),
    data: OptPath = typer.Option(None, "--data", "-d", help="Labelled data to score (or use --task)."),
    task_preset: OptStr = typer.Option(
        None, "--task", help="A GLUE/SuperGLUE preset: score its dev split from --data-dir with the official metrics."
    ),
    data_dir: Path = typer.Option(
        Path("data"),
        "--data-dir",
        envvar="XPEFT_DATA_DIR",
        show_envvar=True,
        help="Folder holding glue/ and superglue/ (for --task).",
    ),
    bank_dir: Path = BankOpt,
    batch_size: int = typer.Option(64, "--batch-size", min=1, max=BATCH_MAX, help="Rows per forward pass."),
    max_length: int = typer.Option(
        None, "--max-length", min=1, max=TOKENS_MAX, help="Tokens per example (default: as fitted)."
    ),
    text_column: OptStr = typer.Option(
        None, "--text-column", help="Column with the text (default: the one the profile was fitted from, else text)."
    ),
    text_pair_column: OptStr = PairCol,
    label_column: OptStr = typer.Option(
        None, "--label-column", help="Column with the label (default: as fitted, else label)."
    ),
    predictions: OptPath = typer.Option(
        None, "--predictions", help="Also write one JSON line per row (with --profiles, the row's profile too)."
    ),
    device: str = DeviceOpt,
    force: bool = typer.Option(
        False,
        "--force",
        help="Use a profile fitted on another bank (results are meaningless unless the banks hold the same adapters).",
    ),
    model: OptStr = ModelOpt,
    json_out: bool = JsonOpt,
    quiet: bool = QuietOpt,
) -> None:
    """Accuracy, macro-F1 and MCC (classification) or Pearson/Spearman (regression).

    With --profiles: per-profile accuracy and macro-F1 and their averages over profiles.
    """
    from ..bank import Bank
    from ..data import Columns, encode_labels, load_examples
    from ..evaluate import columns_for, evaluate_profile, read_profile, with_bank_head
    from ..tasks import load_split, official_metrics, preset

    if file is not None and profile is not None:
        raise UsageError("give the profile file once (as FILE)")
    profile = file or profile  # `--profile` names a profile (fit); a file to score is an argument
    if (profile is None) == (profiles is None):
        raise UsageError("give one profile file (xpeft eval FILE …), or many with --profiles DIR|STORE")
    if profiles is not None:
        cols = Columns(
            text=text_column or "text",
            text_pair=text_pair_column,
            label=label_column or "label",
            profile=profile_column,
        )
        return _eval_many(
            profiles, data, cols, bank_dir, batch_size, max_length, predictions, device, model, json_out, quiet
        )
    if (data is None) == (task_preset is None):
        raise UsageError("give the data with --data FILE or --task PRESET (one of them)")
    prof = read_profile(profile)
    if task_preset:
        p = preset(task_preset)
        examples = load_split(p, "dev", data_dir).examples
    else:
        examples = load_examples(data, columns_for(prof, text_column, text_pair_column, label_column))
    bank = Bank.load(bank_dir, model=model)
    prof = with_bank_head(bank, prof)
    if force and prof.bank_hash != bank.bank_hash:
        output.note(
            f"WARNING: --force: {profile} was fitted on bank {prof.bank_hash[:16]}…, "
            f"not on {bank_dir} ({bank.bank_hash[:16]}…); its masks select other adapters here",
            quiet,
        )
    metrics, preds = evaluate_profile(
        bank, prof, examples, batch_size=batch_size, max_length=max_length, device=device, force=force
    )
    if metrics.get("unseen_labels"):
        unseen = metrics["unseen_labels"]
        output.note(
            f"note: {sum(unseen.values())} test rows have labels the profile was not fitted on "
            f"({', '.join(map(str, list(unseen)[:5]))}); they count as errors",
            quiet or json_out,
        )
    if task_preset:
        metrics = official_metrics(
            p,
            encode_labels(examples, prof.task, prof.labels),
            preds if prof.task == "regression" else [prof.labels.index(x) for x in preds],
        )
    if predictions:
        lines = [
            json.dumps({"text": t, "label": y, "prediction": p})
            for t, y, p in zip(examples.texts, examples.labels, preds)
        ]
        atomic_write_text(predictions, "\n".join(lines) + "\n")
    res = {
        "profile": prof.name,
        "file": str(profile),
        "data": str(data or examples.source),
        "task": prof.task,
        "preset": task_preset,
        "metrics": metrics,
    }
    if json_out:
        output.emit_json(res)
        return
    if quiet:
        return
    t = Table("metric", "value", box=None, title=f"{prof.name} on {res['data']} ({metrics['n']} rows)")
    for k, v in metrics.items():
        if isinstance(v, float):
            t.add_row(k, f"{v:.4f}")
    if metrics.get("unseen_labels"):
        t.add_row("rows with unseen labels", str(sum(metrics["unseen_labels"].values())))
    output.stdout.print(t)


def _eval_many(
    profiles, data, cols, bank_dir, batch_size, max_length, predictions, device, model, json_out, quiet
) -> None:
    from ..bank import Bank
    from ..data import load_examples
    from ..serve import ProfileSource, evaluate_many

    if data is None:
        raise UsageError("--profiles needs --data FILE with a profile column")
    examples = load_examples(data, cols)
    source = ProfileSource(profiles)
    bank = Bank.load(bank_dir, model=model)
    res, preds = evaluate_many(bank, source, examples, batch_size, max_length, device)
    if predictions:
        labels = examples.labels or []
        lines = [
            json.dumps({"profile": p, "text": t, "label": y, "prediction": q})
            for p, t, y, q in zip(examples.profiles or [], examples.texts, labels, preds)
        ]
        atomic_write_text(predictions, "\n".join(lines) + "\n")
    res = {"profiles_from": str(profiles), "data": str(data)} | res
    if res["unseen_label_rows"]:
        output.note(
            f"note: {res['unseen_label_rows']} rows have labels their profile was not fitted on; they count as "
            "errors (per profile: unseen_labels)",
            quiet or json_out,
        )
    if json_out:
        output.emit_json(res)
        return
    if quiet:
        return
    keys = list(res["mean"])
    t = Table("profile", "rows", *keys, box=None, title=f"{res['count']} profiles on {data} ({res['rows']} rows)")
    for name, m in res["profiles"].items():
        t.add_row(output.plain(name), str(m["n"]), *(f"{m[k]:.4f}" for k in keys))
    t.add_row("mean over profiles", "", *(f"{res['mean'][k]:.4f}" for k in keys))
    output.stdout.print(t)
