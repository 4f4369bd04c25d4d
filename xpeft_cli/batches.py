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
