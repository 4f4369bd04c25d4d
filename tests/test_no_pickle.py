"""No pickle anywhere: profiles, banks and checkpoints are safetensors and JSON only."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted(p for d in ("xpeft_cli", "benchmarks", "examples", "formats") for p in (ROOT / d).rglob("*.py"))


def test_sources_found():
    assert len(SOURCES) > 15


def test_no_pickle_imports_or_unguarded_loads():
    offenders = []
    for path in SOURCES:
        text = path.read_text(encoding="utf-8")
        if re.search(r"^\s*(import|from)\s+(c?pickle|dill|joblib|shelve)\b", text, re.M):
            offenders.append(f"{path.name}: imports a pickle module")
        for m in re.finditer(r"torch\.load\(([^)]*)\)", text):
            if "weights_only=True" not in m.group(1):
                offenders.append(f"{path.name}: torch.load without weights_only=True")
        if re.search(r"allow_pickle\s*=\s*True", text) or re.search(r"np\.load\((?![^)]*allow_pickle=False)", text):
            offenders.append(f"{path.name}: numpy load that may unpickle")
    assert not offenders, offenders
