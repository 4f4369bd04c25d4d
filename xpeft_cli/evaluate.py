"""Running a stored profile (.xpm, or a baseline's .safetensors): build its model, score or predict."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

from .bank import Bank
from .baselines import AdapterProfile, BaselineModel, read_adapter
from .batches import predict_outputs, score
from .data import Columns, Examples, encode_labels, label_key
from .distributed import pick_device
from .errors import DataError, IntegrityError
from .masks import MaskSpec
from .model import TASK_REGRESSION, XPeftModel
from .plm import load_encoder
from .profile import Profile, apply_profile
from .xpm import read_xpm

AnyProfile = Profile | AdapterProfile


def read_profile(path: str | Path) -> AnyProfile:
    """An .xpm profile, or a baseline adapter written by `xpeft fit --method …` (.safetensors)."""
    if str(path).endswith(".safetensors"):
        if not Path(path).is_file():
            raise DataError(f"{path}: no such profile file")
        return read_adapter(path)
    return read_xpm(path)


def columns_for(profile: AnyProfile, text: str | None, text_pair: str | None, label: str | None) -> Columns:
    """The columns to read a profile's data from: each one named explicitly wins; otherwise the one the
    profile was fitted from (its metadata remembers names other than the defaults); else the default."""
    fit = profile.meta.get("fit") if isinstance(profile.meta, dict) else None
    recorded = fit.get("columns") if isinstance(fit, dict) else None
    named = {}
    if isinstance(recorded, dict):  # metadata is untrusted: only non-empty strings count
        named = {k: v for k, v in recorded.items() if isinstance(v, str) and v}
    default = Columns()
    return Columns(
        text=text or named.get("text", default.text),
        text_pair=text_pair or named.get("text_pair", default.text_pair),
        label=label or named.get("label", default.label),
    )


def model_for_profile(bank: Bank, profile: AnyProfile, device: str = "auto", force: bool = False):
    """(model, tokenizer, device) with the profile loaded; refuses a profile of another bank unless forced."""
    encoder, tokenizer = load_encoder(bank.plm)
    dev = pick_device(device)
    model: Any  # a baseline or an X-PEFT model: both are encoder classifiers
    if isinstance(profile, AdapterProfile):
        if profile.bank_hash != bank.bank_hash and not force:
            raise IntegrityError(
                f"adapter {profile.name!r} was trained on bank {profile.bank_hash[:16]}…, not on this "
                f"bank ({bank.bank_hash[:16]}…); --force uses it anyway"
            )
        if profile.sites != [s.name for s in bank.sites] and profile.method == "single-adapter":
            raise IntegrityError(f"adapter {profile.name!r} adapts other modules than this bank's sites")
        model = BaselineModel(
            encoder, profile.method, profile.sites, profile.rank, profile.num_outputs, task=profile.task
        )
        model.load_tensors(profile.tensors)
    else:
        xp = with_bank_head(bank, profile)
        assert isinstance(xp, Profile)
        spec = MaskSpec(kind=xp.mask_kind, k=max(xp.k, 1))
        model = XPeftModel(encoder, bank, outputs(xp), task=xp.task, spec=spec)
        apply_profile(model, xp, force=force)
    return model.to(dev).eval(), tokenizer, dev


def with_bank_head(bank: Bank, profile: AnyProfile) -> AnyProfile:
    """A profile without a head section runs with its bank's shared head (mtl banks) and labels."""
    if isinstance(profile, AdapterProfile) or profile.head_weight is not None:
        return profile
    if bank.head is None:
        raise DataError(f"profile {profile.name!r} has no head section, and this bank carries no shared head")
    return replace(
        profile,
        head_weight=bank.head.weight.numpy(),
        head_bias=bank.head.bias.numpy(),
        task=bank.head.task,
        labels=bank.head.labels,
    )


def outputs(profile: AnyProfile) -> int:
    """How many outputs the profile's head has (after with_bank_head, every profile has a head)."""
    n = profile.num_outputs
    if n is None:
        raise DataError(f"profile {profile.name!r} has no head section, and this bank carries no shared head")
    return n


def default_max_length(profile: AnyProfile) -> int:
    """The token limit the profile was fitted with (its metadata), 128 if it does not say. Metadata is
    free-form JSON inside a file that verifies, so what it says is checked before it is used."""
    fit = profile.meta.get("fit", {}) if isinstance(profile.meta, dict) else {}
    value = fit.get("max_length", 128) if isinstance(fit, dict) else 128
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 1 << 16:
        raise IntegrityError(f"profile {profile.name!r}: metadata max_length {value!r} is not a token count")
    return value


def evaluate_profile(
    bank: Bank,
    profile: AnyProfile,
    data: Examples,
    batch_size: int = 64,
    max_length: int | None = None,
    device: str = "auto",
    force: bool = False,
) -> tuple[dict, list]:
    """(metrics, predictions); predictions are label names, or numbers for regression.

    Test rows whose label the profile never saw are scored (the profile cannot predict them, so they
    count as errors) and counted in metrics["unseen_labels"], rather than stopping the evaluation."""
    profile = with_bank_head(bank, profile)
    targets, unseen = gold_targets(profile, data)
    model, tok, dev = model_for_profile(bank, profile, device, force=force)
    metrics, preds = score(
        model, tok, data, targets, outputs(profile), batch_size, max_length or default_max_length(profile), dev
    )
    if profile.task != TASK_REGRESSION:
        preds = [(profile.labels or [])[i] for i in preds]
    if unseen:
        metrics["unseen_labels"] = unseen
    return metrics, preds


def gold_targets(profile: AnyProfile, data: Examples) -> tuple[list, dict]:
    """(targets, unseen): the rows' labels as the profile's class indices (numbers for regression) and,
    for labels the profile was never fitted on, how many rows carry each. Such rows get index -1: the
    profile cannot predict them, so they are scored as errors instead of stopping the evaluation."""
    if data.labels is None:
        raise DataError(f"{data.source}: evaluation data needs labels")
    if profile.task == TASK_REGRESSION:
        return encode_labels(data, profile.task, profile.labels), {}
    known = {n: i for i, n in enumerate(profile.labels or [])}
    keys = [label_key(v) for v in data.labels]
    unseen = Counter(k for k in keys if k not in known)
    return [known.get(k, -1) for k in keys], dict(unseen.most_common())


def predict_profile(
    bank: Bank,
    profile: AnyProfile,
    data: Examples,
    batch_size: int = 64,
    max_length: int | None = None,
    device: str = "auto",
) -> list:
    profile = with_bank_head(bank, profile)
    model, tok, dev = model_for_profile(bank, profile, device)
    out = predict_outputs(model, tok, data, batch_size, max_length or default_max_length(profile), dev)
    if profile.task == TASK_REGRESSION:
        return out.tolist()
    return [(profile.labels or [])[i] for i in out.argmax(-1).tolist()]
