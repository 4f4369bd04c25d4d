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
