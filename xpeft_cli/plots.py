"""Figures of the paper, from xpeft's own files: mask t-SNE (Fig. 3), mask heatmaps (Fig. 6),
training loss curves (Fig. 5). matplotlib (Agg, PNG) and scikit-learn's t-SNE.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from .atomic import atomic_write_with
from .data import json_lines
from .errors import DataError
from .lora import mixing_weights
from .profile import Profile


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, out: Path) -> int:
    atomic_write_with(out, lambda tmp: fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight"))
    _plt().close(fig)
    return Path(out).stat().st_size


def mask_vector(p: Profile) -> np.ndarray:
    """A profile's masks as one vector of mixing weights (A then B, site by site)."""
    wa, wb = mixing_weights(p)
    return np.concatenate([wa.numpy().ravel(), wb.numpy().ravel()])


def majority_label(p: Profile) -> str:
    counts = p.meta.get("fit", {}).get("label_counts") or {}
    return max(counts.items(), key=lambda kv: (kv[1], kv[0]))[0] if counts else "?"


def plot_masks(profiles: list[Profile], out: Path, seed: int = 0, perplexity: float = 30.0) -> dict:
    """t-SNE of the profiles' masks, coloured by each profile's majority training label (Fig. 3)."""
    from sklearn.manifold import TSNE

    if len(profiles) < 3:
        raise DataError("a t-SNE of masks needs at least 3 profiles")
    if len({(p.n, p.L) for p in profiles}) != 1:
        raise DataError("the profiles have masks of different shapes (fitted on different banks)")
    x = np.stack([mask_vector(p) for p in profiles])
    emb = TSNE(
        n_components=2, perplexity=min(perplexity, len(profiles) - 1), random_state=seed, init="pca"
    ).fit_transform(x)
    labels = [majority_label(p) for p in profiles]
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 6))
    cats = [c for c, _ in Counter(labels).most_common()]
    # tab10's ten distinct colours, then the same colours with other marker shapes: tab20's pairs are
    # two shades of one hue, which read as one category
    cmap, markers = plt.get_cmap("tab10"), "osD^vP*Xph"
    for i, c in enumerate(cats):
        pts = emb[[j for j, lab in enumerate(labels) if lab == c]]
        ax.scatter(
            pts[:, 0], pts[:, 1], s=28, color=cmap(i % 10), marker=markers[(i // 10) % 10], label=f"{c} ({len(pts)})"
        )
    ax.set_title(f"t-SNE of {len(profiles)} profiles' masks (colour: majority label)")
    ax.legend(fontsize=7, loc="best", markerscale=0.8, frameon=False)
    ax.set_xticks([])
    ax.set_yticks([])
    return {"output": str(out), "profiles": len(profiles), "labels": dict(Counter(labels)), "bytes": _save(fig, out)}


def plot_heatmap(profiles: list[Profile], out: Path) -> dict:
    """M_A and M_B of each profile as L×N images (Fig. 6): where each site's weight goes."""
    plt = _plt()
    fig, axes = plt.subplots(
        len(profiles), 2, figsize=(12, 1.2 + 1.1 * len(profiles) * max(1, profiles[0].L / 6)), squeeze=False
    )
    for row, p in zip(axes, profiles):
        wa, wb = mixing_weights(p)
        for ax, w, which in zip(row, (wa, wb), ("A", "B")):
            from matplotlib.colors import ListedColormap

            if p.mask_kind in ("sign", "hard"):  # two values per mask: two colours, a two-entry colour bar
                states = (w > 0).float().numpy()
                names = ("−1/N", "+1/N") if p.mask_kind == "sign" else ("not chosen", f"chosen (1/{p.k})")
                two = ListedColormap(["#3b6fb6", "#d1495b"] if p.mask_kind == "sign" else ["#f0f0f0", "#1b4f72"])
                im = ax.imshow(states, aspect="auto", interpolation="nearest", cmap=two, vmin=-0.5, vmax=1.5)
                bar = fig.colorbar(im, ax=ax, fraction=0.025, ticks=[0, 1])
                bar.ax.set_yticklabels(names, fontsize=7)
            else:
                im = ax.imshow(w.numpy(), aspect="auto", interpolation="nearest", cmap="viridis")
                fig.colorbar(im, ax=ax, fraction=0.025)
            ax.set_title(
                f"{p.name}: M_{which} ({p.mask_kind}{', k=%d' % p.k if p.mask_kind == 'hard' else ''})", fontsize=9
            )
            ax.set_ylabel("site")
            ax.set_xlabel("adapter")
    fig.tight_layout()
    return {"output": str(out), "profiles": [p.name for p in profiles], "bytes": _save(fig, out)}


def read_curve(path: Path) -> tuple[list[int], list[float]]:
    steps, losses = [], []
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise DataError(f"{path}: not a text file (a fit log is JSONL)") from None
    for _, rec in json_lines(lines, str(path)):
        if isinstance(rec, dict) and "loss" in rec and "step" in rec:
            steps.append(int(rec["step"]))
            losses.append(float(rec["loss"]))
    if not steps:
        raise DataError(f"{path}: no training-loss records (write them with 'xpeft fit --log')")
    return steps, losses


def running_mean(values: list[float], window: int) -> np.ndarray:
    """The mean of the last `window` values at every position (of fewer at the start): one point per
    step, so the first steps of a fit are drawn too."""
    w = max(1, window)
    c = np.cumsum(np.concatenate([[0.0], np.asarray(values, dtype=np.float64)]))
    idx = np.arange(1, len(values) + 1)
    return (c[idx] - c[np.maximum(0, idx - w)]) / np.minimum(idx, w)


def plot_curves(paths: list[Path], out: Path, smooth: int = 10, labels: list[str] | None = None) -> dict:
    """Training loss against step for each fit log (Fig. 5), smoothed by a running mean."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 5))
    finals = {}
    for i, path in enumerate(paths):
        steps, losses = read_curve(path)
        y = running_mean(losses, smooth)
        name = labels[i] if labels and i < len(labels) else Path(path).name.removesuffix(".jsonl").removesuffix(".fit")
        ax.plot(steps, y, label=name, lw=1.4, marker="o" if len(steps) < 3 else None)
        finals[name] = float(y[-1])
    ax.set_xlabel("step")
    ax.set_ylabel(f"training loss (running mean of {smooth})")
    ax.set_title("Training loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return {"output": str(out), "curves": len(paths), "final_loss": finals, "bytes": _save(fig, out)}
