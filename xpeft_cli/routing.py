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

from .masks import MaskSpec, gumbel, mask_weights, soft_weights
from .model import TASK_REGRESSION, _set_submodule, mean_pool


@dataclass
class Route:
    """What the sites need for one forward: per present profile Â, B̂ (and LN affine), per row an index."""

    a_hat: torch.Tensor            # (U, d_in, b)
    b_hat: torch.Tensor            # (U, b, d_out)
    ln_w: torch.Tensor | None      # (U, b)
    ln_b: torch.Tensor | None
    rows: torch.Tensor             # (B,) index into U


class RoutedLinear(nn.Module):
    """y = W x + s · LN(x Â_r) B̂_r, where r is the row's profile (no LN: plain LoRA form)."""

    def __init__(self, base: nn.Linear, rank: int, ln: bool, ln_eps: float, scale: float):
        super().__init__()
        self.base, self.rank, self.ln, self.ln_eps, self.scale = base, rank, ln, ln_eps, scale
        self.route: Route | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        r = self.route
        if r is None:
            return y
        shape = x.shape
        x3 = x.reshape(shape[0], -1, shape[-1])
        if r.a_hat.shape[0] == 1:   # one profile in the batch: plain matmuls, no gather
            h = x3 @ r.a_hat[0].to(x.dtype)
        else:
            h = torch.bmm(x3, r.a_hat[r.rows].to(x.dtype))
        if self.ln:
            h = F.layer_norm(h, (self.rank,), eps=self.ln_eps)
            if r.ln_w is not None:
                h = h * r.ln_w[r.rows].unsqueeze(1).to(h.dtype) + r.ln_b[r.rows].unsqueeze(1).to(h.dtype)
        if r.b_hat.shape[0] == 1:
            d = h @ r.b_hat[0].to(h.dtype)
        else:
            d = torch.bmm(h, r.b_hat[r.rows].to(h.dtype))
        return y + self.scale * d.reshape(*shape[:-1], -1).to(y.dtype)


# ---- tables: where each profile's parameters live ---------------------------------------------
class _BankTable(nn.Module):
    """A table of profiles over a frozen bank: holds the bank per site and mixes Â, B̂ from it."""

    def __init__(self, bank_a: list[torch.Tensor], bank_b: list[torch.Tensor]):
        super().__init__()
        self.L, (self.n, _, self.rank) = len(bank_a), bank_a[0].shape
        for l, (a, b) in enumerate(zip(bank_a, bank_b)):
            self.register_buffer(f"bank_a{l}", a, persistent=False)
            self.register_buffer(f"bank_b{l}", b, persistent=False)

    def bank(self, l: int) -> tuple[torch.Tensor, torch.Tensor]:
        return getattr(self, f"bank_a{l}"), getattr(self, f"bank_b{l}")

    def mix(self, l: int, w_a: torch.Tensor, w_b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(Â, B̂) of site l for U profiles: w_a, w_b are (U, N) mixing weights."""
        bank_a, bank_b = self.bank(l)
        return (torch.einsum("un,nib->uib", w_a.to(bank_a.dtype), bank_a),
                torch.einsum("un,nbo->ubo", w_b.to(bank_b.dtype), bank_b))

    def cast_bank(self, dtype: torch.dtype) -> None:
        """Keep the bank in the compute dtype (bf16 on a GPU): autocast would re-cast it every step."""
        for l in range(self.L):
            a, b = self.bank(l)
            setattr(self, f"bank_a{l}", a.to(dtype))
            setattr(self, f"bank_b{l}", b.to(dtype))


class MaskTable(_BankTable):
    """Trainable X-PEFT profiles over a frozen bank: mask logits (L×N, twice), LN affine (L×b)."""

    def __init__(self, bank_a: list[torch.Tensor], bank_b: list[torch.Tensor], count: int, spec: MaskSpec,
                 ln: bool):
        super().__init__(bank_a, bank_b)
        self.spec = spec
        self.logits_a = nn.ParameterList([nn.Parameter(torch.zeros(self.L, self.n)) for _ in range(count)])
        self.logits_b = nn.ParameterList([nn.Parameter(torch.zeros(self.L, self.n)) for _ in range(count)])
        self.ln_w = nn.ParameterList([nn.Parameter(torch.ones(self.L, self.rank)) for _ in range(count)] if ln else [])
        self.ln_b = nn.ParameterList([nn.Parameter(torch.zeros(self.L, self.rank)) for _ in range(count)] if ln else [])
        self.generators: list[torch.Generator | None] = [None] * count

    def seed_generators(self, device: torch.device, seed: int) -> None:
        """One Gumbel generator per profile, seeded as a lone fit of that profile seeds its own."""
        self.generators = [torch.Generator(device=device).manual_seed(seed + 1) for _ in self.logits_a]

    def weights(self, present: list[int]) -> torch.Tensor:
        """(U, L, 2, N) mixing weights of the profiles `present`, computed together.

        Each profile's Gumbel noise is drawn from its own generator with the (L, 2, N) shape a
        lone fit draws (XPeftModel mixes all sites at once), so the draws are the same.
        """
        u = len(present)
        logits = torch.stack([t for p in present for t in (self.logits_a[p], self.logits_b[p])])  # (2U, L, N)
        logits = logits.view(u, 2, self.L, self.n).transpose(1, 2)                               # (U, L, 2, N)
        noise = None
        if self.spec.kind == "hard" and self.training and self.spec.nu:
            draw = (self.L, 2, self.n)
            noise = gumbel(torch.stack([torch.rand(draw, generator=self.generators[p], device=logits.device,
                                                   dtype=logits.dtype) for p in present]))
        return mask_weights(logits, self.spec, self.training, noise)

    def routes(self, present: list[int], rows: torch.Tensor) -> list[Route]:
        w = self.weights(present)
        if len(self.ln_w):  # one stack for every site
            ln_w = torch.stack([self.ln_w[p] for p in present])
            ln_b = torch.stack([self.ln_b[p] for p in present])
        out = []
        for l in range(self.L):
            a_hat, b_hat = self.mix(l, w[:, l, 0], w[:, l, 1])
            ln = (ln_w[:, l], ln_b[:, l]) if len(self.ln_w) else (None, None)
            out.append(Route(a_hat, b_hat, *ln, rows))
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
        return [Route(torch.stack([self.a[p * self.L + l] for p in present]),
                      torch.stack([self.b[p * self.L + l] for p in present]), None, None, rows)
                for l in range(self.L)]

    def groups(self, p: int) -> dict[str, list[nn.Parameter]]:
        return {"adapter": [t for l in range(self.L) for t in (self.a[p * self.L + l], self.b[p * self.L + l])]}

    def adapter(self, p: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        return ([self.a[p * self.L + l].detach() for l in range(self.L)],
                [self.b[p * self.L + l].detach() for l in range(self.L)])


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
        self.slot_cpu, self.hard_cpu = slot, [p.mask_kind == "hard" for p in profiles]  # indexed without a sync
        empty = torch.zeros(0, self.L, 2, self.n)
        self.register_buffer("bits", torch.from_numpy(np.stack([np.stack([profiles[i].mask_a, profiles[i].mask_b], 1)
                                                                 for i in hard])) if hard else empty.bool(),
                             persistent=False)
        self.register_buffer("k", torch.tensor([float(profiles[i].k) for i in hard]), persistent=False)
        soft_w = [soft_weights(torch.from_numpy(np.stack([np.asarray(profiles[i].mask_a, np.float32),
                                                          np.asarray(profiles[i].mask_b, np.float32)], 1)))
                  for i in soft]
        self.register_buffer("soft", torch.stack(soft_w) if soft else empty, persistent=False)
        self.has_ln = ln
        if ln:  # a profile stored without LN affine runs with the identity affine
            w = [p.ln_weight if p.ln_weight is not None else np.ones((self.L, self.rank), np.float32) for p in profiles]
            b = [p.ln_bias if p.ln_bias is not None else np.zeros((self.L, self.rank), np.float32) for p in profiles]
            self.register_buffer("ln_w", torch.from_numpy(np.stack(w)), persistent=False)
            self.register_buffer("ln_b", torch.from_numpy(np.stack(b)), persistent=False)

    def weights(self, present: list[int]) -> torch.Tensor:
        """(U, L, 2, N) mixing weights of the profiles `present`."""
        dev = self.bits.device
        hard = [self.hard_cpu[i] for i in present]
        slots = self.slot_cpu[present]
        if all(hard):
            s = slots.to(dev, non_blocking=True)
            return self.bits[s].float() / self.k[s].view(-1, 1, 1, 1)
        if not any(hard):
            return self.soft[slots.to(dev, non_blocking=True)]
        h = torch.tensor(hard)
        w = torch.empty(len(present), self.L, 2, self.n, device=dev)
        hs = slots[h].to(dev)
        w[h.to(dev)] = self.bits[hs].float() / self.k[hs].view(-1, 1, 1, 1)
        w[(~h).to(dev)] = self.soft[slots[~h].to(dev)]
        return w

    def routes(self, present: list[int], rows: torch.Tensor) -> list[Route]:
        w = self.weights(present)
        if self.has_ln:  # one gather for every site
            idx = torch.tensor(present).to(self.bits.device, non_blocking=True)
            ln_w, ln_b = self.ln_w[idx], self.ln_b[idx]
        out = []
        for l in range(self.L):
            a_hat, b_hat = self.mix(l, w[:, l, 0], w[:, l, 1])
            ln = (ln_w[:, l], ln_b[:, l]) if self.has_ln else (None, None)
            out.append(Route(a_hat, b_hat, *ln, rows))
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

    @classmethod
    def frozen(cls, weights: list[np.ndarray], biases: list[np.ndarray]) -> "HeadTable":
        """Stored heads; narrower heads are padded with −inf biases so they never win an argmax."""
        c = max(w.shape[0] for w in weights)
        t = cls(weights[0].shape[1], c, len(weights))
        with torch.no_grad():
            for i, (w, b) in enumerate(zip(weights, biases)):
                t.weight[i].zero_()
                t.weight[i][: w.shape[0]].copy_(torch.from_numpy(np.asarray(w, np.float32)))
                t.bias[i].fill_(-math.inf)
                t.bias[i][: b.shape[0]].copy_(torch.from_numpy(np.asarray(b, np.float32)))
        return t.requires_grad_(False)

    def forward(self, pooled: torch.Tensor, present: list[int], rows: torch.Tensor) -> torch.Tensor:
        if self.shared or len(present) == 1:
            i = 0 if self.shared else present[0]
            return F.linear(pooled, self.weight[i].to(pooled.dtype), self.bias[i].to(pooled.dtype))
        w = torch.stack([self.weight[p] for p in present])[rows].to(pooled.dtype)
        b = torch.stack([self.bias[p] for p in present])[rows].to(pooled.dtype)
        return torch.einsum("bd,bcd->bc", pooled, w) + b

    def groups(self, p: int) -> dict[str, list[nn.Parameter]]:
        return {} if self.shared else {"head": [self.weight[p], self.bias[p]]}


class RoutedModel(nn.Module):
    """A frozen encoder whose sites are RoutedLinear, a table of profiles, and their heads.

    forward(..., profile_ids) runs each row with its own profile; `table=None` is head-only.
    """

    def __init__(self, encoder: nn.Module, site_names: list[str], rank: int, table: nn.Module | None,
                 heads: HeadTable, task: str, ln: bool = False, ln_eps: float = 1e-5, scale: float = 1.0):
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
        if self.table is not None:
            for site, route in zip(self.sites, self.table.routes(present, rows)):
                site.route = route
        try:
            kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
            if token_type_ids is not None:
                kwargs["token_type_ids"] = token_type_ids
            pooled = mean_pool(self.encoder(**kwargs).last_hidden_state, attention_mask)
        finally:
            for site in self.sites:
                site.route = None
        out = self.heads(pooled, present, rows)
        return out.squeeze(-1) if self.task == TASK_REGRESSION else out

    def profile_groups(self, p: int) -> dict[str, list[nn.Parameter]]:
        """The parameter tensors that belong to profile p alone, by learning-rate group."""
        groups = dict(self.table.groups(p)) if self.table is not None and hasattr(self.table, "groups") else {}
        groups.update(self.heads.groups(p))
        return groups
