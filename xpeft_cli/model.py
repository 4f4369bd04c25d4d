"""Model wiring: put XPeftLinear sites into a frozen Hugging Face encoder and add a head.

Works on any encoder whose target Linear modules are found by name (BERT, RoBERTa,
DistilBERT, …). The head reads the mean of the last hidden states over real tokens.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .bank import Bank, stack_by_shape
from .config import TASK_CLASSIFICATION, TASK_REGRESSION  # noqa: F401  (defined torch-free, re-exported)
from .layer import XPeftLinear
from .masks import MaskSpec, initial_logits, mask_choice
from .mixing import mix


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The mean of the hidden states over real (unmasked) tokens: what every head reads."""
    m = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)


def _set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, module)


class EncoderClassifier(nn.Module):
    """A frozen encoder, a head on the mean of its last hidden states over real tokens."""

    def __init__(self, encoder: nn.Module, num_outputs: int, task: str = TASK_CLASSIFICATION, seed: int = 0):
        super().__init__()
        self.encoder = encoder
        self.task = task
        self.checkpointing = False  # gradient_checkpointing(): activations recomputed in the backward pass
        for p in encoder.parameters():
            p.requires_grad_(False)
        config: Any = encoder.config
        hidden = int(config.hidden_size if hasattr(config, "hidden_size") else config.dim)
        self.head = nn.Linear(hidden, num_outputs)
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            self.head.weight.copy_(torch.randn(self.head.weight.shape, generator=g) * 0.02)
            self.head.bias.zero_()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids=None) -> torch.Tensor:
        kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids
        out = self.head(mean_pool(self.encoder(**kwargs).last_hidden_state, attention_mask))
        return out.squeeze(-1) if self.task == TASK_REGRESSION else out

    def head_parameters(self) -> list[nn.Parameter]:
        return list(self.head.parameters())

    def gradient_checkpointing(self) -> None:
        """Recompute each block's activations in the backward pass instead of keeping them:
        less peak memory for long sequences, at the price of a second forward through the blocks."""
        if not getattr(self.encoder, "supports_gradient_checkpointing", False):
            raise ValueError(f"{type(self.encoder).__name__} does not support gradient checkpointing")
        encoder: Any = self.encoder  # a transformers PreTrainedModel
        if hasattr(encoder, "activation_checkpointing_enable"):  # transformers ≥ 5.x's name
            encoder.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            encoder.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.checkpointing = True

    def use_shared_head(self, shared) -> None:
        """Take a bank's shared head (bank.SharedHead), frozen: profiles then own no head."""
        w = shared.weight
        self.head = nn.Linear(w.shape[1], w.shape[0]).to(self.head.weight.device)
        with torch.no_grad():
            self.head.weight.copy_(w)
            self.head.bias.copy_(shared.bias)
        self.head.requires_grad_(False)
        self.task = shared.task


class XPeftModel(EncoderClassifier):
    """encoder (frozen) + bank (frozen, shared) + masks, LN and head (the profile)."""

    def __init__(
        self,
        encoder: nn.Module,
        bank: Bank,
        num_outputs: int,
        task: str = TASK_CLASSIFICATION,
        spec: MaskSpec | None = None,
        seed: int = 0,
        ln_init: float = 1.0,
        out_vector: bool = False,
    ):
        super().__init__(encoder, num_outputs, task, seed)
        self.bank_hash = bank.bank_hash
        self.spec = spec or MaskSpec()
        if self.spec.kind == "hard" and not 1 <= self.spec.k <= bank.n:
            raise ValueError(f"k must be in 1..{bank.n}")
        self.sites: list[XPeftLinear] = []  # a plain list: the layers already live inside encoder
        # cast_bank: every site's bank stacked as one (L, N, ·) tensor pair when the sites share a shape
        self.stacked_bank: tuple[torch.Tensor, torch.Tensor] | None = None
        for site, a, b in zip(bank.sites, bank.A, bank.B):
            base = encoder.get_submodule(site.name)
            if isinstance(base, XPeftLinear):
                raise ValueError(f"{site.name} already holds an X-PEFT site: wrap a freshly loaded encoder")
            if not isinstance(base, nn.Linear):
                raise ValueError(f"{site.name} is not an nn.Linear in this model")
            layer = XPeftLinear(
                base,
                a,
                b,
                self.spec,
                ln=bank.config.ln,
                ln_eps=bank.config.ln_eps,
                scale=bank.config.scale,
                out_vector=out_vector,
            )
            if layer.ln is not None and ln_init != 1.0:  # LN's γ at start (0: the site starts as the PLM's own)
                with torch.no_grad():
                    layer.ln.weight.fill_(ln_init)
            _set_submodule(encoder, site.name, layer)
            self.sites.append(layer)
        self._init_logits(seed)

    def _init_logits(self, seed: int) -> None:
        """The mask logits' start (masks.initial_logits): 0 for hard/soft, seeded for sign/linear."""
        if self.spec.kind not in ("sign", "linear"):
            return
        la, lb = initial_logits(self.spec.kind, len(self.sites), self.sites[0].logits_a.numel(), seed)
        with torch.no_grad():
            for l, s in enumerate(self.sites):
                s.logits_a.copy_(la[l])
                s.logits_b.copy_(lb[l])

    # ---- profile parameters ---------------------------------------------------------
    def mask_logits(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(M_A, M_B) logits, each L×N."""
        return (torch.stack([s.logits_a for s in self.sites]), torch.stack([s.logits_b for s in self.sites]))

    def invalidate(self) -> None:
        for s in self.sites:
            s.invalidate()

    def cast_bank(self, dtype: torch.dtype) -> "XPeftModel":
        """Keep the shared bank in the compute dtype (e.g. bf16 on a GPU), stacked over sites.

        Under autocast a float32 bank would be cast again at every step: a full read and
        write of every adapter, which costs more than the mixing itself. Where every site has
        the same shape the bank is stored as one (L, N, d_in·b) tensor (the sites keep views
        of it), so that one batched matmul mixes every site: a step then launches a handful of
        mixing kernels instead of a dozen per site, which is what the per-step cost was made of.
        """
        if len({(tuple(s.bank_a.shape), tuple(s.bank_b.shape)) for s in self.sites}) == 1:
            ((_, a, b),) = stack_by_shape([s.bank_a for s in self.sites], [s.bank_b for s in self.sites], dtype)
            self.stacked_bank = (a, b)
            for l, s in enumerate(self.sites):
                s.bank_a, s.bank_b = self.stacked_bank[0][l], self.stacked_bank[1][l]
                s.invalidate()
            return self
        for s in self.sites:
            s.bank_a = s.bank_a.to(dtype)
            s.bank_b = s.bank_b.to(dtype)
            s.invalidate()
        return self

    def _mix_all_sites(self) -> None:
        """Every site's (Â, B̂) for this forward: one mask computation and two mixes for all sites.

        The Gumbel noise is drawn as one (L, 2, N) tensor: site by site, A then B, the order in
        which the sites draw it one by one.
        """
        assert self.stacked_bank is not None  # forward() calls this only then
        bank_a, bank_b = self.stacked_bank
        both = torch.stack([t for s in self.sites for t in (s.logits_a, s.logits_b)])  # one copy, not L + 1
        both = both.view(len(self.sites), 2, -1)  # (L, 2, N)
        w, chosen = mask_choice(both, self.spec, self.training)
        L, n = bank_a.shape[:2]

        def half(t, i):  # the A (i = 0) or B (i = 1) rows, (L, 1, ·)
            return None if t is None else t[:, i : i + 1]

        a_hat = mix(bank_a.reshape(L, n, -1), half(w, 0), half(chosen, 0)).view(L, *bank_a.shape[2:])
        b_hat = mix(bank_b.reshape(L, n, -1), half(w, 1), half(chosen, 1)).view(L, *bank_b.shape[2:])
        for s, a, b in zip(self.sites, a_hat.unbind(0), b_hat.unbind(0)):
            s.give_mixed(a, b)

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        cached = not self.training and not torch.is_grad_enabled() and self.sites and self.sites[0].has_cached_mix()
        keep = self.checkpointing
        if not cached:
            if self.stacked_bank is not None:
                self._mix_all_sites()
            elif keep:  # the recomputation must see the same (Â, B̂), not a new Gumbel draw
                for s in self.sites:
                    s.take_back_mixed()
                    s.give_mixed(*s.mixed())
        try:
            return super().forward(input_ids, attention_mask, token_type_ids)
        finally:
            if not keep:  # with checkpointing the backward pass re-runs the sites and still needs them
                for s in self.sites:
                    s.take_back_mixed()

    def mask_parameters(self) -> list[nn.Parameter]:
        return [p for s in self.sites for p in (s.logits_a, s.logits_b)]

    def ln_parameters(self) -> list[nn.Parameter]:
        return [p for s in self.sites if s.ln is not None for p in s.ln.parameters()]

    def out_parameters(self) -> list[nn.Parameter]:
        return [s.out_scale for s in self.sites if s.out_scale is not None]

    def trainable_parameter_count(self) -> int:
        return sum(p.numel() for p in self.mask_parameters() + self.ln_parameters() + self.out_parameters())
