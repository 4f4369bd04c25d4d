"""Per-profile size arithmetic of the paper's Table 1, and measured sizes of real files."""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

from .bank import Bank
from .lora import materialize
from .profile import Profile


def trainable_xpeft(n: int, b: int, L: int) -> int:
    return 2 * (n + b) * L  # two mask rows and the LN affine per site


def bytes_hard(n: int, L: int) -> int:
    return 2 * math.ceil(n / 8) * L  # two bit rows per site


def bytes_soft(n: int, L: int) -> int:
    return 2 * n * L * 4  # two float32 rows per site


def params_single_adapter(d: int, b: int, L: int) -> int:
    return 2 * d * b * L


def display_trunc(value: int) -> str:
    """The paper's usual rounding: K or M with one decimal, truncated (3552 → 3.5K)."""
    for unit, scale in (("M", 10**6), ("K", 10**3)):
        if value >= scale or (unit == "K" and value >= 100):
            tenths = value * 10 // scale  # integer arithmetic: no float rounding surprises
            return f"{tenths // 10}.{tenths % 10}{unit}"
    return str(value)


def display_sig1(value: int) -> str:
    """The soft-mask byte column is printed to one significant figure (38,400 → 40K)."""
    digits = int(math.floor(math.log10(value)))
    rounded = round(value / 10**digits) * 10**digits
    return f"{rounded // 1000}K" if rounded >= 1000 else str(rounded)


def table1(ns=(100, 200, 400), rank: int = 48, dim: int = 768, layers: int = 12) -> dict:
    """Table 1 with its defaults (b = 48, as its numbers use; its caption says 64)."""
    rows = []
    for n in ns:
        rows.append(
            {
                "mode": "x_peft (hard)",
                "n": n,
                "trainable": trainable_xpeft(n, rank, layers),
                "trainable_display": display_trunc(trainable_xpeft(n, rank, layers)),
                "bytes": bytes_hard(n, layers),
                "bytes_display": display_trunc(bytes_hard(n, layers)),
            }
        )
    for n in ns:
        rows.append(
            {
                "mode": "x_peft (soft)",
                "n": n,
                "trainable": trainable_xpeft(n, rank, layers),
                "trainable_display": display_trunc(trainable_xpeft(n, rank, layers)),
                "bytes": bytes_soft(n, layers),
                "bytes_display": display_sig1(bytes_soft(n, layers)),
            }
        )
    sa = params_single_adapter(dim, rank, layers)
    rows.append(
        {
            "mode": "single_adapter",
            "n": None,
            "trainable": sa,
            "trainable_display": display_trunc(sa),
            "bytes": sa * 4,
            "bytes_display": display_trunc(sa * 4),
        }
    )
    return {"rank": rank, "dim": dim, "layers": layers, "rows": rows}


def measured_sizes(bank: Bank, profile: Profile, xpm_path: str | Path, sections: dict[str, int]) -> dict:
    """The .xpm on disk against the same profile written as a LoRA adapter in safetensors."""
    from safetensors.torch import save_file

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "adapter_model.safetensors"
        save_file(materialize(bank, profile), str(path))
        lora_bytes = path.stat().st_size
    xpm_bytes = Path(xpm_path).stat().st_size
    masks_only = sections["header"] + sections["name"] + sections["masks"] + sections["checksum"]
    return {
        "profile": profile.name,
        "mask": profile.mask_kind,
        "n": profile.n,
        "L": profile.L,
        "rank": bank.rank,
        "xpm_bytes": xpm_bytes,
        "xpm_masks_only_bytes": masks_only,
        "sections": sections,
        "lora_safetensors_bytes": lora_bytes,
        "ratio_lora_to_xpm": lora_bytes / xpm_bytes,
        "ratio_lora_to_masks_only": lora_bytes / masks_only,
    }
