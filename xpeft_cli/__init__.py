"""xpeft: X-PEFT (arXiv 2401.16137) profiles over a shared bank of LoRA adapters.

The library core is importable without the command line:

    from xpeft_cli import Bank, fit_profile, read_xpm, write_xpm, evaluate_profile
"""

from __future__ import annotations

__version__ = "0.1.0"

# Where each public name lives; imported on first use (PEP 562), so that the command line can start
# without importing torch (xpeft --help, shell completion) while `from xpeft_cli import Bank` still works.
_EXPORTS = {
    "Bank": "bank",
    "SiteConfig": "bank",
    "Columns": "data",
    "Examples": "data",
    "load_examples": "data",
    "DataError": "errors",
    "IntegrityError": "errors",
    "ModelNotFoundError": "errors",
    "UsageError": "errors",
    "XpeftError": "errors",
    "evaluate_profile": "evaluate",
    "model_for_profile": "evaluate",
    "predict_profile": "evaluate",
    "MaskSpec": "masks",
    "XPeftModel": "model",
    "XPeftConfig": "peft_api",
    "XPeftModelForSequenceClassification": "peft_api",
    "get_xpeft_model": "peft_api",
    "xpeft_optimizer": "peft_api",
    "XPeftTrainer": "hf_trainer",
    "load_exported": "export",
    "resolve_model": "plm",
    "load_encoder": "plm",
    "Profile": "profile",
    "apply_profile": "profile",
    "profile_from_model": "profile",
    "FitConfig": "config",
    "FitResult": "train",
    "fit_profile": "train",
    "decode": "xpm",
    "encode": "xpm",
    "read_xpm": "xpm",
    "read_xpm_full": "xpm",
    "write_xpm": "xpm",
}


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "XPeftConfig",
    "XPeftModelForSequenceClassification",
    "get_xpeft_model",
    "xpeft_optimizer",
    "XPeftTrainer",
    "load_exported",
    "Bank",
    "SiteConfig",
    "Columns",
    "Examples",
    "load_examples",
    "DataError",
    "IntegrityError",
    "ModelNotFoundError",
    "UsageError",
    "XpeftError",
    "evaluate_profile",
    "model_for_profile",
    "predict_profile",
    "MaskSpec",
    "XPeftModel",
    "resolve_model",
    "load_encoder",
    "Profile",
    "apply_profile",
    "profile_from_model",
    "FitConfig",
    "FitResult",
    "fit_profile",
    "decode",
    "encode",
    "read_xpm",
    "read_xpm_full",
    "write_xpm",
    "__version__",
]
