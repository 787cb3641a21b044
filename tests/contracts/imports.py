"""Which `system/` modules a stand-in uses, directly or through the simulator modules it imports."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).parents[2]
# Of `system/`, a stand-in may use the clock (its type and waits), nothing that decides a protocol fact: phone
# normalisation, Retry-After parsing, signatures, the client's constants are written again from the vendor's docs.
ALLOWED = frozenset({"system.clock"})


def system_imports(path: str) -> dict[str, set[str]]:
    """`system.*` module → the stand-in files importing it, following `simulator.*` imports from `path` on."""
    found: dict[str, set[str]] = {}
    seen: set[str] = set()
    todo = [path]
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        tree = ast.parse((ROOT / current).read_text(encoding="utf-8"))
        for name in filter(_is_module, _imported(tree)):
            top = name.split(".")[0]
            if top == "system":
                found.setdefault(name, set()).add(current)
            elif top == "simulator" and name != "simulator":
                todo.append(name.replace(".", "/") + ".py")
    return found


def _is_module(name: str) -> bool:
    """A module or package of this repository (`from system.clock import Clock` also yields `system.clock.Clock`)."""
    path = ROOT / name.replace(".", "/")
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _imported(tree: ast.Module) -> set[str]:
    """Every module named by an import; `from package import module` names `package.module` too."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def forbidden(path: str) -> dict[str, set[str]]:
    """The `system/` imports of `path` (and its simulator modules) that are not allowed in a stand-in."""
    return {name: files for name, files in system_imports(path).items() if name not in ALLOWED}
