"""Regenerate the .xpm / .xps test vectors and their expected JSON decodings.

    python formats/vectors/make_vectors.py

The values are small dyadic fractions, exact in float16 and float32, so the JSON is readable.
tests/test_vectors.py checks that the reader decodes each file to its JSON and that the
writer reproduces each file byte for byte from the JSON.
"""
import json
from pathlib import Path

import numpy as np

from xpeft_cli.profile import Profile, profile_to_json
from xpeft_cli.store import write_store
from xpeft_cli.xpm import write_xpm

HERE = Path(__file__).resolve().parent
HASH = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"


def grid(shape, start=0):
    n = int(np.prod(shape))
    return ((np.arange(start, start + n) % 9 - 4) / 4).astype(np.float32).reshape(shape)


def select(L, n, picks):
    m = np.zeros((L, n), dtype=bool)
    for l, idx in enumerate(picks):
        m[l, idx] = True
    return m


def vectors():
    yield Profile(name="x", mask_kind="hard", n=10, L=1, k=2, bank_hash=HASH,
                  mask_a=select(1, 10, [[0, 9]]), mask_b=select(1, 10, [[1, 8]]))
    yield Profile(name="alice", mask_kind="hard", n=20, L=2, k=3, bank_hash=HASH,
                  mask_a=select(2, 20, [[0, 7, 19], [3, 4, 5]]), mask_b=select(2, 20, [[8, 9, 10], [1, 15, 16]]),
                  ln_weight=grid((2, 4)), ln_bias=grid((2, 4), 3), head_weight=grid((2, 8), 5),
                  head_bias=grid((2,), 1), labels=["neg", "pos"], meta={"fit": {"seed": 0}})
    yield Profile(name="rita", mask_kind="soft", n=5, L=2, k=0, bank_hash=HASH, mask_a=grid((2, 5)),
                  mask_b=grid((2, 5), 2), head_weight=grid((1, 8)), head_bias=grid((1,)), task="regression")
    yield Profile(name="héloïse", mask_kind="soft", n=6, L=1, k=0, bank_hash=HASH, mask_a=grid((1, 6)),
                  mask_b=grid((1, 6), 4), soft_dtype="float16")
    yield Profile(name="sia", mask_kind="sign", n=12, L=2, k=0, bank_hash=HASH,  # any number of + bits per row
                  mask_a=select(2, 12, [[0, 1, 2, 11], []]), mask_b=select(2, 12, [list(range(12)), [5]]),
                  ln_weight=grid((2, 4)), ln_bias=grid((2, 4), 3), head_weight=grid((2, 8), 5),
                  head_bias=grid((2,), 1), labels=["neg", "pos"], param_dtype="float16")


NAMES = ["hard-minimal", "hard-full", "soft-f32-regression", "soft-f16-utf8-name", "sign-f16-params"]


def main() -> None:
    profiles = list(vectors())
    for name, p in zip(NAMES, profiles):
        write_xpm(p, HERE / f"{name}.xpm")
        (HERE / f"{name}.json").write_text(json.dumps(profile_to_json(p), indent=1, ensure_ascii=False) + "\n")
    write_store(profiles, HERE / "store.xps")
    (HERE / "store.json").write_text(json.dumps({"names": [p.name for p in profiles]}, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
