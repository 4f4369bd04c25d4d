"""The portable bank generator `xpeft-splitmix64-uniform-v1` (specified in formats/bank.md).

Random banks are not stored: they are regenerated from (seed, site, tensor, adapter,
element). Each element is a pure function of that key, computed with 64-bit integer
mixing (SplitMix64's finaliser) and IEEE basic arithmetic only, so the bytes do not
depend on the torch/numpy version, the CPU, or the order in which adapters are made.
No transcendental functions are used: their last bit differs between libm builds.
"""

from __future__ import annotations

import numpy as np

MASK64 = (1 << 64) - 1
GAMMA = 0x9E3779B97F4A7C15  # golden-ratio increment, as in SplitMix64
GENERATOR_NAME = "xpeft-splitmix64-uniform-v1"
TENSOR_A, TENSOR_B = 0, 1


def mix64(x: int) -> int:
    """SplitMix64 finaliser on a Python int (one value)."""
    x &= MASK64
    x ^= x >> 30
    x = (x * 0xBF58476D1CE4E5B9) & MASK64
    x ^= x >> 27
    x = (x * 0x94D049BB133111EB) & MASK64
    x ^= x >> 31
    return x


def _mix64_array(x: np.ndarray) -> np.ndarray:
    """The same finaliser, vectorised; uint64 array arithmetic wraps modulo 2**64."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    x = x ^ (x >> np.uint64(31))
    return x


def stream_key(seed: int, site: int, tensor: int, adapter: int) -> int:
    """Key of one adapter's tensor: absorb each coordinate with a distinct mixing step."""
    k = mix64(seed + GAMMA)
    for v in (site, tensor, adapter):
        k = mix64(k ^ ((v + GAMMA) & MASK64))
    return k


def stream_keys(seed: int, site: int, tensor: int, adapters: range) -> np.ndarray:
    """stream_key of every adapter in `adapters` at once (uint64): the last mixing step vectorised."""
    k = mix64(seed + GAMMA)
    for v in (site, tensor):
        k = mix64(k ^ ((v + GAMMA) & MASK64))
    ids = np.arange(adapters.start, adapters.stop, adapters.step, dtype=np.uint64)
    with np.errstate(over="ignore"):
        return _mix64_array(np.uint64(k) ^ (ids + np.uint64(GAMMA)))


def uniform_block(seed: int, site: int, tensor: int, adapters: range, numel: int, bound: float) -> np.ndarray:
    """float32 array (len(adapters), numel) with values uniform in (-bound, bound).

    element e of adapter i: h = mix64(key(i) + (e+1)*GAMMA); m = h >> 40 (24 bits);
    value = float32(((2m + 1 - 2**24) / 2**24) * bound), computed in float64.
    """
    keys = stream_keys(seed, site, tensor, adapters)
    counters = np.arange(1, numel + 1, dtype=np.uint64) * np.uint64(GAMMA)
    with np.errstate(over="ignore"):
        h = _mix64_array(keys[:, None] + counters[None, :])
    m = (h >> np.uint64(40)).astype(np.float64)
    vals = ((2.0 * m + 1.0 - 16777216.0) / 16777216.0) * float(bound)
    return vals.astype(np.float32)
