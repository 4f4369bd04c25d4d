"""The peers a user would pick instead of X-PEFT, run through Hugging Face peft in xpeft's data path.

A peer is named by a short spec: `lora:r=4`, `vera:r=256`, `ia3`, `vblora:r=4,num_vectors=256,
vector_length=128,topk=2`, `bitfit` (the encoder's biases, no peft), `head` (the head alone). The
peft model wraps the frozen encoder inside the same EncoderClassifier (mean-pooled head) that
X-PEFT uses, so `train.fit_profile` trains every method with one loop, one schedule, one loss.

What a profile of a peer costs on disk is what peft itself saves for it (`get_peft_model_state_dict`,
which leaves out VeRA's regenerable projections and keeps only VB-LoRA's top-k), plus the head.
"""

from __future__ import annotations

import torch
from torch import nn

from .errors import UsageError
from .model import TASK_CLASSIFICATION, EncoderClassifier

KINDS = ("lora", "vera", "ia3", "vblora", "bitfit", "head")


def parse_spec(spec: str) -> tuple[str, dict]:
    """'vera:r=256' → ('vera', {'r': 256}); values are ints or floats where they parse."""
    kind, _, rest = spec.partition(":")
    if kind not in KINDS:
        raise UsageError(f"unknown peer {kind!r}; known: {', '.join(KINDS)}")
    opts: dict = {}
    for item in filter(None, rest.split(",")):
        key, sep, value = item.partition("=")
        if not sep:
            raise UsageError(f"peer option {item!r} is not key=value")
        for cast in (int, float):
            try:
                opts[key] = cast(value)
                break
            except ValueError:
                continue
        else:
            opts[key] = value
    return kind, opts


# IA3's targets where peft has no default for the architecture: key, value, feed-forward output.
IA3_TARGETS = {
    "mpnet": (["attn.k", "attn.v", "output.dense"], ["output.dense"]),
    "distilbert": (["k_lin", "v_lin", "lin2"], ["lin2"]),
}


def peft_config(kind: str, opts: dict, site_names: list[str], seed: int, model_type: str = ""):
    """The peft config of a peer on xpeft's sites (IA3 keeps peft's own targets for the architecture)."""
    import peft

    if kind == "lora":
        r = int(opts.get("r", 8))
        return peft.LoraConfig(r=r, lora_alpha=opts.get("alpha", r), lora_dropout=0.0, target_modules=site_names)
    if kind == "vera":
        return peft.VeraConfig(
            r=int(opts.get("r", 256)),
            target_modules=site_names,
            vera_dropout=0.0,
            projection_prng_key=seed,
            save_projection=False,
            d_initial=opts.get("d_initial", 0.1),
        )
    if kind == "ia3":
        if model_type in IA3_TARGETS:
            targets, ff = IA3_TARGETS[model_type]
            return peft.IA3Config(target_modules=targets, feedforward_modules=ff)
        return peft.IA3Config()  # peft's default targets: key, value and the feed-forward output
    if kind == "vblora":
        return peft.VBLoRAConfig(
            r=int(opts.get("r", 4)),
            target_modules=site_names,
            num_vectors=int(opts.get("num_vectors", 256)),
            vector_length=int(opts.get("vector_length", 128)),
            topk=int(opts.get("topk", 2)),
            vblora_dropout=0.0,
            save_only_topk_weights=True,
        )
    raise UsageError(f"peer {kind!r} is not a peft method")


class PeerModel(EncoderClassifier):
    """A frozen encoder with a peft peer (or BitFit's biases) and the mean-pooled head."""

    def __init__(
        self,
        encoder: nn.Module,
        spec: str,
        site_names: list[str],
        num_outputs: int,
        task: str = TASK_CLASSIFICATION,
        seed: int = 0,
    ):
        super().__init__(encoder, num_outputs, task, seed)
        self.spec = spec
        self.kind, self.opts = parse_spec(spec)
        if self.kind in ("lora", "vera", "ia3", "vblora"):
            import peft

            torch.manual_seed(seed)  # peft initialises the adapter weights from the global generator
            self.encoder = peft.get_peft_model(
                self.encoder,
                peft_config(self.kind, self.opts, site_names, seed, getattr(encoder.config, "model_type", "")),
            )
        elif self.kind == "bitfit":
            for name, p in self.encoder.named_parameters():
                p.requires_grad_(name.endswith(".bias"))

    def adapter_named_parameters(self) -> list[tuple[str, nn.Parameter]]:
        return [(n, p) for n, p in self.encoder.named_parameters() if p.requires_grad]

    def parameter_groups(self, lr: float, lr_head: float) -> list[dict]:
        named = self.adapter_named_parameters()
        if self.kind == "vblora":  # as in VB-LoRA: the shared vector bank learns 10× slower than the logits
            bank = [p for n, p in named if "vector_bank" in n]
            rest = [p for n, p in named if "vector_bank" not in n]
            groups = [{"params": rest, "lr": lr}, {"params": bank, "lr": lr / 10}]
        else:
            groups = [{"params": [p for _, p in named], "lr": lr}]
        return groups + [{"params": self.head_parameters(), "lr": lr_head}]

    def tensors(self) -> dict[str, torch.Tensor]:
        """What one profile of this peer stores: peft's saved state (or the biases) and the head."""
        if self.kind in ("lora", "vera", "ia3", "vblora"):
            from peft import get_peft_model_state_dict

            out = dict(get_peft_model_state_dict(self.encoder))
        else:
            out = {n: p for n, p in self.adapter_named_parameters()}
        out = {k: v.detach().float().cpu().contiguous() for k, v in out.items()}
        out["head.weight"] = self.head.weight.detach().float().cpu().contiguous()
        out["head.bias"] = self.head.bias.detach().float().cpu().contiguous()
        return out

    def trainable_parameter_count(self) -> int:
        return sum(p.numel() for _, p in self.adapter_named_parameters())


def profile_bytes(tensors: dict[str, torch.Tensor]) -> int:
    """Bytes of the tensors as one safetensors file, as a profile of the peer would be kept on disk."""
    from safetensors.torch import save

    return len(save(tensors))
