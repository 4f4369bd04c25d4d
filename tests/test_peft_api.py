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


def test_xpeft_trainer_default_optimizer_and_save_model(setup, tmp_path):
    """Issue 30: with a plain Trainer, leaving out `optimizers=` trained every group at one small LR, and
    `trainer.save_model()` wrote the whole encoder. XPeftTrainer's default optimizer is the three groups at
    their own LRs (scaled by the Trainer's schedule), and save_model writes the profile, a few KB."""
    from transformers import DataCollatorWithPadding, TrainingArguments

    from xpeft_cli import XPeftTrainer

    bank, _, tok = setup
    encoder, _ = load_encoder(bank.plm)  # its own: an encoder takes X-PEFT sites once
    model = get_xpeft_model(encoder, bank, XPeftConfig(labels=["neg", "pos"], name="tr", lr_head=3e-2))
    args = TrainingArguments(
        output_dir=str(tmp_path / "run"), num_train_epochs=6, per_device_train_batch_size=8, logging_steps=1,
        save_strategy="no", report_to=[], use_cpu=True, seed=0, disable_tqdm=True,
    )  # fmt: skip
    trainer = XPeftTrainer(
        model=model, args=args, train_dataset=_rows(tok, 64, 0), data_collator=DataCollatorWithPadding(tok)
    )
    trainer.train()
    assert [g["initial_lr"] for g in trainer.optimizer.param_groups] == [5e-2, 1e-2, 3e-2]
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert sum(losses[-8:]) / 8 < sum(losses[:8]) / 8
    trainer.save_model(str(tmp_path / "saved"))
    files = {p.name: p.stat().st_size for p in (tmp_path / "saved").iterdir()}
    assert "profile.xpm" in files and files["profile.xpm"] < 10_000
    assert not any(n.endswith((".safetensors", ".bin")) for n in files)  # no encoder weights
    back = XPeftModelForSequenceClassification.from_pretrained(tmp_path / "saved", bank)
    texts = [r["text"] for r in sentiment_rows(12, 1)]
    assert back.predict(texts) == model.predict(texts)


def test_predict_on_raw_strings(setup, tmp_path):
    """Issue 30: the library predicts on a list of strings, as SetFit's predict / predict_proba, from a
    profile folder or from an .xpm that `xpeft fit` wrote (its bank given)."""
    from xpeft_cli import FitConfig, fit_profile, load_examples, write_xpm

    from helpers import write_jsonl

    bank = setup[0]
    rows = sentiment_rows(48, 0)
    write_jsonl(tmp_path / "train.jsonl", rows)
    res = fit_profile(bank, load_examples(tmp_path / "train.jsonl"), "eve", FitConfig(epochs=2, device="cpu"))
    write_xpm(res.profile, tmp_path / "eve.xpm")
    with pytest.raises(UsageError, match="give it"):
        XPeftModelForSequenceClassification.from_pretrained(tmp_path / "eve.xpm")
    model = XPeftModelForSequenceClassification.from_pretrained(tmp_path / "eve.xpm", bank=bank.folder)
    texts = [r["text"] for r in sentiment_rows(10, 3)]
    labels = model.predict(texts)
    proba = model.predict_proba(texts)
    assert proba.shape == (10, 2) and torch.allclose(proba.sum(-1), torch.ones(10), atol=1e-5)
    assert labels == [res.profile.labels[i] for i in proba.argmax(-1).tolist()]
    from xpeft_cli import Examples, predict_profile

    assert labels == predict_profile(bank, res.profile, Examples(texts, None, None, "t"), device="cpu")
    with pytest.raises(UsageError, match="list of texts"):
        model.predict("one string")
