"""The peft-style API: an X-PEFT profile trained by a plain transformers.Trainer, with its three
learning rates, saved and loaded like a peft adapter, and the same kind of file `xpeft fit` writes."""

from __future__ import annotations

import pytest
import torch

from xpeft_cli import XPeftConfig, XPeftModelForSequenceClassification, get_xpeft_model, xpeft_optimizer
from xpeft_cli.errors import IntegrityError, UsageError
from xpeft_cli.plm import load_encoder
from xpeft_cli.xpm import read_xpm_full

from helpers import make_bank, sentiment_rows


@pytest.fixture(scope="module")
def setup(tiny_bert, tmp_path_factory):
    bank = make_bank(tiny_bert, tmp_path_factory.mktemp("bank"), n=16)
    encoder, tok = load_encoder(bank.plm)
    return bank, encoder, tok


def _rows(tok, n: int, seed: int) -> list[dict]:
    return [dict(tok(r["text"], truncation=True), labels=int(r["label"] == "pos")) for r in sentiment_rows(n, seed)]


def test_trainer_trains_saves_and_loads_a_profile(setup, tmp_path):
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

    bank, encoder, tok = setup
    config = XPeftConfig(labels=["neg", "pos"], name="alice", param_dtype="float32", lr_head=3e-2)
    model = get_xpeft_model(encoder, bank, config)
    trainable = {id(p) for g in model.parameter_groups() for p in g["params"]}
    assert all((id(p) in trainable) == p.requires_grad for p in model.parameters())  # PLM and bank frozen
    opt = xpeft_optimizer(model)
    assert [g["lr"] for g in opt.param_groups] == [5e-2, 1e-2, 3e-2]  # masks, LN, head: their own LRs
    args = TrainingArguments(
        output_dir=str(tmp_path / "run"),
        num_train_epochs=6,
        per_device_train_batch_size=8,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=_rows(tok, 64, 0),
        data_collator=DataCollatorWithPadding(tok),
        optimizers=(opt, None),
    )
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 48 and sum(losses[-8:]) / 8 < sum(losses[:8]) / 8  # it learned

    batch = DataCollatorWithPadding(tok)([{k: v for k, v in r.items() if k != "labels"} for r in _rows(tok, 12, 1)])
    model.eval()
    with torch.no_grad():
        before = model(**batch).logits
    model.save_pretrained(tmp_path / "alice")
    full = read_xpm_full(tmp_path / "alice" / "profile.xpm")  # an ordinary .xpm of this bank
    assert full.profile.bank_hash == bank.bank_hash and full.profile.mask_kind == "sign"
    assert full.profile.labels == ["neg", "pos"] and sum(full.sizes.values()) < 4096

    back = XPeftModelForSequenceClassification.from_pretrained(tmp_path / "alice", bank)
    back.eval()
    with torch.no_grad():
        after = back(**batch).logits
    torch.testing.assert_close(after, before, atol=1e-5, rtol=0)
    with torch.no_grad():  # labels in: a loss out, as a Trainer expects
        out = back(**batch, labels=torch.zeros(12, dtype=torch.long))
    assert out.loss is not None and out.loss.ndim == 0


def test_from_pretrained_refuses_another_bank(setup, tmp_path, tiny_bert):
    bank, _, _ = setup
    encoder, _ = load_encoder(bank.plm)
    model = get_xpeft_model(encoder, bank, XPeftConfig(labels=["a", "b"], mask="hard", k=4))
    with pytest.raises(UsageError, match="already holds an X-PEFT site"):  # sites go in place, as peft's do
        get_xpeft_model(encoder, bank, XPeftConfig(labels=["a", "b"]))
    model.save_pretrained(tmp_path / "p")
    other = make_bank(tiny_bert, tmp_path / "other", n=16, seed=5)
    with pytest.raises(IntegrityError, match="not of this bank"):
        XPeftModelForSequenceClassification.from_pretrained(tmp_path / "p", other)
    with pytest.raises(UsageError, match="two distinct labels"):
        XPeftConfig(labels=["only"])
