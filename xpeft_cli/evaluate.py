"""Running a stored profile (.xpm, or a baseline's .safetensors): build its model, score or predict."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from .bank import Bank
from .baselines import AdapterProfile, BaselineModel, read_adapter
from .batches import predict_outputs, score
from .data import Examples, encode_labels
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


def model_for_profile(bank: Bank, profile: AnyProfile, device: str = "auto", force: bool = False):
    """(model, tokenizer, device) with the profile loaded; refuses a profile of another bank unless forced."""
    encoder, tokenizer = load_encoder(bank.plm)
    dev = pick_device(device)
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
        profile = with_bank_head(bank, profile)
        spec = MaskSpec(kind=profile.mask_kind, k=max(profile.k, 1))
        model = XPeftModel(encoder, bank, profile.num_outputs, task=profile.task, spec=spec)
        apply_profile(model, profile, force=force)
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


def default_max_length(profile: AnyProfile) -> int:
    return int(profile.meta.get("fit", {}).get("max_length", 128))


def evaluate_profile(
    bank: Bank,
    profile: AnyProfile,
    data: Examples,
    batch_size: int = 64,
    max_length: int | None = None,
    device: str = "auto",
    force: bool = False,
) -> tuple[dict, list]:
    """(metrics, predictions); predictions are label names, or numbers for regression."""
    if data.labels is None:
        raise DataError(f"{data.source}: evaluation data needs labels")
    profile = with_bank_head(bank, profile)
    targets = encode_labels(data, profile.task, profile.labels)
    model, tok, dev = model_for_profile(bank, profile, device, force=force)
    metrics, preds = score(
        model, tok, data, targets, profile.num_outputs, batch_size, max_length or default_max_length(profile), dev
    )
    if profile.task != TASK_REGRESSION:
        preds = [profile.labels[i] for i in preds]
    return metrics, preds


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
    return [profile.labels[i] for i in out.argmax(-1).tolist()]
