"""Trained banks (sa, mtl, peft import), multi-profile eval, the news converter, plots, checkpointing."""

from __future__ import annotations

import json
import random
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from xpeft_cli.bank import Bank
from xpeft_cli.bank_build import from_peft, from_profiles, pick_profiles
from xpeft_cli.data import Examples
from xpeft_cli.errors import IntegrityError
from xpeft_cli.masks import MaskSpec
from xpeft_cli.model import XPeftModel
from xpeft_cli.plm import load_encoder, resolve_model
from xpeft_cli.train import FitConfig, fit_profile

from helpers import make_bank, sentiment_rows


def _run(cli, args: list[str]) -> SimpleNamespace:
    code, out, err = cli(*args)
    return SimpleNamespace(code=code, out=out, err=err)


def _multi(sizes=(("alice", 30), ("bob", 19), ("carol", 45), ("dave", 25))) -> Examples:
    rows = []
    for pi, (name, n) in enumerate(sizes):
        rows += [dict(r, profile=name) for r in sentiment_rows(n, seed=pi)]
    random.Random(0).shuffle(rows)
    return Examples([r["text"] for r in rows], None, [r["label"] for r in rows], "multi", [r["profile"] for r in rows])


def test_sa_bank_holds_the_lone_single_adapter_fits(tiny_bert_nodrop):
    plm = resolve_model(str(tiny_bert_nodrop))
    enc, _ = load_encoder(plm)
    ex = _multi()
    cfg = FitConfig(epochs=2, batch_size=8, device="cpu", labels=["neg", "pos"])
    bank, rep = from_profiles(plm, enc, ex, 3, "sa", cfg)
    assert rep["profiles"] == pick_profiles(ex, 3) == ["carol", "alice", "dave"]  # most rows first
    assert bank.kind == "trained" and bank.n == 3 and bank.head is None and not bank.config.ln
    carol = ex.subset([i for i, p in enumerate(ex.profiles) if p == "carol"])
    solo = fit_profile(bank, carol, "carol", FitConfig(**{**cfg.__dict__, "method": "single-adapter"}))
    name = f"base_model.model.{bank.sites[0].name}.lora_A.weight"
    torch.testing.assert_close(bank.A[0][0], solo.profile.tensors[name].t(), atol=1e-5, rtol=0)


def test_mtl_bank_shares_its_head_and_profiles_are_masks_only(cli, tiny_bert, tmp_path):
    data = tmp_path / "multi.jsonl"
    ex = _multi()
    data.write_text(
        "".join(
            json.dumps({"text": t, "label": y, "author": p}) + "\n" for t, y, p in zip(ex.texts, ex.labels, ex.profiles)
        )
    )
    r = _run(
        cli,
        [
            "bank",
            "create",
            "--from-profiles",
            str(data),
            "--profile-column",
            "author",
            "--profile-count",
            "3",
            "--method",
            "mtl",
            "--epochs",
            "2",
            "-o",
            str(tmp_path / "bank"),
            "--json",
        ],
    )
    assert r.code == 0, r.err
    info = json.loads(r.out)
    assert info["shared_head"] and info["n_adapters"] == 3 and info["kind"] == "trained"
    bank = Bank.load(tmp_path / "bank")
    assert bank.head.labels == ["neg", "pos"] and bank.bank_hash == info["bank_hash"]
    # Damaging the shared head breaks the bank hash: exit 4.
    r = _run(
        cli,
        [
            "fit",
            "--data",
            str(data),
            "--profile-column",
            "author",
            "-b",
            str(tmp_path / "bank"),
            "-o",
            str(tmp_path / "profiles"),
            "--k",
            "1",
            "--epochs",
            "2",
            "--json",
        ],
    )
    assert r.code == 0, r.err
    res = json.loads(r.out)
    assert res["profiles"] == 4 and res["mean_bytes"] < 600  # masks only: no head, no labels
    r = _run(
        cli,
        [
            "eval",
            "-P",
            str(tmp_path / "profiles"),
            "--data",
            str(data),
            "--profile-column",
            "author",
            "-b",
            str(tmp_path / "bank"),
            "--json",
        ],
    )
    assert r.code == 0, r.err
    ev = json.loads(r.out)
    assert ev["count"] == 4 and set(ev["profiles"]) == {"alice", "bob", "carol", "dave"}
    assert ev["mean"]["accuracy"] == pytest.approx(np.mean([m["accuracy"] for m in ev["profiles"].values()]))
    # A profile of another bank is refused with exit 4.
    make_bank(tiny_bert, tmp_path / "random", n=8)
    r = _run(
        cli,
        [
            "eval",
            "-P",
            str(tmp_path / "profiles"),
            "--data",
            str(data),
            "--profile-column",
            "author",
            "-b",
            str(tmp_path / "random"),
        ],
    )
    assert r.code == 4 and len(r.err.strip().splitlines()) == 1


def test_peft_import_round_trip(tiny_bert, tmp_path):
    """A profile exported to peft and imported as a one-adapter bank gives the same logits."""
    pytest.importorskip("peft")
    from xpeft_cli.bank import SiteConfig
    from xpeft_cli.export import export_peft
    from xpeft_cli.profile import Profile, apply_profile

    plm = resolve_model(str(tiny_bert))
    enc, tok = load_encoder(plm)
    src = Bank.create_random(plm, enc, n=6, seed=3, config=SiteConfig(ln=False))
    rng = np.random.default_rng(0)
    bits = np.zeros((src.L, 6), bool)
    bits[:, :2] = True
    prof = Profile(
        "p",
        "hard",
        6,
        src.L,
        2,
        src.bank_hash,
        bits,
        bits.copy(),
        head_weight=rng.standard_normal((2, 32)).astype(np.float32),
        head_bias=np.zeros(2, np.float32),
        labels=["a", "b"],
    )
    export_peft(src, prof, tmp_path / "lora")
    bank = from_peft(plm, enc, [tmp_path / "lora", tmp_path / "lora"])
    assert bank.n == 2 and bank.kind == "trained" and [s.name for s in bank.sites] == [s.name for s in src.sites]
    one = Profile(
        "q",
        "hard",
        2,
        bank.L,
        1,
        bank.bank_hash,
        np.array([[True, False]] * bank.L),
        np.array([[True, False]] * bank.L),
        head_weight=prof.head_weight,
        head_bias=prof.head_bias,
        labels=["a", "b"],
    )
    batch = tok(["good film", "the food was bad"], padding=True, return_tensors="pt")
    outs = []
    for b, p in ((src, prof), (bank, one)):
        e, _ = load_encoder(plm)
        m = XPeftModel(e, b, 2, spec=MaskSpec("hard", k=p.k))
        apply_profile(m, p)
        with torch.no_grad():
            outs.append(m.eval()(**batch))
    torch.testing.assert_close(outs[0], outs[1], atol=1e-5, rtol=1e-5)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "adapter_config.json").write_text('{"peft_type": "PREFIX_TUNING"}')
    (tmp_path / "bad" / "adapter_model.safetensors").write_bytes(
        (tmp_path / "lora" / "adapter_model.safetensors").read_bytes()
    )
    with pytest.raises(Exception, match="only LORA"):
        from_peft(plm, enc, [tmp_path / "bad"])
    other, _ = load_encoder(resolve_model(str(tiny_bert)))
    cfg = json.loads((tmp_path / "lora" / "adapter_config.json").read_text())
    cfg["r"] = 3
    (tmp_path / "bad" / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(IntegrityError, match="shapes"):
        from_peft(plm, other, [tmp_path / "bad"])


def test_news_converter_dedupes_splits_and_reports(cli, tmp_path):
    from xpeft_cli.convert import news_category

    def row(i, author, cat="POLITICS"):
        return {
            "link": f"https://x/{i}",
            "headline": f"Headline {i}",
            "category": cat,
            "short_description": f"about {i}",
            "authors": author,
            "date": "2022-01-01",
        }

    a = [row(i, "Ann Writer") for i in range(25)] + [row(100 + i, "Bo") for i in range(5)] + [row(200, "")]
    b = [row(3, "Someone Else")] + [row(300 + i, "Ann Writer", "SPORTS") for i in range(5)]
    for name, rows in (("a.json", a), ("b.json", b)):
        (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    rep = news_category([tmp_path / "a.json", tmp_path / "b.json"], tmp_path / "out", min_rows=20)
    assert rep["duplicate_link"] == 1 and rep["no_author"] == 1 and rep["authors"] == 1
    train = [json.loads(x) for x in (tmp_path / "out" / "train.jsonl").read_text().splitlines()]
    test = [json.loads(x) for x in (tmp_path / "out" / "test.jsonl").read_text().splitlines()]
    assert len(train) + len(test) == 30 and len(test) == 9 and {r["profile"] for r in train} == {"Ann Writer"}
    assert train[0]["text"] == "Headline 0. about 0" or train[0]["text"].startswith("Headline")
    (tmp_path / "bad.json").write_text('{"link": 1}\n')
    r = _run(cli, ["convert", "news-category", str(tmp_path / "bad.json"), "-o", str(tmp_path / "o2")])
    assert r.code == 3 and "line 1" in r.err


def test_plots_write_pngs(cli, tiny_bert, tmp_path):
    from xpeft_cli.multifit import fit_profiles

    bank = make_bank(tiny_bert, tmp_path / "bank", n=8)
    res = fit_profiles(
        bank, _multi(), FitConfig(k=2, epochs=1, batch_size=8, device="cpu"), log_path=tmp_path / "fit.jsonl"
    )
    from xpeft_cli.xpm import write_xpm

    (tmp_path / "p").mkdir()
    for name, prof in res.profiles.items():
        write_xpm(prof, tmp_path / "p" / f"{name}.xpm")
    for args in (
        ["plot", "masks", str(tmp_path / "p"), "--perplexity", "2"],
        ["plot", "heatmap", str(tmp_path / "p" / "alice.xpm"), str(tmp_path / "p" / "bob.xpm")],
        ["plot", "curves", str(tmp_path / "fit.jsonl")],
    ):
        out = tmp_path / f"{args[1]}.png"
        r = _run(cli, args + ["-o", str(out), "--json"])
        assert r.code == 0, r.err
        assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and json.loads(r.out)["bytes"] > 5000
    r = _run(cli, ["plot", "curves", str(tmp_path / "p" / "alice.xpm"), "-o", str(tmp_path / "x.png")])
    assert r.code == 3


def test_gradient_checkpointing_gives_the_same_gradients(tiny_bert, tmp_path):
    bank = make_bank(tiny_bert, tmp_path / "bank", n=8)
    grads = []
    for ck in (False, True):
        enc, tok = load_encoder(bank.plm)
        m = XPeftModel(enc, bank, 2, spec=MaskSpec("hard", k=3, generator=torch.Generator().manual_seed(5)))
        if ck:
            m.gradient_checkpointing()
        m.train()
        torch.manual_seed(3)  # the same dropout draws; checkpointing replays them
        m(**tok(["good film", "bad food today"], padding=True, return_tensors="pt")).sum().backward()
        grads.append(torch.cat([m.sites[0].logits_a.grad, m.sites[1].ln.weight.grad]))
    assert grads[0].abs().sum() > 0
    torch.testing.assert_close(grads[0], grads[1], atol=1e-6, rtol=0)


def test_curves_draw_every_step_even_of_a_short_log(cli, tmp_path):
    """The running mean starts at step 1 (the first steps are not dropped) and a one-step log still
    draws its point."""
    import numpy as np

    from xpeft_cli.plots import running_mean

    np.testing.assert_allclose(running_mean([4.0, 2.0, 0.0, 2.0], 2), [4.0, 3.0, 1.0, 1.0])
    np.testing.assert_allclose(running_mean([1.0, 3.0], 10), [1.0, 2.0])
    (tmp_path / "short.fit.jsonl").write_text('{"epoch": 1, "step": 1, "loss": 0.7}\n')
    r = _run(cli, ["plot", "curves", str(tmp_path / "short.fit.jsonl"), "-o", str(tmp_path / "s.png"), "--json"])
    assert r.code == 0 and json.loads(r.out)["final_loss"] == {"short": 0.7}


def test_forged_peft_configs_are_one_line_refusals(tiny_bert, tmp_path):
    """r of the wrong type or range, a non-finite lora_alpha, deep JSON: DataError, never a crash."""
    import peft

    from xpeft_cli.bank_build import from_peft
    from xpeft_cli.errors import DataError
    from xpeft_cli.plm import resolve_model

    plm = resolve_model(str(tiny_bert))
    enc, _ = load_encoder(plm)
    peft.get_peft_model(load_encoder(plm)[0], peft.LoraConfig(r=2, target_modules=["output.dense"])).save_pretrained(
        str(tmp_path / "a")
    )
    good = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    for forged, needle in (
        ({"r": "2"}, "r must be"),
        ({"r": 0}, "r must be"),
        ({"r": True}, "r must be"),
        ({"lora_alpha": float("nan")}, "lora_alpha"),
        ({"lora_alpha": None}, "lora_alpha"),
    ):
        (tmp_path / "a" / "adapter_config.json").write_text(json.dumps(good | forged))
        with pytest.raises(DataError, match=needle):
            from_peft(plm, enc, [tmp_path / "a"])
    (tmp_path / "a" / "adapter_config.json").write_text("[" * 100_000)
    with pytest.raises(DataError, match="nested too deeply"):
        from_peft(plm, enc, [tmp_path / "a"])
