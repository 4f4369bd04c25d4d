"""Export to peft: a profile of an LN-free bank loads with PeftModel.from_pretrained and gives the
same hidden states; a bank with a normalising LN is refused."""

from __future__ import annotations

import json

import pytest
import torch

peft = pytest.importorskip("peft")


def test_export_matches_peft_exactly(cli, fitted, tiny_bert):
    from transformers import AutoModel

    from xpeft_cli import Bank, read_xpm
    from xpeft_cli.evaluate import model_for_profile

    assert cli("bank", "create", "--random", "-n", "16", "--ln", "none", "-o", "bank-nl")[0] == 0
    for mask in ("hard", "soft", "sign"):
        code, _, err = cli(
            "fit",
            "-p",
            f"nl-{mask}",
            "-d",
            "alice.jsonl",
            "--bank",
            "bank-nl",
            "--mask",
            mask,
            "--epochs",
            "2",
            "--k",
            "4",
            "--quiet",
        )
        assert code == 0, err
        code, out, err = cli(
            "export", f"nl-{mask}.xpm", "--bank", "bank-nl", "--to", "peft", "-o", f"lora-{mask}", "--json"
        )
        assert code == 0, err
        cfg = json.loads((fitted / f"lora-{mask}" / "adapter_config.json").read_text())
        assert cfg["peft_type"] == "LORA" and cfg["r"] == 2 and len(cfg["target_modules"]) == 4
        base = AutoModel.from_pretrained(tiny_bert)
        peft_model = peft.PeftModel.from_pretrained(base, str(fitted / f"lora-{mask}")).eval()
        bank = Bank.load(fitted / "bank-nl")
        ours, _, _ = model_for_profile(bank, read_xpm(fitted / f"nl-{mask}.xpm"), "cpu")
        ids = torch.randint(5, 60, (3, 9), generator=torch.Generator().manual_seed(1))
        mask_t = torch.ones_like(ids)
        with torch.no_grad():
            a = peft_model(input_ids=ids, attention_mask=mask_t).last_hidden_state
            b = ours.encoder(input_ids=ids, attention_mask=mask_t).last_hidden_state
            plain = AutoModel.from_pretrained(tiny_bert)(input_ids=ids, attention_mask=mask_t).last_hidden_state
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
        assert not torch.allclose(a, plain, atol=1e-4)  # the adapter really changes the model


def test_export_refuses_a_normalising_ln(cli, fitted):
    code, _, err = cli("export", "alice.xpm", "--to", "peft", "-o", "out")
    assert code == 2 and "not linear" in err and len(err.strip().splitlines()) == 1


def test_auto_peft_class_loads_the_export_and_the_head_gives_xpeft_answers(cli, fitted, tiny_bert):
    """AutoPeftModelForFeatureExtraction infers its class from task_type; with the head written beside
    the adapter (mean pooling, head.json) it answers as `xpeft predict` does. Files are 0644, and the
    base model is named by what the bank names (here the tiny model's folder), never a resolved path."""
    import os
    import stat

    from safetensors.torch import load_file

    from xpeft_cli import Bank, read_xpm
    from xpeft_cli.evaluate import model_for_profile
    from xpeft_cli.model import mean_pool

    assert cli("bank", "create", "--random", "-n", "16", "--ln", "none", "-o", "bank-nl")[0] == 0
    assert cli("fit", "-p", "nl", "-d", "alice.jsonl", "--bank", "bank-nl", "--epochs", "2", "--quiet")[0] == 0
    code, out, err = cli("export", "nl.xpm", "--bank", "bank-nl", "-o", "lora", "--json")
    assert code == 0, err
    cfg = json.loads((fitted / "lora" / "adapter_config.json").read_text())
    assert cfg["task_type"] == "FEATURE_EXTRACTION" and cfg["base_model_name_or_path"] == str(tiny_bert)
    umask = os.umask(0)
    os.umask(umask)
    for f in (fitted / "lora").iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o666 & ~umask, f  # 0644 under the usual umask 022

    auto = peft.AutoPeftModelForFeatureExtraction.from_pretrained(str(fitted / "lora")).eval()
    head = load_file(str(fitted / "lora" / "head.safetensors"))
    meta = json.loads((fitted / "lora" / "head.json").read_text())
    assert meta["pooling"] == "mean" and meta["labels"] == ["neg", "pos"]
    bank = Bank.load(fitted / "bank-nl")
    ours, _, _ = model_for_profile(bank, read_xpm(fitted / "nl.xpm"), "cpu")
    ids = torch.randint(5, 60, (4, 11), generator=torch.Generator().manual_seed(2))
    attn = torch.ones_like(ids)
    attn[0, 7:] = 0
    with torch.no_grad():
        hidden = auto(input_ids=ids, attention_mask=attn).last_hidden_state
        logits = mean_pool(hidden, attn) @ head["weight"].T + head["bias"]
        expected = ours(ids, attn)
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-5)


def test_load_exported_predicts_raw_strings_as_xpeft_does(cli, fitted):
    """Issue 30: there was no code that turns the export into predictions (a user wrote the mean-pooling
    head by hand). load_exported gives predict / predict_proba on raw strings, equal to xpeft's."""
    from xpeft_cli import Bank, Examples, predict_profile, read_xpm
    from xpeft_cli.export import load_exported

    from helpers import sentiment_rows

    assert cli("bank", "create", "--random", "-n", "16", "--ln", "none", "-o", "bank-nl")[0] == 0
    assert cli("fit", "-p", "nl", "-d", "alice.jsonl", "--bank", "bank-nl", "--epochs", "2", "--quiet")[0] == 0
    assert cli("export", "nl.xpm", "--bank", "bank-nl", "-o", "lora", "--quiet")[0] == 0
    clf = load_exported(fitted / "lora")
    texts = [r["text"] for r in sentiment_rows(12, 4)]
    bank = Bank.load(fitted / "bank-nl")
    ours = predict_profile(bank, read_xpm(fitted / "nl.xpm"), Examples(texts, None, None, "t"), device="cpu")
    assert clf.predict(texts) == ours
    proba = clf.predict_proba(texts)
    assert proba.shape == (12, 2) and torch.allclose(proba.sum(-1), torch.ones(12), atol=1e-5)


@pytest.mark.slow
def test_an_export_of_the_default_plm_loads_offline(tmp_path, monkeypatch):
    """The export names the bundled PLM by its hub id (portable); offline, load_exported resolves that id
    to the installed, hash-checked package instead of the hub (AutoPeftModel… needed --base-model DIR)."""
    from xpeft_cli import Bank, Examples, FitConfig, fit_profile, load_encoder, predict_profile, resolve_model
    from xpeft_cli.bank import SiteConfig
    from xpeft_cli.export import export_peft, load_exported

    from helpers import sentiment_rows

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    plm = resolve_model(None)
    bank = Bank.create_random(
        plm, load_encoder(plm)[0], n=4, targets="attention.output.dense", config=SiteConfig(ln=False)
    )
    rows = sentiment_rows(24, 0)
    res = fit_profile(
        bank,
        Examples([r["text"] for r in rows], None, [r["label"] for r in rows], "t"),
        "d",
        FitConfig(epochs=1, device="cpu"),
    )
    rep = export_peft(bank, res.profile, tmp_path / "lora")
    assert rep["base_model"] == "sentence-transformers/all-MiniLM-L6-v2"
    texts = [r["text"] for r in sentiment_rows(6, 1)]
    assert load_exported(tmp_path / "lora").predict(texts) == predict_profile(
        bank, res.profile, Examples(texts, None, None, "t"), device="cpu"
    )
