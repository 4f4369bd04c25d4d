"""Algorithm 1 (hard top-k straight-through) and soft masks."""

from __future__ import annotations

import torch

from xpeft_cli.masks import hard_inference_weights, hard_topk_st, soft_weights, topk_indices


def test_inference_has_exactly_k_ones_per_row():
    logits = torch.randn(6, 400, generator=torch.Generator().manual_seed(0))
    w = hard_inference_weights(logits, 50)
    assert torch.equal((w > 0).sum(-1), torch.full((6,), 50))
    torch.testing.assert_close(w.sum(-1), torch.ones(6))
    # the ones sit on the 50 largest logits
    top = logits.topk(50, dim=-1).indices
    assert torch.all(w.gather(-1, top) == 1 / 50)


def test_ties_go_to_lower_index():
    assert topk_indices(torch.zeros(10), 3).tolist() == [0, 1, 2]
    assert topk_indices(torch.tensor([0.0, 1.0, 1.0, 1.0, 0.0]), 2).tolist() == [1, 2]


def test_straight_through_forward_is_khot_and_gradient_nonzero():
    logits = torch.randn(4, 30, generator=torch.Generator().manual_seed(1), requires_grad=True)
    y = hard_topk_st(logits, 5, nu=1.0, tau=1.0, generator=torch.Generator().manual_seed(2))
    assert torch.equal((y.detach() > 1e-6).sum(-1), torch.full((4,), 5))
    torch.testing.assert_close(y.detach().sum(-1), torch.ones(4))
    (y * torch.randn(4, 30, generator=torch.Generator().manual_seed(3))).sum().backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


def test_deterministic_with_seed_and_noise_matters():
    logits = torch.randn(3, 100, generator=torch.Generator().manual_seed(4))
    a = hard_topk_st(logits, 10, 1.0, 1.0, torch.Generator().manual_seed(7))
    b = hard_topk_st(logits, 10, 1.0, 1.0, torch.Generator().manual_seed(7))
    c = hard_topk_st(logits, 10, 1.0, 1.0, torch.Generator().manual_seed(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_no_noise_equals_inference_choice():
    logits = torch.randn(2, 40, generator=torch.Generator().manual_seed(5))
    st = hard_topk_st(logits, 8, nu=0.0, tau=1.0)
    torch.testing.assert_close(st.detach(), hard_inference_weights(logits, 8))


def test_soft_weights_sum_to_one():
    w = soft_weights(torch.randn(5, 17))
    torch.testing.assert_close(w.sum(-1), torch.ones(5))
