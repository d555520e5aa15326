"""The shape of the code: imports flow one way, down the layers that docs/architecture.md lists.

Every import under src/imagegate counts, including those inside functions and under TYPE_CHECKING.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"
PACKAGE = SRC / "imagegate"
ARCHITECTURE = Path(__file__).resolve().parent.parent / "docs" / "architecture.md"
_ROW = re.compile(r"^\|\s*(\d+)\s*\|[^|]*\|([^|]+)\|")


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in PACKAGE.rglob("*.py")}


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The modules of the package that `name` imports (a `from x import y` of a submodule counts as y)."""
    found: set[str] = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            targets = [f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in known] or [base]
        else:
            continue
        for target in targets:
            found |= {parent for parent in _packages_run_by(target, name) if parent in known}
    return found


def _packages_run_by(target: str, importer: str) -> list[str]:
    """`target` and the packages above it whose `__init__` importing it runs, less the importer's own
    packages (already running when it imports)."""
    parts = target.split(".")
    chain = [".".join(parts[:depth]) for depth in range(2, len(parts) + 1)]
    own = {".".join(importer.split(".")[:depth]) for depth in range(1, importer.count(".") + 2)}
    return [module for module in chain if module != importer and module not in own]


def graph() -> dict[str, set[str]]:
    found = modules()
    return {name: imports_of(name, path, set(found)) for name, path in found.items()}


def layers() -> list[tuple[int, list[str]]]:
    """(rank, module prefixes) from the layer table of docs/architecture.md."""
    rows = []
    for line in ARCHITECTURE.read_text().splitlines():
        if match := _ROW.match(line):
            names = [name.strip(" `") for name in match.group(2).split(",")]
            rows.append((int(match.group(1)), [f"imagegate.{n}" if n != "imagegate" else n for n in names if n]))
    return rows


def rank_of(module: str, table: list[tuple[int, list[str]]]) -> int | None:
    best: tuple[int, int] | None = None
    for rank, prefixes in table:
        for prefix in prefixes:
            # the package itself (`imagegate`: its __init__) holds no modules beneath it
            holds = module == prefix or (prefix != "imagegate" and module.startswith(prefix + "."))
            if holds and (best is None or len(prefix) > best[0]):
                best = (len(prefix), rank)
    return best[1] if best else None


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in edges.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                item = stack.pop()
                on_stack.discard(item)
                component.append(item)
                if item == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_no_module_imports_itself_back() -> None:
    assert cycles(graph()) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_every_module_has_a_layer_and_imports_only_its_own_or_lower_ones() -> None:
    table = layers()
    assert len(table) >= 8, "docs/architecture.md lost its layer table"
    edges = graph()
    unplaced = sorted(name for name in edges if rank_of(name, table) is None)
    assert unplaced == [], "modules docs/architecture.md does not place in a layer"
    upward = [
        f"{source} -> {target}"
        for source, targets in edges.items()
        for target in sorted(targets)
        if (rank_of(target, table) or 0) > (rank_of(source, table) or 0)
    ]
    assert upward == [], "imports against the documented direction"


def test_every_import_is_one_the_parser_sees() -> None:
    dynamic = [
        f"{path.relative_to(SRC)}: {needle}"
        for path in PACKAGE.rglob("*.py")
        for needle in ("import_module(", "__import__(")
        if needle in path.read_text()
    ]
    assert dynamic == [], "a string import hides an edge from these tests"


def test_an_unplaced_module_is_found() -> None:
    table = layers()
    assert rank_of("imagegate", table) == 1 and rank_of("imagegate.newthing", table) is None


def test_dialects_engines_and_the_operator_api_keep_to_themselves() -> None:
    def owner(module: str, depth: int) -> str:
        return ".".join(module.split(".")[:depth])

    crossings = []
    for source, targets in graph().items():
        for target in targets:
            if source.startswith("imagegate.dialects.") and target.startswith("imagegate.engines"):
                crossings.append(f"a dialect reaches an engine: {source} -> {target}")
            if source.startswith("imagegate.engines") and target.startswith("imagegate.dialects"):
                crossings.append(f"an engine reaches a dialect: {source} -> {target}")
            same_kind = source.startswith("imagegate.dialects.") and target.startswith("imagegate.dialects.")
            if same_kind and owner(source, 3) != owner(target, 3):
                crossings.append(f"one dialect reaches another: {source} -> {target}")
            if source.startswith("imagegate.api") and target.startswith("imagegate.dialects"):
                crossings.append(f"the operator API reaches a dialect: {source} -> {target}")
    assert crossings == []
