"""xpeft: X-PEFT (arXiv 2401.16137) profiles over a shared bank of LoRA adapters.

The library core is importable without the command line:

    from xpeft_cli import Bank, fit_profile, read_xpm, write_xpm, evaluate_profile
"""
from __future__ import annotations

__version__ = "0.1.0"

from .bank import Bank, SiteConfig
from .data import Columns, Examples, load_examples
from .errors import DataError, IntegrityError, ModelNotFoundError, UsageError, XpeftError
from .evaluate import evaluate_profile, model_for_profile, predict_profile
from .masks import MaskSpec
from .model import XPeftModel
from .plm import resolve_model, load_encoder
from .profile import Profile, apply_profile, profile_from_model
from .train import FitConfig, FitResult, fit_profile
from .xpm import decode, encode, read_xpm, read_xpm_full, write_xpm

__all__ = [
    "Bank", "SiteConfig", "Columns", "Examples", "load_examples", "DataError", "IntegrityError",
    "ModelNotFoundError", "UsageError", "XpeftError", "evaluate_profile", "model_for_profile",
    "predict_profile", "MaskSpec", "XPeftModel", "resolve_model", "load_encoder", "Profile",
    "apply_profile", "profile_from_model", "FitConfig", "FitResult", "fit_profile", "decode", "encode",
    "read_xpm", "read_xpm_full", "write_xpm", "__version__",
]
