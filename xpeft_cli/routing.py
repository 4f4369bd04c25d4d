"""Many profiles in one model: every row of a batch runs with its own profile's Â, B̂, LN and head.

layer.py holds one profile inside each site. Here the sites hold none: a *table* of profiles
(trainable or frozen) mixes Â, B̂ for the profiles present in a batch, and RoutedLinear
gathers them per row. The same model fits many profiles in one run, trains the P adapters
of a bank (one LoRA per profile, sa or mtl), and serves mixed batches of stored profiles.

Every trainable profile owns separate parameter tensors, and a batch stacks only the
profiles it holds, so an absent profile gets no gradient (None) and AdamW skips it. With
each profile's own data order, Gumbel generator and schedule, one run therefore takes the
same optimisation steps per profile as fitting each profile alone (up to float noise).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import fused
from .bank import stack_by_shape
from .masks import MaskSpec, gumbel, initial_logits, mask_choice
from .mixing import mix
from .model import TASK_REGRESSION, _set_submodule, mean_pool


@dataclass
class Route:
    """What the sites need for one forward: per present profile Â, B̂ (and LN affine), per row an index."""

    a_hat: torch.Tensor  # (U, d_in, b)
    b_hat: torch.Tensor  # (U, b, d_out)
    ln_w: torch.Tensor | None  # (U, b)
    ln_b: torch.Tensor | None
    rows: torch.Tensor  # (B,) index into U


@dataclass
class RowRoute:
    """The serving form of a route: Â, B̂ already per row, the LN affine folded into B̂.

    LN(h)·γ + β, then ·B̂, equals [LN(h), 1]·[diag(γ) B̂; β B̂]: a site runs bmm, LN, a pad of
    the narrow h (b wide) and bmm, with no per-site gathers or affine ops on the wide output.
    """

    a: torch.Tensor  # (R, d_in, b), R = 1 (one profile in the batch) or B (per row)
    b: torch.Tensor  # (R, b, d_out), or (R, b+1, d_out) = [diag(γ) B̂; β B̂] when `affine`
    affine: bool = False


def _cast(t: torch.Tensor, like: torch.Tensor, autocast: bool) -> torch.Tensor:
    """Under autocast the matmuls cast their operands themselves (see XPeftLinear.delta: casting
    B̂ to LN's float32 output first would copy it there and back); without it, match `like`."""
    return t if autocast else t.to(like.dtype)


class RoutedLinear(nn.Module):
    """y = W x + s · LN(x Â_r) B̂_r, where r is the row's profile (no LN: plain LoRA form)."""

    def __init__(self, base: nn.Linear, rank: int, ln: bool, ln_eps: float, scale: float):
        super().__init__()
        self.base, self.rank, self.ln, self.ln_eps, self.scale = base, rank, ln, ln_eps, scale
        self.route: Route | RowRoute | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        r = self.route
        if r is None:
            return y
        if isinstance(r, RowRoute):
            return self._rows(x, y, r)
        shape = x.shape
        x3 = x.reshape(shape[0], -1, shape[-1])
        auto = torch.is_autocast_enabled(x.device.type)
        if r.a_hat.shape[0] == 1:  # one profile in the batch: plain matmuls, no gather
            h = x3 @ _cast(r.a_hat[0], x, auto)
        else:
            h = torch.bmm(x3, _cast(r.a_hat[r.rows], x, auto))
        if self.ln:  # each row with its own profile's affine
            affine = (r.ln_w[r.rows].unsqueeze(1), r.ln_b[r.rows].unsqueeze(1)) if r.ln_w is not None else (None, None)
            h = fused.layer_norm(h, *affine, self.ln_eps)
        if r.b_hat.shape[0] == 1:
            d = h @ _cast(r.b_hat[0], h, auto)
        else:
            d = torch.bmm(h, _cast(r.b_hat[r.rows], h, auto))
        d = d.reshape(*shape[:-1], -1).to(y.dtype)
        return y + d if self.scale == 1.0 else y + self.scale * d

    def _rows(self, x: torch.Tensor, y: torch.Tensor, r: RowRoute) -> torch.Tensor:
        shape = x.shape
        x3 = x.reshape(shape[0], -1, shape[-1])
        one = r.a.shape[0] == 1
        auto = torch.is_autocast_enabled(x.device.type)
        a = _cast(r.a, x, auto)
        h = x3 @ a[0] if one else torch.bmm(x3, a)
        if self.ln:
            h = fused.layer_norm(h, None, None, self.ln_eps)
        if r.affine:  # the column of ones that picks up β B̂
            h = F.pad(h, (0, 1), value=1.0)
        b = _cast(r.b, h, auto)
        d = h @ b[0] if one else torch.bmm(h, b)
        d = d.reshape(*shape[:-1], -1).to(y.dtype)
        return y + d if self.scale == 1.0 else torch.add(y, d, alpha=self.scale)


# ---- tables: where each profile's parameters live ---------------------------------------------
class _BankTable(nn.Module):
    """A table of profiles over a frozen bank: holds the bank and mixes Â, B̂ from it.

    Sites of one shape (every site, for the usual query/value targets) share one stacked
    tensor, so that mixing them all is one bmm per bank tensor rather than two einsums a site.
    """

    def __init__(self, bank_a: list[torch.Tensor], bank_b: list[torch.Tensor]):
        super().__init__()
        self.L, (self.n, _, self.rank) = len(bank_a), bank_a[0].shape
        stacked = stack_by_shape(bank_a, bank_b)
        self.shape_groups = [sites for sites, _, _ in stacked]
        self.whole = [sites == list(range(self.L)) for sites in self.shape_groups]  # pick() needs no gather
        self.where = {l: (g, i) for g, sites in enumerate(self.shape_groups) for i, l in enumerate(sites)}
        for g, (sites, a, b) in enumerate(stacked):
            self.register_buffer(f"stack_a{g}", a, persistent=False)
            self.register_buffer(f"stack_b{g}", b, persistent=False)
            # the group's site numbers on the device: a Python list index would copy from the host
            self.register_buffer(f"sites{g}", torch.tensor(sites), persistent=False)

    def pick(self, t: torch.Tensor, g: int) -> torch.Tensor:
        """t[:, sites of group g] (t: (U, L, ...)); t itself when the group is every site, in order."""
        if self.whole[g]:
            return t
        return t.index_select(1, getattr(self, f"sites{g}"))

    def stack(self, g: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Shape group g's bank: (G, N, d_in, b), (G, N, b, d_out)."""
        return getattr(self, f"stack_a{g}"), getattr(self, f"stack_b{g}")

    def bank(self, l: int) -> tuple[torch.Tensor, torch.Tensor]:
        g, i = self.where[l]
        a, b = self.stack(g)
        return a[i], b[i]

    def mix_group(
        self, g: int, w: torch.Tensor | None, chosen: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(Â, B̂) of every site in shape group g for U profiles: two mixes (mixing.mix).

        w (U, L, 2, N) dense weights; or, for hard masks, chosen (U, L, 2, k) with w the
        straight-through y_soft (None at inference). Returns (G, U, d_in, b) and (G, U, b, d_out).
        """
        bank_a, bank_b = self.stack(g)
        # (U, L, 2, ·) → (G, 2, U, ·): per site, one row per profile
        wg, cg = (None if t is None else self.pick(t, g).permute(1, 2, 0, 3) for t in (w, chosen))
        G, n, u = bank_a.shape[0], self.n, (w if w is not None else chosen).shape[0]
        a_hat = mix(bank_a.reshape(G, n, -1), *(None if t is None else t[:, 0] for t in (wg, cg)))
        b_hat = mix(bank_b.reshape(G, n, -1), *(None if t is None else t[:, 1] for t in (wg, cg)))
        return a_hat.view(G, u, *bank_a.shape[2:]), b_hat.view(G, u, *bank_b.shape[2:])

    def cast_bank(self, dtype: torch.dtype) -> None:
        """Keep the bank in the compute dtype (bf16 on a GPU): autocast would re-cast it every step."""
        for g in range(len(self.shape_groups)):
            a, b = self.stack(g)
            setattr(self, f"stack_a{g}", a.to(dtype))
            setattr(self, f"stack_b{g}", b.to(dtype))


class MaskTable(_BankTable):
    """Trainable X-PEFT profiles over a frozen bank: mask logits (L×N, twice), LN affine (L×b)."""

    def __init__(
        self,
        bank_a: list[torch.Tensor],
        bank_b: list[torch.Tensor],
        count: int,
        spec: MaskSpec,
        ln: bool,
        seed: int = 0,
    ):
        super().__init__(bank_a, bank_b)
        self.spec = spec
        start = initial_logits(spec.kind, self.L, self.n, seed)  # each profile starts as its lone fit would
        self.logits_a = nn.ParameterList([nn.Parameter(start[0].clone()) for _ in range(count)])
        self.logits_b = nn.ParameterList([nn.Parameter(start[1].clone()) for _ in range(count)])
        self.ln_w = nn.ParameterList([nn.Parameter(torch.ones(self.L, self.rank)) for _ in range(count)] if ln else [])
        self.ln_b = nn.ParameterList([nn.Parameter(torch.zeros(self.L, self.rank)) for _ in range(count)] if ln else [])
        self.generators: list[torch.Generator | None] = [None] * count

    def seed_generators(self, device: torch.device, seed: int) -> None:
        """One Gumbel generator per profile, seeded as a lone fit of that profile seeds its own."""
        self.generators = [torch.Generator(device=device).manual_seed(seed + 1) for _ in self.logits_a]

    def choice(self, present: list[int]) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """masks.mask_choice of the profiles `present`, computed together: (U, L, 2, N) weights
        and, for hard masks, the (U, L, 2, k) chosen adapters.

        Each profile's Gumbel noise is drawn from its own generator with the (L, 2, N) shape a
        lone fit draws (XPeftModel mixes all sites at once), so the draws are the same.
        """
        u = len(present)
        logits = torch.stack([t for p in present for t in (self.logits_a[p], self.logits_b[p])])  # (2U, L, N)
        logits = logits.view(u, 2, self.L, self.n).transpose(1, 2)  # (U, L, 2, N)
        noise = None
        if self.spec.kind == "hard" and self.training and self.spec.nu:
            draw = (self.L, 2, self.n)
            noise = gumbel(
                torch.stack(
                    [
                        torch.rand(draw, generator=self.generators[p], device=logits.device, dtype=logits.dtype)
                        for p in present
                    ]
                )
            )
        return mask_choice(logits, self.spec, self.training, noise)

    def routes(self, present: list[int], rows: torch.Tensor) -> list[Route]:
        w, chosen = self.choice(present)
        if len(self.ln_w):  # one stack for every site
            ln_w = torch.stack([self.ln_w[p] for p in present])
            ln_b = torch.stack([self.ln_b[p] for p in present])
        out: list[Route | None] = [None] * self.L
        for g, sites in enumerate(self.shape_groups):
            a_hat, b_hat = self.mix_group(g, w, chosen)  # every site of this shape in two mixes
            for i, l in enumerate(sites):
                ln = (ln_w[:, l], ln_b[:, l]) if len(self.ln_w) else (None, None)
                out[l] = Route(a_hat[i], b_hat[i], *ln, rows)
        return out

    def groups(self, p: int) -> dict[str, list[nn.Parameter]]:
        ln = [self.ln_w[p], self.ln_b[p]] if len(self.ln_w) else []
        return {"masks": [self.logits_a[p], self.logits_b[p]], "ln": ln}


class AdapterTable(nn.Module):
    """One trainable LoRA per profile and site (the sa/mtl bank builders, single-adapter baselines).

    Initialised as baselines.LoRALinear: A kaiming-uniform from a generator seeded per profile
    (site by site, as a lone fit draws them), B zero.
    """

    def __init__(self, shapes: list[tuple[int, int]], rank: int, count: int, seed: int = 0):
        super().__init__()
        self.L, self.rank = len(shapes), rank
        self.a = nn.ParameterList()
        self.b = nn.ParameterList()
        for _ in range(count):
            g = torch.Generator().manual_seed(seed)
            for d_in, d_out in shapes:
                bound = 1.0 / math.sqrt(d_in)
                self.a.append(nn.Parameter((torch.rand(d_in, rank, generator=g) * 2 - 1) * bound))
                self.b.append(nn.Parameter(torch.zeros(rank, d_out)))

    def routes(self, present: list[int], rows: torch.Tensor) -> list[Route]:
        return [
            Route(
                torch.stack([self.a[p * self.L + l] for p in present]),
                torch.stack([self.b[p * self.L + l] for p in present]),
                None,
                None,
                rows,
            )
            for l in range(self.L)
        ]

    def groups(self, p: int) -> dict[str, list[nn.Parameter]]:
        return {"adapter": [t for l in range(self.L) for t in (self.a[p * self.L + l], self.b[p * self.L + l])]}

    def adapter(self, p: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        return (
            [self.a[p * self.L + l].detach() for l in range(self.L)],
            [self.b[p * self.L + l].detach() for l in range(self.L)],
        )


def _dense_weights(p) -> torch.Tensor:
    """(L, 2, N) inference weights of a soft (softmax of the logits) or sign (±1/N) profile."""
    from .profile import inference_weights  # profile.py builds on model.py, which builds on this module

    return torch.stack(inference_weights(p), 1)


class FrozenMaskTable(_BankTable):
    """Stored X-PEFT profiles for inference: hard bits or soft weights, LN affine, mixed per batch.

    A hard profile costs 2·L·N bytes here (bool); Â, B̂ are mixed only for the profiles a batch
    holds, so any number of distinct profiles can share one batch.
    """

    def __init__(self, bank_a: list[torch.Tensor], bank_b: list[torch.Tensor], profiles: list, ln: bool):
        super().__init__(bank_a, bank_b)
        hard = [i for i, p in enumerate(profiles) if p.mask_kind == "hard"]
        soft = [i for i, p in enumerate(profiles) if p.mask_kind != "hard"]
        slot = torch.zeros(len(profiles), dtype=torch.long)
        slot[hard], slot[soft] = torch.arange(len(hard)), torch.arange(len(soft))
        # Every profile has a row in both tables: its own, or an all-zero one appended to the other
        # kind's table. Weights are then one formula for any mix of kinds, with fixed shapes and no
        # host syncs (what CUDA graphs need).
        zero = torch.zeros(1, self.L, 2, self.n)
        bits = [torch.from_numpy(np.stack([profiles[i].mask_a, profiles[i].mask_b], 1)) for i in hard]
        self.register_buffer(
            "bits", torch.cat([torch.stack(bits) if bits else zero[:0].bool(), zero.bool()]), persistent=False
        )
        self.register_buffer("k", torch.tensor([float(profiles[i].k) for i in hard] + [1.0]), persistent=False)
        soft_w = [_dense_weights(profiles[i]) for i in soft]  # soft and sign profiles: their weights as they are
        self.register_buffer("soft", torch.cat([torch.stack(soft_w) if soft_w else zero[:0], zero]), persistent=False)
        is_hard = torch.tensor([p.mask_kind == "hard" for p in profiles])
        self.register_buffer("hard_slot", torch.where(is_hard, slot, len(hard)), persistent=False)
        self.register_buffer("soft_slot", torch.where(is_hard, len(soft), slot), persistent=False)
        self.has_ln = ln
        if ln:  # a profile stored without LN affine runs with the identity affine
            w = [p.ln_weight if p.ln_weight is not None else np.ones((self.L, self.rank), np.float32) for p in profiles]
            b = [p.ln_bias if p.ln_bias is not None else np.zeros((self.L, self.rank), np.float32) for p in profiles]
            self.register_buffer("ln_w", torch.from_numpy(np.stack(w)), persistent=False)
            self.register_buffer("ln_b", torch.from_numpy(np.stack(b)), persistent=False)

    def weights(self, ids: torch.Tensor) -> torch.Tensor:
        """(U, L, 2, N) mixing weights of the profiles `ids` ((U,), on the table's device)."""
        hs = self.hard_slot[ids]
        return self.bits[hs].float() / self.k[hs].view(-1, 1, 1, 1) + self.soft[self.soft_slot[ids]]

    def routes(self, present: list[int], rows: torch.Tensor) -> list[RowRoute]:
        """Routes for the profiles `present`, rows (B,) indexing into them: Â, B̂ mixed per profile,
        then gathered per row. About a dozen launches per batch whatever L is, so a mixed batch
        runs each site as cheaply as one cached profile does."""
        idx = torch.tensor(present).to(self.hard_slot.device, non_blocking=True)
        rows = None if len(present) == 1 else rows
        if self.cached:
            return self._gather(idx if rows is None else idx[rows])
        return self._routes(idx, rows)

    def row_routes(self, ids: torch.Tensor) -> list[RowRoute]:
        """Routes with Â, B̂ for every row: no host syncs and fixed shapes, so the forward can be
        captured in a CUDA graph. Mixes B rows instead of one per distinct profile (or gathers them)."""
        return self._gather(ids) if self.cached else self._routes(ids, None)

    # -- mixing, and the precomputed alternative ----------------------------------------------
    def _mix_fold(self, g: int, w: torch.Tensor, ln: tuple | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Shape group g's Â (G, U, d_in, b) and B̂ (G, U, b, d_out), or with an LN affine
        [diag(γ) B̂; β B̂] (G, U, b+1, d_out); from (U, L, 2, N) weights and (U, L, b) γ, β."""
        a_hat, b_hat = self.mix_group(g, w)
        if ln is None:
            return a_hat, b_hat
        gamma = self.pick(ln[0], g).transpose(0, 1).to(b_hat.dtype)  # (G, U, b)
        beta = self.pick(ln[1], g).transpose(0, 1).to(b_hat.dtype)
        return a_hat, torch.cat([gamma.unsqueeze(-1) * b_hat, beta.unsqueeze(2) @ b_hat], dim=2)

    def _ln(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        return (self.ln_w[ids], self.ln_b[ids]) if self.has_ln else None  # one gather for every site

    def _routes(self, ids: torch.Tensor, rows: torch.Tensor | None) -> list[RowRoute]:
        """Â, B̂ mixed for the profiles `ids`, gathered per row by `rows` (None: one per id)."""
        w, ln = self.weights(ids), self._ln(ids)
        out: list[RowRoute | None] = [None] * self.L
        for g, sites in enumerate(self.shape_groups):
            a_hat, b_hat = self._mix_fold(g, w, ln)
            if rows is not None:  # per row: one gather per tensor for the whole group
                a_hat, b_hat = a_hat[:, rows], b_hat[:, rows]
            for i, l in enumerate(sites):
                out[l] = RowRoute(a_hat[i], b_hat[i], ln is not None)
        return out

    cached = False

    def mixed_bytes(self) -> int:
        """What precompute() would hold: every profile's Â, B̂ (and β B̂) at every site."""
        count, size = self.hard_slot.shape[0], self.stack(0)[0].element_size()
        per = 0
        for g, sites in enumerate(self.shape_groups):
            a, b = self.stack(g)
            per += len(sites) * (a[0, 0].numel() + b[0, 0].numel() + (b.shape[-1] if self.has_ln else 0))
        return count * per * size

    @torch.no_grad()
    def precompute(self, chunk: int = 256) -> None:
        """Mix and fold every stored profile's Â, B̂ once: a batch then gathers its rows' (about
        B·L·2·d·b values) instead of reading the whole bank (L·N·2·d·b) to mix them. The same
        numbers either way; costs mixed_bytes() of memory. Held profile-major, (P, G, …), so
        that a gather copies whole contiguous blocks."""
        count = self.hard_slot.shape[0]
        held: list[list[torch.Tensor]] = []
        for s in range(0, count, chunk):  # filled in place: no second copy of the whole table
            ids = torch.arange(s, min(s + chunk, count), device=self.hard_slot.device)
            w, ln = self.weights(ids), self._ln(ids)
            for g in range(len(self.shape_groups)):
                parts = self._mix_fold(g, w, ln)
                if s == 0:
                    held.append([t.new_empty(count, t.shape[0], *t.shape[2:]) for t in parts])
                for dest, t in zip(held[g], parts):
                    dest[s : s + len(ids)] = t.transpose(0, 1)
        for g, (a, b) in enumerate(held):
            self.register_buffer(f"mixed_a{g}", a, persistent=False)
            self.register_buffer(f"mixed_b{g}", b, persistent=False)
        self.cached = True

    def release_bank(self) -> int:
        """After precompute(), drop what only mixing reads: the stacked bank, the mask tables and
        the LN affines. A server that gathers precomputed rows never reads them again. Returns
        the bytes freed."""
        if not self.cached:
            raise RuntimeError("release_bank() needs precompute() first")
        names = [f"stack_{t}{g}" for g in range(len(self.shape_groups)) for t in "ab"]
        names += ["bits", "k", "soft", "soft_slot"] + (["ln_w", "ln_b"] if self.has_ln else [])
        freed = sum(getattr(self, n).nbytes for n in names)
        for n in names:
            delattr(self, n)
        return freed

    def _gather(self, ids: torch.Tensor) -> list[RowRoute]:
        """Routes from the precomputed Â, B̂: two contiguous gathers per shape group."""
        out: list[RowRoute | None] = [None] * self.L
        for g, sites in enumerate(self.shape_groups):
            a = getattr(self, f"mixed_a{g}").index_select(0, ids)  # (B, G, d_in, b)
            b = getattr(self, f"mixed_b{g}").index_select(0, ids)
            for i, l in enumerate(sites):
                out[l] = RowRoute(a[:, i], b[:, i], self.has_ln)
        return out


# ---- heads ------------------------------------------------------------------------------
class HeadTable(nn.Module):
    """Per-profile heads (C×d each), or one shared head for every profile (mtl)."""

    def __init__(self, hidden: int, num_outputs: int, count: int, seed: int = 0, shared: bool = False):
        super().__init__()
        self.shared = shared
        n = 1 if shared else count
        self.weight = nn.ParameterList()
        self.bias = nn.ParameterList()
        for _ in range(n):  # initialised as EncoderClassifier's head, seeded per profile
            g = torch.Generator().manual_seed(seed)
            self.weight.append(nn.Parameter(torch.randn(num_outputs, hidden, generator=g) * 0.02))
            self.bias.append(nn.Parameter(torch.zeros(num_outputs)))

    def forward(self, pooled: torch.Tensor, present: list[int], rows: torch.Tensor) -> torch.Tensor:
        if self.shared or len(present) == 1:
            i = 0 if self.shared else present[0]
            return F.linear(pooled, self.weight[i].to(pooled.dtype), self.bias[i].to(pooled.dtype))
        w = torch.stack([self.weight[p] for p in present])[rows].to(pooled.dtype)
        b = torch.stack([self.bias[p] for p in present])[rows].to(pooled.dtype)
        return torch.einsum("bd,bcd->bc", pooled, w) + b

    def groups(self, p: int) -> dict[str, list[nn.Parameter]]:
        return {} if self.shared else {"head": [self.weight[p], self.bias[p]]}


class FrozenHeadTable(nn.Module):
    """Stored heads, stacked (P, C, d): narrower heads are padded with −inf biases so they never
    win an argmax. Gathered per row, for the profiles present or straight from row ids."""

    def __init__(self, weights: list[np.ndarray], biases: list[np.ndarray]):
        super().__init__()
        c, d = max(w.shape[0] for w in weights), weights[0].shape[1]
        w_all = torch.zeros(len(weights), c, d)
        b_all = torch.full((len(weights), c), -math.inf)
        for i, (w, b) in enumerate(zip(weights, biases)):
            w_all[i, : w.shape[0]] = torch.from_numpy(np.asarray(w, np.float32))
            b_all[i, : b.shape[0]] = torch.from_numpy(np.asarray(b, np.float32))
        self.register_buffer("weight", w_all, persistent=False)
        self.register_buffer("bias", b_all, persistent=False)

    def forward(self, pooled: torch.Tensor, present: list[int], rows: torch.Tensor) -> torch.Tensor:
        if len(present) == 1:
            return F.linear(pooled, self.weight[present[0]].to(pooled.dtype), self.bias[present[0]].to(pooled.dtype))
        idx = torch.tensor(present).to(pooled.device, non_blocking=True)[rows]
        return self.forward_rows(pooled, idx)

    def forward_rows(self, pooled: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Each row through its own head; `ids` (B,) on the device."""
        w, b = self.weight[ids].to(pooled.dtype), self.bias[ids].to(pooled.dtype)
        return torch.einsum("bd,bcd->bc", pooled, w) + b


class RoutedModel(nn.Module):
    """A frozen encoder whose sites are RoutedLinear, a table of profiles, and their heads.

    forward(..., profile_ids) runs each row with its own profile; `table=None` is head-only.
    """

    def __init__(
        self,
        encoder: nn.Module,
        site_names: list[str],
        rank: int,
        table: nn.Module | None,
        heads: HeadTable,
        task: str,
        ln: bool = False,
        ln_eps: float = 1e-5,
        scale: float = 1.0,
    ):
        super().__init__()
        self.encoder, self.table, self.heads, self.task = encoder, table, heads, task
        for p in encoder.parameters():
            p.requires_grad_(False)
        self.sites: list[RoutedLinear] = []
        if table is not None:
            for name in site_names:
                base = encoder.get_submodule(name)
                layer = RoutedLinear(base, rank, ln, ln_eps, scale)
                _set_submodule(encoder, name, layer)
                self.sites.append(layer)

    def forward(self, input_ids, attention_mask, token_type_ids=None, profile_ids=None) -> torch.Tensor:
        # profile_ids on the CPU (as the server passes them) keeps this free of GPU→CPU syncs.
        present_t, rows = torch.unique(profile_ids.cpu(), sorted=True, return_inverse=True)
        present = present_t.tolist()
        rows = rows.to(input_ids.device, non_blocking=True)
        routes = self.table.routes(present, rows) if self.table is not None else None
        pooled = self._encode(routes, input_ids, attention_mask, token_type_ids)
        out = self.heads(pooled, present, rows)
        return out.squeeze(-1) if self.task == TASK_REGRESSION else out

    def forward_rows(self, input_ids, attention_mask, token_type_ids=None, row_ids=None) -> torch.Tensor:
        """forward with every row's profile id on the device and Â, B̂ mixed per row: no host
        syncs and fixed shapes, so that it can be captured in a CUDA graph (stored profiles only)."""
        pooled = self._encode(self.table.row_routes(row_ids), input_ids, attention_mask, token_type_ids)
        out = self.heads.forward_rows(pooled, row_ids)
        return out.squeeze(-1) if self.task == TASK_REGRESSION else out

    def _encode(self, routes, input_ids, attention_mask, token_type_ids) -> torch.Tensor:
        for site, route in zip(self.sites, routes or []):
            site.route = route
        try:
            kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
            if token_type_ids is not None:
                kwargs["token_type_ids"] = token_type_ids
            return mean_pool(self.encoder(**kwargs).last_hidden_state, attention_mask)
        finally:
            for site in self.sites:
                site.route = None

    def profile_groups(self, p: int) -> dict[str, list[nn.Parameter]]:
        """The parameter tensors that belong to profile p alone, by learning-rate group."""
        groups = dict(self.table.groups(p)) if self.table is not None and hasattr(self.table, "groups") else {}
        groups.update(self.heads.groups(p))
        return groups
