"""Hostile .xpm input: every mutation is read or refused with IntegrityError, nothing else."""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_xpm import hard_profile

from xpeft_cli.errors import IntegrityError
from xpeft_cli.fuzz import KINDS, mutate
from xpeft_cli.xpm import decode, encode

SEEDS = [encode(hard_profile(n=40, L=3, k=5)), encode(hard_profile(n=9, L=1, k=1, extras=False))]


def _soft_seed() -> bytes:
    p = hard_profile(n=12, L=2, k=3)
    import numpy as np

    p.mask_kind, p.k = "soft", 0
    p.mask_a = np.linspace(-1, 1, 24, dtype=np.float32).reshape(2, 12)
    p.mask_b = -p.mask_a
    return encode(p)


SEEDS.append(_soft_seed())


def _outcome(data: bytes) -> str:
    try:
        decode(data)
        return "read"
    except IntegrityError as exc:
        assert "\n" not in str(exc)
        return "refused"


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.sampled_from(range(len(SEEDS))), kind=st.sampled_from(KINDS), r=st.integers(0, 2**32))
def test_mutations_never_escape(seed, kind, r):
    _outcome(mutate(SEEDS[seed], kind, random.Random(r)))


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=400))
def test_arbitrary_bytes(data):
    _outcome(data)


@pytest.mark.parametrize("kind", ["truncate", "wrong_magic", "wrong_version", "forge_length"])
def test_always_refused_kinds(kind):
    rng = random.Random(0)
    for _ in range(200):
        data = mutate(SEEDS[0], kind, rng)
        assert data == SEEDS[0] or _outcome(data) == "refused"
