"""Line counts and import arrows (which module imports which) within core/ and sweeps/.

    python scripts/import_arrows.py [core sweeps]

Prints `wc -l`-style counts per package, then one line per module:
`a -> b, c` (imports of other modules in the same packages, at any depth of the file,
lazy imports inside functions marked with `*`). Used for issue 13 item 5's note.
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts)


def imports_of(path: Path, known: set[str]) -> dict[str, bool]:
    """Imported known modules -> True if only imported lazily (inside a function)."""
    tree = ast.parse(path.read_text())
    found: dict[str, bool] = {}

    def visit(node: ast.AST, lazy: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = lazy or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            names: list[str] = []
            if isinstance(child, ast.Import):
                names = [a.name for a in child.names]
            elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                names = [child.module] + [f"{child.module}.{a.name}" for a in child.names]
            for n in names:
                if n in known:
                    found[n] = found.get(n, True) and inner
            visit(child, inner)

    visit(tree, False)
    found.pop(module_name(path), None)
    return found


def main(packages: list[str]) -> None:
    files = sorted(p for pkg in packages for p in (ROOT / pkg).glob("*.py")
                   if p.name != "__init__.py")
    known = {module_name(p) for p in files}
    for pkg in packages:
        mine = [p for p in files if p.parent.name == pkg]
        counts = {p.name: len(p.read_text().splitlines()) for p in mine}
        print(f"{pkg}/: {sum(counts.values())} lines, {len(mine)} modules")
        for name, n in counts.items():
            print(f"  {n:5d} {name}")
    print("import arrows (* = only inside functions):")
    for p in files:
        deps = imports_of(p, known)
        arrows = ", ".join(d.split(".", 1)[1] if d.split(".")[0] == p.parent.name else d
                           for d in sorted(deps) for d in [d + ("*" if deps[d] else "")])
        print(f"  {module_name(p)} -> {arrows or '-'}")


if __name__ == "__main__":
    main(sys.argv[1:] or ["core", "sweeps"])
