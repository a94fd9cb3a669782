"""The shape of src/ip2p, checked from its source: imports point one way (no circle, lazy imports
inside functions included), no module imports another's _private name, and library modules hold
no argparse (that is cli/'s job)."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "ip2p"


def _module_name(path: Path) -> str:
    parts = ["ip2p", *path.relative_to(SRC).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in SRC.rglob("*.py")}


def _imports(name: str, path: Path):
    """(imported module, imported names) for every import statement in the module, at any depth."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, []
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            yield target, [a.name for a in node.names]


def _edges() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {name: set() for name in MODULES}
    for name, path in MODULES.items():
        for target, names in _imports(name, path):
            if not target.startswith("ip2p"):
                continue
            for imported in names:  # `from . import x` where x is a module
                if f"{target}.{imported}" in MODULES:
                    edges[name].add(f"{target}.{imported}")
            if target in MODULES and not all(f"{target}.{n}" in MODULES for n in names or ["?"]):
                edges[name].add(target)
    for name in edges:
        edges[name].discard(name)
    return edges


def test_src_has_no_import_circle():
    edges = _edges()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt):] + [nxt]
                raise AssertionError("import circle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)


def test_no_module_imports_another_modules_private_names():
    offenders = []
    for name, path in MODULES.items():
        for target, names in _imports(name, path):
            if target.startswith("ip2p") and target != name:
                offenders += [f"{name} imports {target}.{n}" for n in names if n.startswith("_") and n != "__version__"]
    assert not offenders, offenders


def test_only_cli_uses_argparse():
    users = sorted(name for name, path in MODULES.items()
                   if not name.startswith("ip2p.cli") and "argparse" in {t for t, _ in _imports(name, path)})
    assert not users, f"argparse outside ip2p.cli: {users}"
