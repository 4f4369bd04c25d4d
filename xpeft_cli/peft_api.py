"""A peft-style API: `get_xpeft_model(encoder, bank, XPeftConfig(...))` wraps a Hugging Face encoder
the way `peft.get_peft_model` does, and the wrapper trains inside a plain `transformers.Trainer`.

- `XPeftConfig` says what a profile is (mask kind, k, task, labels) and how it learns (the three
  learning rates); it saves as `xpeft_config.json`, as peft's configs do.
- `XPeftModelForSequenceClassification.forward(input_ids, attention_mask, token_type_ids, labels)`
  returns a `SequenceClassifierOutput`: with `labels`, its `loss` (cross-entropy, or MSE for
  regression) is what the Trainer minimises.
- `xpeft_optimizer(model)` is AdamW over the three parameter groups (masks, bottleneck LN, head), each
  at its own learning rate: hand it to the Trainer as `optimizers=(xpeft_optimizer(model), None)`.
- `save_pretrained(dir)` writes the profile as `profile.xpm` (a few KB) plus the config and the bank it
  belongs to (`bank.json`'s hash and where the bank lives); `from_pretrained(dir, bank)` loads it back,
  refusing a profile of another bank. A bank itself loads from a folder (`Bank.load`), as a hub-style
  folder does.

The same model, masks and files as `xpeft fit`: a profile trained here is an ordinary `.xpm`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .atomic import atomic_write_text
from .bank import Bank
from .batches import PredictsText
from .errors import IntegrityError, UsageError
from .masks import MaskSpec
from .model import TASK_CLASSIFICATION, TASK_REGRESSION, XPeftModel
from .profile import Profile, apply_profile, profile_from_model, with_param_dtype

CONFIG_NAME = "xpeft_config.json"
PROFILE_NAME = "profile.xpm"


@dataclass
class XPeftConfig:
    """What a profile is and how it learns; the defaults are `xpeft fit`'s."""

    task: str = TASK_CLASSIFICATION  # classification | regression
    labels: list[str] | None = None  # class names, in output order (classification)
    mask: str = "sign"  # sign | hard | soft
    k: int = 50  # hard masks: adapters chosen per site
    nu: float = 0.3  # hard masks: Gumbel noise while training
    tau: float = 1.0
    lr_masks: float = 5e-2
    lr_ln: float = 1e-2
    lr_head: float = 3e-3
    seed: int = 0
    name: str = "profile"
    param_dtype: str = "float16"  # how save_pretrained stores LN and head
    extra: dict = field(default_factory=dict)  # free-form, kept in the profile's metadata

    def __post_init__(self) -> None:
        if self.task not in (TASK_CLASSIFICATION, TASK_REGRESSION):
            raise UsageError(f"task must be {TASK_CLASSIFICATION} or {TASK_REGRESSION}, not {self.task!r}")
        if self.mask not in ("sign", "hard", "soft"):
            raise UsageError(f"mask must be sign, hard or soft, not {self.mask!r}")
        if self.task == TASK_CLASSIFICATION and (
            not self.labels or len(self.labels) < 2 or len(set(self.labels)) != len(self.labels)
        ):
            raise UsageError("a classification config needs at least two distinct labels")

    @property
    def num_outputs(self) -> int:
        return 1 if self.task == TASK_REGRESSION else len(self.labels or [])

    def to_dict(self) -> dict:
        return {"format": "xpeft-config/1"} | asdict(self)

    @classmethod
    def from_dict(cls, obj: dict) -> "XPeftConfig":
        if not isinstance(obj, dict) or obj.get("format") != "xpeft-config/1":
            raise IntegrityError("not an xpeft config (format 'xpeft-config/1')")
        known = set(cls.__dataclass_fields__)
        try:
            return cls(**{k: v for k, v in obj.items() if k in known})
        except TypeError as exc:
            raise IntegrityError(f"malformed xpeft config: {exc}") from None

    def save_pretrained(self, folder: str | Path) -> None:
        atomic_write_text(Path(folder) / CONFIG_NAME, json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> "XPeftConfig":
        path = Path(folder) / CONFIG_NAME
        if not path.is_file():
            raise UsageError(f"no {CONFIG_NAME} in {folder}")
        try:
            return cls.from_dict(json.loads(path.read_text(encoding="utf-8")))
        except (ValueError, RecursionError) as exc:
            raise IntegrityError(f"{path}: not valid JSON ({exc})") from None


class XPeftModelForSequenceClassification(nn.Module, PredictsText):
    """An encoder with X-PEFT sites and a head; forward returns a loss when given labels; `predict` and
    `predict_proba` answer raw strings (batches.PredictsText)."""

    def __init__(self, model: XPeftModel, bank: Bank, config: XPeftConfig):
        super().__init__()
        self.model, self.bank, self.xpeft_config = model, bank, config
        self.tokenizer: Any = None  # set by from_pretrained; else loaded from the bank's PLM when predict needs it
        # What transformers.Trainer reads from a model: the encoder's own config.
        self.config = model.encoder.config

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, labels=None, **_unused):
        from transformers.modeling_outputs import SequenceClassifierOutput

        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        logits = self.model(input_ids, attention_mask, token_type_ids)
        loss = None
        if labels is not None:
            if self.xpeft_config.task == TASK_REGRESSION:
                loss = nn.functional.mse_loss(logits.float().view(-1), labels.float().view(-1))
            else:
                loss = nn.functional.cross_entropy(logits.float(), labels.long().view(-1))
        return SequenceClassifierOutput(loss=loss, logits=logits)

    def _task_labels(self) -> tuple[str, list[str] | None]:
        return self.xpeft_config.task, self.xpeft_config.labels

    def _outputs(self, texts, text_pairs, batch_size: int, max_length: int) -> torch.Tensor:
        from .batches import predict_outputs
        from .data import Examples

        if self.tokenizer is None:  # wrapped from an encoder alone: the bank's PLM has the tokenizer
            from transformers import AutoTokenizer

            self.tokenizer = AutoTokenizer.from_pretrained(self.bank.plm.path, local_files_only=True)
        device = next(self.model.parameters()).device
        was = self.model.training
        try:
            ex = Examples(texts, text_pairs, None, "predict")
            return predict_outputs(self.model, self.tokenizer, ex, batch_size, max_length, device)
        finally:
            self.model.train(was)

    def parameter_groups(self) -> list[dict]:
        """Masks, bottleneck LN and head, each with its learning rate (empty groups left out)."""
        c = self.xpeft_config
        groups = [
            {"params": self.model.mask_parameters(), "lr": c.lr_masks},
            {"params": self.model.ln_parameters(), "lr": c.lr_ln},
            {"params": self.model.head_parameters(), "lr": c.lr_head},
        ]
        return [g for g in groups if g["params"]]

    def print_trainable_parameters(self) -> None:
        trainable = sum(p.numel() for g in self.parameter_groups() for p in g["params"])
        total = sum(p.numel() for p in self.parameters())
        print(f"trainable params: {trainable:,} || all params: {total:,} || trainable%: {100 * trainable / total:.4f}")

    def profile(self) -> Profile:
        """The profile as `xpeft fit` would store it (hard masks become their top-k bits)."""
        c = self.xpeft_config
        meta = {"fit": {"via": "peft_api", "mask": c.mask, "k": c.k, "seed": c.seed}} | (
            {"extra": c.extra} if c.extra else {}
        )
        was = self.model.training
        self.model.eval()
        p = profile_from_model(self.model, c.name, self.bank.n, c.labels, meta, with_head=True)
        self.model.train(was)
        return with_param_dtype(p, c.param_dtype)

    def save_pretrained(self, folder: str | Path, **_unused) -> None:
        """`profile.xpm` (a few KB: no PLM or bank weights), `xpeft_config.json`, and `bank.json`'s hash
        and location in `xpeft_bank.json`."""
        from .xpm import write_xpm

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        write_xpm(self.profile(), folder / PROFILE_NAME)
        self.xpeft_config.save_pretrained(folder)
        where = {"bank_hash": self.bank.bank_hash, "folder": str(self.bank.folder) if self.bank.folder else None}
        atomic_write_text(folder / "xpeft_bank.json", json.dumps(where, indent=2) + "\n")

    @classmethod
    def from_pretrained(
        cls, folder: str | Path, bank: Bank | str | Path | None = None, encoder: nn.Module | None = None
    ) -> "XPeftModelForSequenceClassification":
        """Load what save_pretrained wrote onto `bank` (a Bank, or its folder; by default the folder
        recorded beside the profile). A profile of another bank is refused."""
        from .xpm import read_xpm

        folder = Path(folder)
        if folder.suffix == ".xpm" and folder.is_file():  # a profile file as `xpeft fit` writes it
            return cls._from_xpm(folder, bank, encoder)
        config = XPeftConfig.from_pretrained(folder)
        if not isinstance(bank, Bank):
            where = bank
            if where is None:
                try:
                    where = json.loads((folder / "xpeft_bank.json").read_text(encoding="utf-8"))["folder"]
                except (OSError, ValueError, KeyError, TypeError):
                    where = None
            if not isinstance(where, (str, Path)):
                raise UsageError(f"{folder}: give the bank (no recorded bank folder)")
            bank = Bank.load(where)
        profile = read_xpm(folder / PROFILE_NAME)
        if profile.bank_hash != bank.bank_hash:
            raise IntegrityError(
                f"{folder}: profile of bank {profile.bank_hash[:16]}…, not of this bank ({bank.bank_hash[:16]}…)"
            )
        return cls._wrap(profile, bank, config, encoder)

    @classmethod
    def _from_xpm(cls, path: Path, bank, encoder) -> "XPeftModelForSequenceClassification":
        """A profile file of `xpeft fit`: its bank must be given (a Bank or its folder)."""
        from .evaluate import with_bank_head
        from .xpm import read_xpm

        if bank is None:
            raise UsageError(
                f"{path}: an .xpm names its bank by hash only; give it: from_pretrained(path, bank=FOLDER)"
            )
        bank = bank if isinstance(bank, Bank) else Bank.load(bank)
        profile = read_xpm(path)
        if profile.bank_hash != bank.bank_hash:
            raise IntegrityError(
                f"{path}: profile of bank {profile.bank_hash[:16]}…, not of this bank ({bank.bank_hash[:16]}…)"
            )
        shaped = with_bank_head(bank, profile)  # a masks-only profile of an mtl bank: the bank's head
        assert isinstance(shaped, Profile)
        profile = shaped
        config = XPeftConfig(
            task=profile.task,
            labels=profile.labels,
            mask=profile.mask_kind,
            k=max(profile.k, 1),
            name=profile.name,
            param_dtype=profile.param_dtype,
        )
        return cls._wrap(profile, bank, config, encoder)

    @classmethod
    def _wrap(cls, profile: Profile, bank: Bank, config: XPeftConfig, encoder) -> "XPeftModelForSequenceClassification":
        from .plm import load_encoder

        tokenizer = None
        if encoder is None:
            encoder, tokenizer = load_encoder(bank.plm)
        wrapped = get_xpeft_model(encoder, bank, config)
        apply_profile(wrapped.model, profile)
        wrapped.tokenizer = tokenizer
        return wrapped


def get_xpeft_model(encoder: nn.Module, bank: Bank, config: XPeftConfig) -> XPeftModelForSequenceClassification:
    """Put the bank's X-PEFT sites into `encoder` (the bank's PLM, e.g. from `load_encoder(bank.plm)`)
    and freeze everything but the profile's masks, bottleneck LN and head."""
    if config.mask == "hard" and not 1 <= config.k <= bank.n:
        raise UsageError(f"k must be in 1..{bank.n}")
    # Gumbel noise from torch's global generator, on whatever device the Trainer puts the model
    spec = MaskSpec(kind=config.mask, k=min(config.k, bank.n), nu=config.nu, tau=config.tau)
    try:
        model = XPeftModel(encoder, bank, config.num_outputs, task=config.task, spec=spec, seed=config.seed)
    except ValueError as exc:  # not this bank's PLM, or an encoder wrapped already (sites are put in place)
        raise UsageError(str(exc)) from None
    return XPeftModelForSequenceClassification(model, bank, config)


def xpeft_optimizer(model: XPeftModelForSequenceClassification) -> torch.optim.Optimizer:
    """AdamW over the model's three parameter groups, as `xpeft fit` trains them (no weight decay)."""
    return torch.optim.AdamW(model.parameter_groups(), weight_decay=0.0)
