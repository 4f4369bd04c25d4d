"""Fits whose files were written before the training core was unified (issue 17): the same seeds must
keep giving the same profiles. `python tests/golden_fits.py` rewrites tests/golden/ (only when a
change is meant to alter results; say so in the commit).

Each case fits on a tiny random BERT (helpers.save_tiny: its files are written byte for byte by the
tests, never by save_pretrained, so the bank hash inside each file does not depend on the installed
transformers) and returns the bytes of what `xpeft fit` would write: an .xpm for X-PEFT, the
safetensors file for a baseline. Bit-exact where torch and the CPU kernels match tests/golden/MACHINE;
elsewhere the decoded profiles are compared.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

GOLDEN = Path(__file__).parent / "golden"


def _setup(tmp: Path):
    sys.path.insert(0, str(Path(__file__).parent))
    from xpeft_cli.data import Examples

    from helpers import make_bank, save_tiny, sentiment_rows

    model = save_tiny(tmp / "tiny", "bert")
    bank = make_bank(model, tmp / "bank", n=16)
    rows = sentiment_rows(48, 0)
    one = Examples([r["text"] for r in rows], None, [r["label"] for r in rows], "golden")
    many = Examples(
        [r["text"] for r in rows],
        None,
        [r["label"] for r in rows],
        "golden",
        profiles=[("ann", "bob", "cy")[i % 3] for i in range(len(rows))],
    )
    return bank, one, many


def _bytes(profile, tmp: Path) -> bytes:
    """The .xpm bytes; for a baseline, the content of its safetensors file in a canonical order (the
    safetensors writer orders metadata keys differently from run to run)."""
    import json

    from xpeft_cli import xpm
    from xpeft_cli.baselines import AdapterProfile, read_adapter, write_adapter

    if not isinstance(profile, AdapterProfile):
        return xpm.encode(profile)
    write_adapter(profile, tmp / "out.safetensors")
    back = read_adapter(tmp / "out.safetensors")
    head = {k: getattr(back, k) for k in ("name", "method", "task", "labels", "rank", "sites", "bank_hash", "meta")}
    out = bytearray(json.dumps(head, sort_keys=True).encode())
    for name in sorted(back.tensors):
        t = back.tensors[name].contiguous()
        out += f"\n{name} {t.dtype} {list(t.shape)}\n".encode() + t.numpy().tobytes()
    return bytes(out)


CASES = {
    "lone-sign": dict(epochs=2),
    "lone-hard-knobs": dict(epochs=2, mask="hard", k=4, warmup=0.1, clip_norm=0.5, soft_warmup=0.5),
    "lone-sign-clip": dict(epochs=2, mask_clip=0.05, lr_masks=0.5),
    "lone-soft": dict(epochs=1, mask="soft", param_dtype="float32"),
    "lone-single-adapter": dict(epochs=2, method="single-adapter"),
    "lone-head-only": dict(epochs=2, method="head-only"),
    "many-hard": dict(epochs=2, mask="hard", k=4),
    "many-sign": dict(epochs=2),
    "many-single-adapter": dict(epochs=1, method="single-adapter"),
}


def run_case(name: str, tmp: Path) -> dict[str, bytes]:
    """{file name: bytes} of one case."""
    from xpeft_cli.config import FitConfig
    from xpeft_cli.multifit import fit_profiles
    from xpeft_cli.train import fit_profile

    bank, one, many = _setup(tmp)
    cfg = FitConfig(device="cpu", seed=3, batch_size=8, **CASES[name])
    if name.startswith("lone"):
        return {f"{name}.bin": _bytes(fit_profile(bank, one, "alice", cfg).profile, tmp)}
    res = fit_profiles(bank, many, cfg)
    return {f"{name}-{p}.bin": _bytes(res.profiles[p], tmp) for p in res.names}


def machine() -> str:
    """What bit-exact float results depend on besides the code: torch's version and CPU kernels."""
    import torch

    return f"torch {torch.__version__.split('+')[0]}, cpu {torch.backends.cpu.get_cpu_capability()}"


def main() -> None:
    import torch

    torch.set_num_threads(1)
    GOLDEN.mkdir(exist_ok=True)
    (GOLDEN / "MACHINE").write_text(machine() + "\n")
    for name in CASES:
        with tempfile.TemporaryDirectory() as d:
            for fname, data in run_case(name, Path(d)).items():
                (GOLDEN / fname).write_bytes(data)
                print(fname, len(data))


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's code, not an installed copy
    main()
