"""Examples to device batches and head outputs: tokenise once, pad the rows a step takes, and run the
frozen PLM in its compute context (bf16 autocast on a GPU, no cuDNN attention). Every fit, evaluation
and server goes through these, so they all see the same tokens and the same arithmetic.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from .data import Examples
from .errors import UsageError
from .metrics import classification_metrics, regression_metrics
from .model import TASK_REGRESSION, EncoderClassifier
from .plm import max_tokens


def pretokenize(tokenizer, ex: Examples, max_length: int) -> dict[str, list]:
    """Token ids of every example, once (truncated, not padded)."""
    enc = tokenizer(ex.texts, ex.pairs, truncation=True, max_length=max_length)
    return {k: enc[k] for k in ("input_ids", "token_type_ids", "attention_mask") if k in enc}


def collate(tokenizer, enc: dict[str, list], idx: list[int], device) -> dict:
    """Pad the chosen examples to the longest among them, as tensors on `device`."""
    batch = tokenizer.pad([{k: v[i] for k, v in enc.items()} for i in idx], return_tensors="pt")
    return {k: batch[k].to(device) for k in enc}


PRECISIONS = ("auto", "bf16", "fp32")


def uses_bf16(device: torch.device, precision: str = "auto") -> bool:
    if precision not in PRECISIONS:
        raise UsageError(f"--precision must be one of {', '.join(PRECISIONS)}")
    return precision == "bf16" or (precision == "auto" and device.type == "cuda")


# cuDNN's attention builds an execution plan for every new padded length it meets: ~14 ms of
# CPU each, which made a bf16 fit of variable-length batches 8x slower in a fresh process
# (measured on an H200, benchmarks/README.md). Flash / memory-efficient attention need no plans.
_ATTENTION = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


@contextmanager
def compute_context(device: torch.device, precision: str = "auto", cache_casts: bool = True):
    """How the frozen PLM runs: bf16 autocast on a GPU (unless fp32 is asked for), no cuDNN attention.

    `cache_casts=False` for CUDA graph capture, which autocast's cast cache must stay out of.
    """
    with (
        torch.autocast(
            device.type, dtype=torch.bfloat16, enabled=uses_bf16(device, precision), cache_enabled=cache_casts
        ),
        sdpa_kernel(_ATTENTION),
    ):
        yield


@torch.no_grad()
def predict_outputs(
    model: EncoderClassifier,
    tokenizer,
    ex: Examples,
    batch_size: int,
    max_length: int,
    device: torch.device,
    precision: str = "auto",
) -> torch.Tensor:
    """Raw head outputs (logits or regression values) for every example, in order, float32 on CPU."""
    model.eval()
    enc = pretokenize(tokenizer, ex, min(max_length, max_tokens(model.encoder)))
    outs = []
    for i in range(0, len(ex), batch_size):
        batch = collate(tokenizer, enc, list(range(i, min(i + batch_size, len(ex)))), device)
        with compute_context(device, precision):
            outs.append(model(**batch).float().cpu())
    return torch.cat(outs)


def score(
    model: EncoderClassifier,
    tokenizer,
    ex: Examples,
    targets: list,
    num_classes: int,
    batch_size: int,
    max_length: int,
    device,
    precision: str = "auto",
) -> tuple[dict, list]:
    out = predict_outputs(model, tokenizer, ex, batch_size, max_length, device, precision)
    if model.task == TASK_REGRESSION:
        preds = out.tolist()
        return regression_metrics(targets, preds), preds
    preds = out.argmax(-1).tolist()
    # macro-F1 over the classes in the rows' labels or predictions (scikit-learn's default), as eval -P
    return classification_metrics(targets, preds, num_classes, present_only=True), preds


class PredictsText:
    """`predict` / `predict_proba` on raw strings, as SetFit's models have them, for any model that turns
    a list of texts (and second texts of pairs) into head outputs (`_outputs`) and knows its task and
    labels (`_task_labels`): the peft-style wrapper and an exported adapter share them."""

    def _outputs(
        self, texts: list[str], text_pairs: list[str] | None, batch_size: int, max_length: int
    ) -> torch.Tensor:
        raise NotImplementedError

    def _task_labels(self) -> tuple[str, list[str] | None]:
        raise NotImplementedError

    def _checked_outputs(self, texts, text_pairs, batch_size: int, max_length: int) -> torch.Tensor:
        if isinstance(texts, str) or (text_pairs is not None and len(text_pairs) != len(texts)):
            raise UsageError("give a list of texts (and, for pairs, a list of second texts of the same length)")
        return self._outputs(list(texts), list(text_pairs) if text_pairs is not None else None, batch_size, max_length)

    def predict_proba(self, texts, text_pairs=None, batch_size: int = 64, max_length: int = 128) -> torch.Tensor:
        """Label probabilities (rows × labels, float32 on the CPU); for regression, the values (rows × 1)."""
        out = self._checked_outputs(texts, text_pairs, batch_size, max_length)
        return out if self._task_labels()[0] == TASK_REGRESSION else out.softmax(-1)

    def predict(self, texts, text_pairs=None, batch_size: int = 64, max_length: int = 128) -> list:
        """The label of each string (a number for regression)."""
        out = self._checked_outputs(texts, text_pairs, batch_size, max_length)
        task, labels = self._task_labels()
        if task == TASK_REGRESSION:
            return out[:, 0].tolist()
        return [(labels or [])[i] for i in out.argmax(-1).tolist()]
