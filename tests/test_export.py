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
