"""Running a stored profile: build the model for it and score or predict labelled data."""
from __future__ import annotations

from .bank import Bank
from .data import Examples, encode_labels
from .errors import DataError
from .masks import MaskSpec
from .model import TASK_REGRESSION, XPeftModel
from .plm import load_encoder
from .profile import Profile, apply_profile
from .train import pick_device, predict_outputs, score


def model_for_profile(bank: Bank, profile: Profile, device: str = "auto", force: bool = False):
    """(model, tokenizer, device) with the profile loaded; refuses a profile of another bank unless forced."""
    if profile.head_weight is None:
        raise DataError(f"profile {profile.name!r} has no head section, and this bank carries no shared head")
    encoder, tokenizer = load_encoder(bank.plm)
    dev = pick_device(device)
    spec = MaskSpec(kind=profile.mask_kind, k=max(profile.k, 1))
    model = XPeftModel(encoder, bank, profile.num_outputs, task=profile.task, spec=spec)
    apply_profile(model, profile, force=force)
    return model.to(dev).eval(), tokenizer, dev


def default_max_length(profile: Profile) -> int:
    return int(profile.meta.get("fit", {}).get("max_length", 128))


def evaluate_profile(bank: Bank, profile: Profile, data: Examples, batch_size: int = 64,
                     max_length: int | None = None, device: str = "auto", force: bool = False) -> tuple[dict, list]:
    """(metrics, predictions); predictions are label names, or numbers for regression."""
    if data.labels is None:
        raise DataError(f"{data.source}: evaluation data needs labels")
    targets = encode_labels(data, profile.task, profile.labels)
    model, tok, dev = model_for_profile(bank, profile, device, force=force)
    n_out = profile.num_outputs
    metrics, preds = score(model, tok, data, targets, n_out, batch_size, max_length or default_max_length(profile), dev)
    if profile.task != TASK_REGRESSION:
        preds = [profile.labels[i] for i in preds]
    return metrics, preds


def predict_profile(bank: Bank, profile: Profile, data: Examples, batch_size: int = 64,
                    max_length: int | None = None, device: str = "auto") -> list:
    model, tok, dev = model_for_profile(bank, profile, device)
    out = predict_outputs(model, tok, data, batch_size, max_length or default_max_length(profile), dev)
    if profile.task == TASK_REGRESSION:
        return out.tolist()
    return [profile.labels[i] for i in out.argmax(-1).tolist()]


__all__ = ["XPeftModel", "evaluate_profile", "model_for_profile", "predict_profile"]
