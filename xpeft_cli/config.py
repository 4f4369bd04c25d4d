"""Settings and constants the command line needs before any model code: importing this module
(or `xpeft_cli.cli.app`) must not import torch, so that `xpeft --help` and shell completion answer
at once. train.py, masks.py, baselines.py, serve.py and service.py re-export what they define here.
"""

from __future__ import annotations

from dataclasses import dataclass

KINDS = ("hard", "soft", "sign", "linear")  # mask kinds a fit can train
STORED_KINDS = ("sign", "hard", "soft")  # the kinds an .xpm holds (linear masks were measured, not kept)
METHODS = ("x-peft", "single-adapter", "head-only")  # what `fit --method` trains
TASK_CLASSIFICATION, TASK_REGRESSION = "classification", "regression"  # what a head predicts
ENV_BANK = "XPEFT_BANK"
MANIFEST = "bank.json"
DEFAULT_CACHE_GB = 4.0  # bert-base, N=400: ~1.8 MB a profile in bf16, so ~2,300 profiles; MiniLM ~9,000 (fp32)
MAX_TEXT_CHARS = 20_000  # serve: text + text_pair per request row; the model reads at most max_length tokens anyway


# LR warm-up share when none is given, by method. X-PEFT: 0.06, measured at 3 seeds with the CLI's other
# defaults: GLUE rte/mrpc/stsb/cola 0.608 ± 0.005 against 0.600 ± 0.005 without (rte 0.555 against
# 0.534, the majority class), News' 43 new authors 0.763 ± 0.004 against 0.757 ± 0.009
# (benchmarks/README.md, "What a user gets without tuning"). Baselines keep the plain linear decay.
DEFAULT_WARMUP = {"x-peft": 0.06}


@dataclass
class FitConfig:
    method: str = "x-peft"  # x-peft | single-adapter | head-only
    mask: str = "sign"  # measured best at a few KB per profile (benchmarks/README.md); hard is the paper's
    k: int = 50
    epochs: int = 10
    batch_size: int = 16
    lr_masks: float = 5e-2
    lr_ln: float = 1e-2
    lr_head: float = 3e-3
    lr_adapter: float = 1e-3  # single-adapter: the LoRA matrices
    nu: float = 0.3  # measured: benchmarks/results/lr_sweep*.md
    tau: float = 1.0
    seed: int = 0
    max_length: int = 128
    val_fraction: float = 0.1
    task: str = "auto"  # auto | classification | regression
    device: str = "auto"
    labels: list[str] | None = None  # the class names, in order (default: those in the data, sorted)
    head: str = "auto"  # auto: reuse the bank's shared head if it has one (not stored) | own
    gradient_checkpointing: bool = False  # recompute activations in backward: less memory, ~1/3 more time
    precision: str = "auto"  # auto (bf16 autocast on a GPU, fp32 on CPU) | bf16 | fp32
    param_dtype: str = "float16"  # how the .xpm stores LN and head: float16 halves them at no measured cost
    cuda_graphs: bool = False  # capture each step as a CUDA graph (graphs.GraphedTrainStep)
    # Design knobs measured on the accuracy frontier (benchmarks/frontier.py); defaults keep the paper's site.
    ln_init: float = 1.0  # the bottleneck LN's γ at start (0: each site starts as the PLM's own)
    soft_warmup: float = 0.0  # hard masks: share of the steps over which the forward goes from soft to hard
    out_vector: bool = False  # a per-site output scaling vector (VeRA's b), zero at start, d_out floats per site
    lr_out: float = 1e-2  # its learning rate
    # share of the steps over which the LR rises linearly from 0 (then decays linearly); None: the
    # measured default of the method (DEFAULT_WARMUP; see lr_warmup)
    warmup: float | None = None
    clip_norm: float = 0.0  # clip the gradients' global norm to this (0: off); eager fits only
    mask_clip: float = (
        0.0  # sign/linear masks: keep the latent logits in [-c, c] (BinaryConnect), so a sign can still flip late
    )
    peer: str | None = None  # method "peft": a peft peer, e.g. "lora:r=4" (peers.py); library and benchmarks only

    def lr_warmup(self) -> float:
        """The warm-up share this fit uses: `warmup` when given, else the method's measured default."""
        return self.warmup if self.warmup is not None else DEFAULT_WARMUP.get(self.method, 0.0)

    def validate(self) -> "FitConfig":
        """Check the settings once, before any work (the CLI's option ranges catch most of this
        first; the library gets the same refusals). Raises UsageError; returns self."""
        import math

        from .errors import UsageError

        def need(ok: bool, message: str) -> None:
            if not ok:
                raise UsageError(message)

        need(
            self.method in METHODS or (self.method == "peft" and bool(self.peer)),
            f"--method must be one of {', '.join(METHODS)}",
        )
        need(self.mask in KINDS, f"--mask must be one of {', '.join(KINDS)}")
        need(
            self.task in ("auto", "classification", "regression"),
            "--task-type must be auto, classification or regression",
        )
        need(self.param_dtype in ("float16", "float32"), "--param-dtype must be float16 or float32")
        need(self.precision in ("auto", "bf16", "fp32"), "--precision must be one of auto, bf16, fp32")
        need(self.epochs >= 1 and self.batch_size >= 1, "--epochs and --batch-size must be at least 1")
        need(self.mask != "hard" or self.k >= 1, "--k must be at least 1")
        need(0.0 <= self.soft_warmup <= 1.0, "soft_warmup must be between 0 and 1")
        need(
            0.0 <= self.lr_warmup() < 1.0 and 0.0 <= self.clip_norm < math.inf and 0.0 <= self.mask_clip < math.inf,
            "warmup must be in [0, 1), clip_norm and mask_clip finite numbers ≥ 0",
        )
        need(0.0 <= self.val_fraction < 1.0, "--val-fraction must be in [0, 1)")
        need(
            all(
                math.isfinite(v) and v >= 0
                for v in (self.lr_masks, self.lr_ln, self.lr_head, self.lr_adapter, self.lr_out, self.nu)
            )
            and self.tau > 0,
            "learning rates and --nu must be finite and ≥ 0, --tau > 0",
        )
        need(
            not self.cuda_graphs
            or not (self.soft_warmup or self.out_vector or self.ln_init != 1.0 or self.clip_norm or self.mask_clip),
            "--cuda-graphs does not yet capture soft_warmup, out_vector, ln_init, clip_norm or mask_clip",
        )
        need(
            not self.cuda_graphs or not self.gradient_checkpointing,
            "--cuda-graphs runs single-process fits without --gradient-checkpointing",
        )
        return self
