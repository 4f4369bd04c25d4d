"""The accuracy design knobs (soft→hard annealing, zero-start sites, output vectors) and the peft peers."""

from __future__ import annotations

import math

import pytest
import torch

from xpeft_cli import Bank, FitConfig, fit_profile, load_examples
from xpeft_cli.masks import MaskSpec, khot, mask_choice, straight_through
from xpeft_cli.model import XPeftModel
from xpeft_cli.plm import load_encoder

from helpers import make_bank


@pytest.fixture()
def bank(tiny_bert, tmp_path):
    make_bank(tiny_bert, tmp_path / "bank", n=16)
    return Bank.load(tmp_path / "bank")


CFG = dict(k=4, epochs=2, batch_size=8, device="cpu", val_fraction=0.0)


def test_annealed_mask_value_and_gradient():
    torch.manual_seed(0)
    logits = torch.randn(3, 16, requires_grad=True)
    g = torch.Generator().manual_seed(1)
    for alpha in (0.0, 0.25, 1.0):
        spec = MaskSpec(kind="hard", k=4, nu=0.0, tau=1.0, alpha=alpha, generator=g)
        w, chosen = mask_choice(logits, spec, training=True)
        y_soft = torch.softmax(logits, -1)
        idx = torch.topk(y_soft, 4).indices
        if alpha < 1.0:  # a dense blend: value α·k-hot/k + (1−α)·y_soft
            assert chosen is None
            expect = alpha * khot(idx, 16) / 4 + (1 - alpha) * y_soft
            torch.testing.assert_close(w, expect)
        else:  # fully hard: the chosen adapters, as without annealing
            assert chosen is not None and w is not None
            w = straight_through(w, chosen, 16)
            torch.testing.assert_close(w, khot(idx, 16) / 4)
        # the gradient is y_soft's whatever α: the straight-through estimator of Algorithm 1
        v = torch.randn(3, 16)
        (gw,) = torch.autograd.grad((w * v).sum(), logits)
        (gs,) = torch.autograd.grad((y_soft * v).sum(), logits)
        torch.testing.assert_close(gw, gs)
    # at inference annealing has no part: the noiseless top-k
    w, chosen = mask_choice(logits, MaskSpec(kind="hard", k=4, alpha=0.1), training=False)
    assert w is None and torch.equal(chosen.sort(-1).values, torch.topk(logits.detach(), 4).indices.sort(-1).values)


def test_zero_start_sites_leave_the_plm_unchanged(bank):
    """ln_init 0 or an output vector (zero at start) make every site's delta 0 before training, as LoRA's B = 0."""
    enc, tok = load_encoder(bank.plm)
    batch = tok(["the film was good today", "bad food"], padding=True, return_tensors="pt")
    outs = []
    for kw in ({"ln_init": 0.0}, {"out_vector": True}):
        enc, _ = load_encoder(bank.plm)
        model = XPeftModel(enc, bank, 2, spec=MaskSpec(kind="hard", k=4), **kw).eval()
        with torch.no_grad():
            for s in model.sites:
                x = torch.randn(5, s.base.in_features)
                torch.testing.assert_close(s(x), s.base(x))
            outs.append(model(batch["input_ids"], batch["attention_mask"]))
    torch.testing.assert_close(outs[0], outs[1])


def test_fit_with_every_knob_learns_and_the_model_is_the_profile(bank, sentiment_files):
    train = load_examples(sentiment_files[0])
    cfg = FitConfig(mask="hard", soft_warmup=0.5, ln_init=0.0, lr_ln=1e-2, seed=3, lr_head=3e-2, **CFG)
    res = fit_profile(bank, train, "dora", cfg)
    assert res.model.spec.alpha == 1.0  # the warm-up ended: the last half of the steps ran fully hard
    assert all(r.sum() == 4 for r in res.profile.mask_a)
    assert res.profile.meta["fit"]["soft_warmup"] == 0.5 and res.profile.meta["fit"]["ln_init"] == 0.0
    losses = [h["loss"] for h in res.history if "loss" in h]
    assert min(losses[-3:]) < max(losses[:3])
    # a default fit records none of the knobs: its bytes stay those of earlier versions
    plain = fit_profile(bank, train, "dora", FitConfig(mask="hard", seed=3, **CFG))
    assert not set(plain.profile.meta["fit"]) & {"soft_warmup", "ln_init", "out_vector", "lr_out", "peer"}


PEERS = ["lora:r=2", "vera:r=8", "ia3", "vblora:r=2,num_vectors=8,vector_length=16,topk=2", "bitfit", "head"]


@pytest.mark.parametrize("spec", PEERS)
def test_peers_train_in_the_same_loop(bank, sentiment_files, spec):
    from safetensors.torch import load, save

    from xpeft_cli.peers import profile_bytes

    train = load_examples(sentiment_files[0])
    res = fit_profile(bank, train, "eve", FitConfig(method="peft", peer=spec, lr_adapter=1e-2, seed=0, **CFG))
    tensors = res.profile.tensors
    assert {"head.weight", "head.bias"} <= set(tensors)
    blob = save(tensors)
    assert profile_bytes(tensors) == len(blob) and set(load(blob)) == set(tensors)
    names = " ".join(tensors)
    if spec.startswith("vera"):  # projections are regenerated from the PRNG key: not a profile's bytes
        assert "vera_A" not in names and "vera_lambda_b" in names
    if spec.startswith("vblora"):  # only the top-k of the logits, plus the trained vector bank
        assert "topk" in names and "vector_bank" in names
    if spec == "head":
        assert set(tensors) == {"head.weight", "head.bias"}
    # the peers' trained weights moved from their start (B = 0 for LoRA, the biases for BitFit)
    moved = [k for k, v in tensors.items() if not k.startswith("head.") and v.abs().sum() > 0]
    assert spec == "head" or moved


def test_unknown_peer_is_a_usage_error(bank, sentiment_files):
    from xpeft_cli.errors import UsageError

    with pytest.raises(UsageError, match="unknown peer"):
        fit_profile(bank, load_examples(sentiment_files[0]), "x", FitConfig(method="peft", peer="adalora", **CFG))
    with pytest.raises(UsageError, match="--method"):
        fit_profile(bank, load_examples(sentiment_files[0]), "x", FitConfig(method="peft", **CFG))


def test_sign_masks_are_bits_with_a_straight_through_gradient():
    from xpeft_cli.masks import sign_weights

    logits = torch.tensor([[0.3, -0.2, 0.0, 5.0]], requires_grad=True)
    w = sign_weights(logits, training=True)
    torch.testing.assert_close(w, torch.tensor([[1.0, -1.0, -1.0, 1.0]]) / 4)  # ±1/N; a zero logit counts as −
    (g,) = torch.autograd.grad((w * torch.tensor([[1.0, 2.0, 3.0, 4.0]])).sum(), logits)
    torch.testing.assert_close(g, torch.tensor([[1.0, 2.0, 3.0, 4.0]]) / 4)  # that of logits/N
    torch.testing.assert_close(sign_weights(logits, training=False), w.detach())


@pytest.mark.parametrize("kind", ["sign", "linear"])
def test_sign_and_linear_masks_fit(bank, sentiment_files, kind):
    train = load_examples(sentiment_files[0])
    res = fit_profile(bank, train, "fay", FitConfig(mask=kind, seed=0, lr_ln=1e-2, lr_head=3e-2, **CFG))
    la, lb = res.model.mask_logits()
    if kind == "linear":  # B̂ starts at 0 (the PLM's own sites) and is learned
        assert lb.abs().max() > 0
    else:  # the signs moved away from their tiny seeded start
        assert la.abs().max() > 1e-2 and lb.abs().max() > 1e-2
    losses = [h["loss"] for h in res.history if "loss" in h]
    assert min(losses[-3:]) < max(losses[:3])


def test_sign_profiles_through_the_cli(cli, tmp_path):
    """fit (sign is the default) → .xpm 1.1 with one bit per adapter → inspect, eval, unpack, pack; --k refused."""
    import json

    from xpeft_cli.xpm import read_xpm_full

    from helpers import one_line_error, sentiment_rows, write_jsonl

    write_jsonl(tmp_path / "a.jsonl", sentiment_rows(40, 0))
    assert cli("bank", "create", "--random", "-n", "20")[0] == 0
    code, out, err = cli("fit", "-p", "sia", "-d", "a.jsonl", "--epochs", "2", "--json")
    assert code == 0, err and json.loads(out)["mask"] == "sign"
    dec = read_xpm_full(tmp_path / "sia.xpm")
    p = dec.profile
    assert p.mask_kind == "sign" and p.k == 0 and dec.version == (1, 1)
    assert dec.sizes["masks"] == 2 * p.L * 3  # ⌈20/8⌉ = 3 bytes per row: as many as a hard mask
    code, out, _ = cli("inspect", "sia.xpm", "--bank", "bank", "--json")
    info = json.loads(out)
    assert code == 0 and info["bank_match"] and len(info["plus"]) == p.L
    assert [s["A"] for s in info["plus"]] == [int(r.sum()) for r in p.mask_a]
    code, out, err = cli("eval", "-p", "sia.xpm", "-d", "a.jsonl", "--json")
    assert code == 0, err and json.loads(out)["metrics"]["accuracy"] > 0.5
    code, out, _ = cli("unpack", "sia.xpm")
    doc = json.loads(out)
    assert code == 0 and (doc["profiles"][0] if "profiles" in doc else doc)["mask"] == "sign"
    code, _, err = cli("pack", "sia.xpm", "--k", "4", "-o", "x.xpm")
    assert code == 2
    one_line_error(err)


ARCHS = ["bert", "roberta", "xlm-roberta", "camembert", "electra", "deberta", "deberta-v2", "mpnet", "distilbert"]


@pytest.mark.parametrize("model_type", ARCHS)
def test_default_targets_of_every_architecture_match_two_linears_per_block(model_type):
    """plm.py's default sites, on a tiny random-weight model of each architecture it lists (built offline)."""
    from transformers import AutoConfig, AutoModel

    from xpeft_cli.bank import find_sites
    from xpeft_cli.plm import DEFAULT_TARGETS, default_targets

    assert set(ARCHS) == set(DEFAULT_TARGETS)
    size = (
        {"dim": 32, "n_layers": 2, "n_heads": 2, "hidden_dim": 64}
        if model_type == "distilbert"
        else {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
    )
    enc = AutoModel.from_config(AutoConfig.for_model(model_type, vocab_size=100, **size))
    sites = find_sites(enc, default_targets(model_type))
    assert len(sites) == 2 * 2 and all(s.d_out == 32 for s in sites)  # attention output and FFN output, each block
    assert {s.d_in for s in sites} == {32, 64}


def test_ia3_has_targets_on_architectures_peft_has_no_default_for():
    """peft has no IA3 default for MPNet: key, value and the feed-forward output are given (the 12-layer PLM)."""
    from transformers import MPNetConfig, MPNetModel

    from xpeft_cli.peers import PeerModel

    enc = MPNetModel(
        MPNetConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    )
    names = [n for n, p in PeerModel(enc, "ia3", [], 2).named_parameters() if p.requires_grad]
    assert sum("ia3_l" in n for n in names) == 6  # 3 per block
    assert any(n.endswith("attn.k.ia3_l.default") for n in names) and any("output.dense.ia3" in n for n in names)


def test_warmup_and_clipping_are_knobs_recorded_only_when_used(bank, sentiment_files):
    """Clipping is off by default; warm-up is 0.06 for x-peft (measured), 0 for baselines, and 0 is the
    paper's linear decay, bit for bit; a fit's metadata records the warm-up it used and any clipping."""
    from xpeft_cli.train import schedule

    assert [schedule(s, 10) for s in range(10)] == [max(0.0, 1.0 - s / 10) for s in range(10)]
    assert [round(schedule(s, 10, 0.2), 3) for s in range(4)] == [0.5, 1.0, 1.0, 0.875]
    train = load_examples(sentiment_files[0])
    default = fit_profile(bank, train, "d", FitConfig(epochs=1, device="cpu", mask="hard", k=4, val_fraction=0))
    assert default.profile.meta["fit"]["warmup"] == 0.06 and "clip_norm" not in default.profile.meta["fit"]
    plain = fit_profile(bank, train, "p", FitConfig(epochs=1, device="cpu", mask="hard", k=4, val_fraction=0, warmup=0))
    assert "warmup" not in plain.profile.meta["fit"] and "clip_norm" not in plain.profile.meta["fit"]
    sa = fit_profile(bank, train, "s", FitConfig(epochs=1, device="cpu", method="single-adapter", val_fraction=0))
    assert "warmup" not in sa.profile.meta["fit"]
    tuned = fit_profile(
        bank, train, "q", FitConfig(epochs=1, device="cpu", mask="hard", k=4, val_fraction=0, warmup=0.1, clip_norm=0.5)
    )
    assert tuned.profile.meta["fit"]["warmup"] == 0.1 and tuned.profile.meta["fit"]["clip_norm"] == 0.5
    assert all(math.isfinite(h["loss"]) for h in tuned.history if "loss" in h)


def test_mask_clip_keeps_sign_logits_in_range(bank, sentiment_files, tmp_path):
    """BinaryConnect's clipping: after every step the latent logits lie in [-c, c], so the signs stay
    flippable (read from the checkpoint the fit writes at its last step); the knob is recorded."""
    from safetensors.torch import load_file

    train = load_examples(sentiment_files[0])

    def latent(name: str, **over) -> tuple[float, dict]:
        cfg = FitConfig(epochs=2, device="cpu", mask="sign", val_fraction=0, lr_masks=0.5, **over)
        steps = 2 * ((len(train) + cfg.batch_size - 1) // cfg.batch_size)
        fit = fit_profile(bank, train, name, cfg, checkpoint_path=tmp_path / f"{name}.ckpt", checkpoint_every=steps)
        t = load_file(str(tmp_path / f"{name}.ckpt"))
        return max(
            float(v.abs().max()) for k, v in t.items() if k.startswith("param.") and ".logits_" in k
        ), fit.profile.meta["fit"]

    free, free_meta = latent("p")
    clipped, meta = latent("q", mask_clip=0.05)
    assert free > 0.5 and clipped <= 0.05 + 1e-7
    assert meta["mask_clip"] == 0.05 and "mask_clip" not in free_meta
