"""`fit --cuda-graphs`: the graphed step trains as the eager step does (on a GPU), and is refused without one."""

from __future__ import annotations

import pytest
import torch

from xpeft_cli import Bank, FitConfig, fit_profile, load_examples

from helpers import make_bank, one_line_error, sentiment_rows, write_jsonl


def gpu(test):
    """Runs on a CUDA GPU (marked `gpu`: CI's CPU run deselects it by `-m "not gpu"`)."""
    return pytest.mark.gpu(
        pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA GPU")(test)
    )


def test_without_a_gpu_it_is_a_usage_error(cli, tmp_path):
    write_jsonl(tmp_path / "a.jsonl", sentiment_rows(20))
    assert cli("bank", "create", "--random", "-n", "8")[0] == 0
    code, _, err = cli("fit", "--profile", "a", "--data", "a.jsonl", "--device", "cpu", "--cuda-graphs", "-q")
    assert code == 2 and "CUDA" in err
    one_line_error(err)
    code, _, err = cli("fit", "--profile-column", "label", "--data", "a.jsonl", "--cuda-graphs")
    assert code == 2 and "single-profile" in err


@gpu
@pytest.mark.parametrize("mask", ["soft", "hard", "sign"])
def test_graphed_fit_follows_the_eager_fit(tiny_bert_nodrop, tmp_path, mask):
    make_bank(tiny_bert_nodrop, tmp_path / "bank", n=24)
    bank = Bank.load(tmp_path / "bank")
    rows = sentiment_rows(44)  # 44 rows in batches of 8: every epoch ends on a padded batch of 4
    for i, r in enumerate(rows):
        if i % 4 == 0:  # and some rows past 32 tokens: two length buckets, two graphs
            r["text"] = r["text"] + " really" * 40
    train = load_examples(write_jsonl(tmp_path / "train.jsonl", rows))
    # float32 and no Gumbel noise: the two fits may differ only by float rounding
    cfg = dict(
        mask=mask,
        k=6,
        epochs=3,
        batch_size=8,
        nu=0.0,
        lr_head=3e-2,
        lr_ln=1e-2,
        device="cuda",
        val_fraction=0,
        precision="fp32",
        seed=3,
    )
    eager = fit_profile(bank, train, "alice", FitConfig(**cfg))
    graphed = fit_profile(bank, train, "alice", FitConfig(**cfg, cuda_graphs=True))
    le = [h["loss"] for h in eager.history if "loss" in h]
    lg = [h["loss"] for h in graphed.history if "loss" in h]
    assert len(le) == len(lg) == 18
    assert lg == pytest.approx(le, rel=1e-3, abs=1e-4)
    for e, g in zip(eager.model.mask_logits(), graphed.model.mask_logits()):
        torch.testing.assert_close(g, e, rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(graphed.model.head.weight, eager.model.head.weight, rtol=1e-3, atol=1e-4)
    if mask in ("hard", "sign"):
        assert (graphed.profile.mask_a == eager.profile.mask_a).all()
