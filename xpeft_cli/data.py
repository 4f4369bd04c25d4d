"""Reading labelled text from local files (JSONL/JSON, CSV, TSV, Parquet) with `datasets`.

Every problem a user can cause — no such file, an unparsable line, a missing column, an
empty label, an unknown label at evaluation time — becomes a DataError naming the file
and, where there is one, the row.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from .config import TASK_CLASSIFICATION, TASK_REGRESSION
from .errors import DataError

BUILDERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".tsv": "csv", ".parquet": "parquet"}


@dataclass(frozen=True)
class Columns:
    text: str = "text"
    text_pair: str | None = None
    label: str | None = "label"
    profile: str | None = None


@dataclass
class Examples:
    texts: list[str]
    pairs: list[str] | None
    labels: list | None  # raw values as read
    source: str = ""
    profiles: list[str] | None = None  # the profile of each row (multi-profile files)

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, idx: list[int]) -> "Examples":
        return Examples(
            [self.texts[i] for i in idx],
            [self.pairs[i] for i in idx] if self.pairs else None,
            [self.labels[i] for i in idx] if self.labels is not None else None,
            self.source,
            [self.profiles[i] for i in idx] if self.profiles is not None else None,
        )

    def by_profile(self) -> dict[str, list[int]]:
        """Row indices of each profile, profiles in order of first appearance."""
        if self.profiles is None:
            raise DataError(f"{self.source}: no profile column")
        from .names import check_name

        groups: dict[str, list[int]] = {}
        for i, p in enumerate(self.profiles):
            groups.setdefault(p, []).append(i)
        for name in groups:  # a profile value becomes a name, and a file name: checked here, once (names.py)
            check_name(name, f"{self.source}: profile")
        return groups


def json_lines(lines: Iterable[str], source: str) -> Iterator[tuple[int, object]]:
    """(line number, value) of every non-blank JSON line; a line that is not JSON is a DataError."""
    for no, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except RecursionError:
            raise DataError(f"{source}: line {no}: JSON nested too deeply") from None
        except json.JSONDecodeError as exc:
            raise DataError(f"{source}: line {no}: not valid JSON ({exc.msg})") from None
        except ValueError as exc:  # e.g. a number too long to convert
            raise DataError(f"{source}: line {no}: not valid JSON ({exc})") from None
        yield no, obj


def _first_bad_json_line(path: Path) -> str:
    with open(path, "rb") as fh:
        for no, raw in enumerate(fh, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                return f"line {no}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at column {exc.start + 1})"
            if line.strip():
                try:
                    obj = json.loads(line)
                except RecursionError:
                    return f"line {no}: JSON nested too deeply"
                except json.JSONDecodeError as exc:
                    return f"line {no}: not valid JSON ({exc.msg})"
                except ValueError as exc:
                    return f"line {no}: not valid JSON ({exc})"
                if not isinstance(obj, dict):
                    return f"line {no}: a JSON object is expected"
    return "rows have inconsistent types (e.g. a label that is a number in one row and text in another)"


def _load_table(path: Path) -> dict[str, list]:
    import datasets
    from datasets import load_dataset

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)
    builder = BUILDERS.get(path.suffix.lower())
    if builder is None:
        raise DataError(f"{path}: unsupported file type {path.suffix!r} (use .jsonl, .json, .csv, .tsv or .parquet)")
    if not path.is_file():
        raise DataError(f"{path}: no such data file")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: file is empty")
    kwargs = {"delimiter": "\t"} if path.suffix.lower() == ".tsv" else {}
    try:
        ds = load_dataset(builder, data_files=str(path), split="train", keep_in_memory=True, **kwargs)
        if ds.num_rows == 0:
            raise DataError(f"{path}: no rows")
        return ds.to_dict()
    except DataError:
        raise
    except UnicodeDecodeError as exc:  # pyarrow reads bad UTF-8; Python's view of the rows does not
        if builder == "json":
            raise DataError(f"{path}: {_first_bad_json_line(path)}") from None
        raise DataError(f"{path}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x})") from None
    except Exception as exc:  # datasets/pyarrow raise many types (RecursionError too); find the line ourselves
        if builder == "json":
            raise DataError(f"{path}: {_first_bad_json_line(path)}") from None
        raise DataError(
            f"{path}: cannot parse ({str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__})"
        ) from None


def load_examples(path: str | Path, columns: Columns = Columns(), require_label: bool = True) -> Examples:
    path = Path(path)
    table = _load_table(path)
    have = sorted(table)

    def column(name: str | None, required: bool, option: str) -> list | None:
        if name is None:
            return None
        if name not in table:
            if required:
                raise DataError(
                    f"{path}: missing column {name!r} (columns: {', '.join(have)}); name the one to use with {option}"
                )
            return None
        return table[name]

    texts = column(columns.text, True, "--text-column")
    assert texts is not None  # required: column() raised otherwise
    pairs = column(columns.text_pair, columns.text_pair is not None, "--text-pair-column")
    labels = column(columns.label, require_label, "--label-column")
    profiles = column(columns.profile, columns.profile is not None, "--profile-column")
    if profiles is not None:
        for i, v in enumerate(profiles):
            if v is None or isinstance(v, (list, dict, bool)) or not str(v).strip():
                raise DataError(f"{path}: row {i + 1}: profile column {columns.profile!r} is empty")
        profiles = [str(v).strip() for v in profiles]
    for i, t in enumerate(texts):
        if not isinstance(t, str) or not t.strip():
            raise DataError(f"{path}: row {i + 1}: column {columns.text!r} is empty or not text")
    if pairs is not None:
        for i, t in enumerate(pairs):
            if not isinstance(t, str):
                raise DataError(f"{path}: row {i + 1}: column {columns.text_pair!r} is empty or not text")
    if labels is not None:
        for i, v in enumerate(labels):
            if v is None or (isinstance(v, float) and math.isnan(v)) or (isinstance(v, str) and not v.strip()):
                raise DataError(f"{path}: row {i + 1}: label column {columns.label!r} is empty")
            if isinstance(v, (list, dict)):
                raise DataError(f"{path}: row {i + 1}: label must be a string or a number")
    return Examples([str(t) for t in texts], [str(t) for t in pairs] if pairs else None, labels, str(path), profiles)


def infer_task(labels: list) -> str:
    """Regression when every label is a number and some are not whole; classification otherwise."""
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in labels):
        if any(isinstance(v, float) and not float(v).is_integer() for v in labels):
            return TASK_REGRESSION
    return TASK_CLASSIFICATION


def label_key(v) -> str:
    """Labels are kept by name: 1, 1.0 and "1" are the same class."""
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    return str(v).strip()


def label_names(labels: list) -> list[str]:
    """Sorted class names; numerically when every name is an integer."""
    names = {label_key(v) for v in labels}
    try:
        return sorted(names, key=lambda s: (0, int(s)))
    except ValueError:
        return sorted(names)


def encode_labels(ex: Examples, task: str, names: list[str] | None) -> list:
    if ex.labels is None:
        raise DataError(f"{ex.source}: the data has no labels")
    if task == TASK_REGRESSION:
        out = []
        for i, v in enumerate(ex.labels):
            try:
                out.append(float(v))
            except (TypeError, ValueError):
                raise DataError(f"{ex.source}: row {i + 1}: label {v!r} is not a number") from None
        return out
    if names is None:
        raise ValueError("classification labels need their class names")
    index = {n: i for i, n in enumerate(names)}
    out = []
    for i, v in enumerate(ex.labels):
        key = label_key(v)
        if key not in index:
            raise DataError(f"{ex.source}: row {i + 1}: unknown label {key!r} (the profile knows: {', '.join(names)})")
        out.append(index[key])
    return out


def split_holdout(n: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Seeded shuffle, then the last `fraction` of rows for validation (at least one each)."""
    idx = list(range(n))
    random.Random(seed).shuffle(idx)
    n_val = int(round(n * fraction))
    if fraction <= 0 or n < 2:
        return sorted(idx), []
    n_val = min(max(1, n_val), n - 1)
    return sorted(idx[:-n_val]), sorted(idx[-n_val:])
