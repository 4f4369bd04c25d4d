"""Weight-space mixing equals the paper's per-adapter computation, forward and backward."""

from __future__ import annotations

import pytest
import torch

from xpeft_cli.layer import XPeftLinear, reference_delta
from xpeft_cli.masks import MaskSpec


def make_layer(kind: str, n=12, d_in=16, d_out=20, b=4, k=5, seed=0) -> XPeftLinear:
    g = torch.Generator().manual_seed(seed)
    base = torch.nn.Linear(d_in, d_out)
    a = torch.randn(n, d_in, b, generator=g) / d_in**0.5
    bb = torch.randn(n, b, d_out, generator=g) / b**0.5
    layer = XPeftLinear(base, a, bb, MaskSpec(kind=kind, k=k), ln=True)
    with torch.no_grad():
        layer.logits_a.copy_(torch.randn(n, generator=g))
        layer.logits_b.copy_(torch.randn(n, generator=g))
        layer.ln.weight.copy_(1 + 0.1 * torch.randn(b, generator=g))
        layer.ln.bias.copy_(0.1 * torch.randn(b, generator=g))
    return layer


def _run(layer: XPeftLinear, fn, x: torch.Tensor, seed: int):
    layer.spec.generator = torch.Generator().manual_seed(seed)  # identical Gumbel noise for both paths
    layer.zero_grad()
    out = fn(x)
    (out * torch.linspace(-1, 1, out.shape[-1])).sum().backward()
    grads = [p.grad for p in (layer.logits_a, layer.logits_b, layer.ln.weight)]
    return (out.detach(),) + tuple(torch.zeros(1) if g is None else g.clone() for g in grads)


@pytest.mark.parametrize("kind", ["soft", "hard"])
@pytest.mark.parametrize("training", [True, False])
def test_weight_space_equals_per_adapter(kind, training):
    layer = make_layer(kind)
    layer.train(training)
    x = torch.randn(3, 7, 16, generator=torch.Generator().manual_seed(1))
    fast = _run(layer, layer.delta, x, seed=5)
    slow = _run(layer, lambda t: reference_delta(layer, t), x, seed=5)
    for f, s in zip(fast, slow):
        torch.testing.assert_close(f, s, rtol=1e-5, atol=1e-5)
    # mask logits receive gradient while training (straight-through for hard masks); at inference
    # a hard mask is a noiseless top-k, which has none
    has_grad = training or kind == "soft"
    assert (fast[1].abs().sum() > 0 and fast[2].abs().sum() > 0) == has_grad
    assert fast[3].abs().sum() > 0


def test_site_adds_delta_to_frozen_base():
    layer = make_layer("soft").eval()
    x = torch.randn(2, 16)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), layer.base(x) + layer.delta(x))


def test_inference_cache_is_used_and_invalidated():
    layer = make_layer("hard").eval()
    with torch.no_grad():
        first = layer.mixed()
        assert layer.mixed() is first  # cached while masks are frozen
        layer.logits_a.add_(torch.arange(12.0))
        layer.invalidate()
        assert not torch.equal(layer.mixed()[0], first[0])


@pytest.mark.parametrize("rows,k", [(1, 5), (3, 5), (4, 9)])  # R·k below N gathers; at or above N mixes densely
def test_hard_mix_gathers_chosen_rows_with_the_straight_through_gradient(rows, k):
    from xpeft_cli.masks import hard_soft_and_choice, hard_topk_st
    from xpeft_cli.mixing import mix

    g = torch.Generator().manual_seed(3)
    n, d = 30, 11
    bank = torch.randn(2, n, d, generator=g)
    logits = torch.randn(2, rows, n, generator=g, requires_grad=True)
    probe = torch.randn(2, rows, d, generator=g)

    y_soft, chosen = hard_soft_and_choice(logits, k, nu=0.5, tau=1.0, generator=torch.Generator().manual_seed(9))
    fast = mix(bank, y_soft, chosen)
    (fast * probe).sum().backward()
    fast_grad, logits.grad = logits.grad.clone(), None

    dense = hard_topk_st(logits, k, nu=0.5, tau=1.0, generator=torch.Generator().manual_seed(9))
    slow = torch.bmm(dense, bank)
    (slow * probe).sum().backward()
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fast_grad, logits.grad, rtol=1e-5, atol=1e-6)
    assert fast_grad.abs().sum() > 0
    # the value is the mean of the chosen adapters, whichever way it was computed
    torch.testing.assert_close(fast[1, 0], bank[1, chosen[1, 0]].mean(0), rtol=1e-5, atol=1e-6)
    # at inference (no weights) the same value, and nothing to differentiate
    torch.testing.assert_close(mix(bank, None, chosen), fast.detach(), rtol=1e-5, atol=1e-6)
