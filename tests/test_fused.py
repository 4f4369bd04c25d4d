"""The compiled GPU kernels (fused.py) give what the eager formulation gives, values and gradients.

Runs only where they can be used: a CUDA GPU with Triton (on the CPU the eager path is the code).
"""

from __future__ import annotations

import pytest
import torch

from xpeft_cli import fused
from xpeft_cli.masks import MaskSpec
from xpeft_cli.mixing import mix


def gpu(test):
    """Runs on a CUDA GPU with Triton (marked `gpu`: CI's CPU run deselects it by `-m "not gpu"`)."""
    return pytest.mark.gpu(pytest.mark.skipif(not fused.available(), reason="needs a CUDA GPU with Triton")(test))


def test_kernels_are_used_only_inside_compiled_blocks():
    assert not fused.enabled()
    with fused.compiled() as on:
        assert fused.enabled() == on == fused.available()
    assert not fused.enabled()


def compiled(fn):
    with fused.compiled():
        return fn()


def _grads(fn, *inputs):
    for t in inputs:
        t.grad = None
    out = fn()
    probe = torch.linspace(-1, 1, out.numel(), device=out.device).view_as(out)
    (out.float() * probe).sum().backward()
    return [out.detach().float()] + [t.grad.detach().float().clone() for t in inputs]


@gpu
@pytest.mark.parametrize("affine", ["site", "per_row", "none"])
def test_layer_norm_matches_eager(affine):
    g = torch.Generator(device="cuda").manual_seed(0)
    h = torch.randn(4, 33, 48, device="cuda", generator=g).to(torch.bfloat16).requires_grad_()
    shape = {"site": (48,), "per_row": (4, 1, 48), "none": None}[affine]
    w = None if shape is None else (1 + 0.1 * torch.randn(shape, device="cuda", generator=g)).requires_grad_()
    b = None if shape is None else (0.1 * torch.randn(shape, device="cuda", generator=g)).requires_grad_()
    inputs = [t for t in (h, w, b) if t is not None]

    def run():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            return fused.layer_norm(h, w, b, 1e-5)

    fast = compiled(lambda: _grads(run, *inputs))
    slow = _grads(run, *inputs)
    assert fast[0].dtype == slow[0].dtype
    for f, s in zip(fast, slow):
        torch.testing.assert_close(f, s, rtol=2e-2, atol=2e-2)  # bf16 rounding of the output, once


@gpu
@pytest.mark.parametrize("kind", ["soft", "hard"])
def test_mixing_gradient_is_the_exact_one(kind):
    """bank · grad_Â in float32 agrees with the float64 gradient as closely as cuBLAS's bf16 product
    does (both see the bf16-rounded incoming gradient)."""
    from xpeft_cli.masks import mask_choice

    g = torch.Generator(device="cuda").manual_seed(1)
    bank = torch.randn(3, 200, 64, device="cuda", generator=g).to(torch.bfloat16)
    logits = torch.randn(3, 1, 200, device="cuda", generator=g, requires_grad=True)
    spec = MaskSpec(kind=kind, k=10, nu=0.0)

    def run():
        w, chosen = mask_choice(logits, spec, training=True)
        return mix(bank, w, chosen)

    fast = compiled(lambda: _grads(run, logits))
    slow = _grads(run, logits)
    torch.testing.assert_close(fast[0], slow[0])  # the forward is the same code
    # float64 reference: the dense straight-through mix of the same choice
    ref_logits = logits.detach().double().requires_grad_()
    w, chosen = mask_choice(ref_logits, spec, training=True)
    value = torch.zeros_like(w).scatter_(-1, chosen, 1.0 / 10) - w.detach() + w if kind == "hard" else w
    out = torch.bmm(value, bank.double())
    (out * torch.linspace(-1, 1, out.numel(), device="cuda", dtype=torch.float64).view_as(out)).sum().backward()
    ref = ref_logits.grad
    err_fast, err_slow = (fast[1] - ref).abs().max().item(), (slow[1] - ref).abs().max().item()
    assert err_fast <= 3e-3 * ref.abs().max().item(), (err_fast, err_slow)
    assert err_fast <= 1.1 * err_slow + 1e-7, (err_fast, err_slow)
