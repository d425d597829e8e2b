"""Line counts and import arrows (which module imports which) of the project's packages, and
the import cycles among them.

    python -m scripts.import_arrows [core sweeps analysis]

Prints `wc -l`-style counts per package, then one line per module: `a -> b, c` (imports of
other modules of those packages, at any depth of the file, imports inside functions marked
with `*`), then every import cycle. An import inside a function is an arrow like any other: a
cycle through one is still a cycle (tests/test_house.py holds the project to none).
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("core", "sweeps", "analysis")


def module_name(path: Path) -> str:
  """core/models/unet.py -> core.models.unet; a package's __init__.py -> the package."""
  parts = path.relative_to(ROOT).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, known: set[str]) -> dict[str, bool]:
  """Imported known modules -> True if only imported inside a function. `from pkg import m`
  names the module pkg.m where that is one, else pkg."""
  tree = ast.parse(path.read_text())
  found: dict[str, bool] = {}

  def visit(node: ast.AST, lazy: bool) -> None:
    for child in ast.iter_child_nodes(node):
      inner = lazy or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
      names: list[str] = []
      if isinstance(child, ast.Import):
        names = [a.name for a in child.names]
      elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
        subs = [f"{child.module}.{a.name}" for a in child.names]
        names = [n for n in subs if n in known] or [child.module]
      for n in names:
        if n in known:
          found[n] = found.get(n, True) and inner
      visit(child, inner)

  visit(tree, False)
  found.pop(module_name(path), None)
  return found


def files(packages=PACKAGES) -> list[Path]:
  return sorted(p for pkg in packages for p in (ROOT / pkg).rglob("*.py"))


def graph(packages=PACKAGES) -> dict[str, dict[str, bool]]:
  """module -> {imported module: only inside functions}, over every file of the packages."""
  fs = files(packages)
  known = {module_name(p) for p in fs}
  return {module_name(p): imports_of(p, known) for p in fs}


def cycles(g: dict[str, dict]) -> list[list[str]]:
  """The strongly connected components of more than one module (Tarjan): each is a set of
  modules that import each other around a loop, at any level."""
  index: dict[str, int] = {}
  low: dict[str, int] = {}
  stack: list[str] = []
  out: list[list[str]] = []

  def visit(v: str) -> None:
    index[v] = low[v] = len(index)
    stack.append(v)
    for w in g.get(v, ()):
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      comp = []
      while True:
        w = stack.pop()
        comp.append(w)
        if w == v:
          break
      if len(comp) > 1:
        out.append(sorted(comp))

  for v in sorted(g):
    if v not in index:
      visit(v)
  return out


def folders(g: dict[str, dict], depth: int) -> dict[str, dict]:
  """The graph with every module folded into its folder `depth` names deep (core.data.sources
  -> core.data at depth 2; a module of a shallower folder keeps its name): a cycle here is two
  folders importing each other though no two modules do."""
  fold = lambda m: ".".join(m.split(".")[:depth])
  out: dict[str, dict] = {}
  for m, deps in g.items():
    arrows = out.setdefault(fold(m), {})
    for d, lazy in deps.items():
      if fold(d) != fold(m):
        arrows[fold(d)] = arrows.get(fold(d), True) and lazy
  return out


def all_cycles(g: dict[str, dict]) -> list[list[str]]:
  """The cycles among modules, and among folders at every depth."""
  depth = max(len(m.split(".")) for m in g)
  return cycles(g) + [c for k in range(1, depth) for c in cycles(folders(g, k))]


def main(packages: list[str]) -> None:
  fs = files(packages)
  for pkg in packages:
    mine = [p for p in fs if p.relative_to(ROOT).parts[0] == pkg]
    counts = {str(p.relative_to(ROOT / pkg)): len(p.read_text().splitlines()) for p in mine}
    print(f"{pkg}/: {sum(counts.values())} lines, {len(mine)} modules")
    for name, n in counts.items():
      print(f"  {n:5d} {name}")
  g = graph(packages)
  print("import arrows (* = only inside functions):")
  for m, deps in g.items():
    print(f"  {m} -> {', '.join(d + ('*' if deps[d] else '') for d in sorted(deps)) or '-'}")
  cyc = all_cycles(g)
  print("import cycles (modules, then folders): " + ("; ".join(" <-> ".join(c) for c in cyc) if cyc else "none"))


if __name__ == "__main__":
  main(sys.argv[1:] or list(PACKAGES))
