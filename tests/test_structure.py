"""The package's import structure: no import circle between wsseg_fast modules, the low
layers import nothing above them, and no function-local import of wsseg_fast code (the ops
package's lazy loading is the one place that defers imports of the package's own modules)."""

from __future__ import annotations

import ast
import fnmatch
import re
from pathlib import Path

import wsseg_fast

PACKAGE = Path(wsseg_fast.__file__).resolve().parent


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(["wsseg_fast", *parts])] = path
    return found


MODULES = _modules()


def _module_level_imports(tree: ast.Module):
    """Import statements that run when the module is imported (not inside functions or classes)."""
    todo = list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, (ast.If, ast.Try)):
            todo += node.body + node.orelse + getattr(node, "handlers", []) + getattr(node, "finalbody", [])
        elif isinstance(node, ast.ExceptHandler):
            todo += node.body


def _targets(name: str, node) -> set[str]:
    """The wsseg_fast modules an import statement in module ``name`` loads."""
    if isinstance(node, ast.Import):
        wanted = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:  # relative import
            package = name if MODULES[name].name == "__init__.py" else name.rsplit(".", 1)[0]
            base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
        wanted = [base] + [f"{base}.{alias.name}" for alias in node.names]
    loaded = set()
    for target in wanted:
        parts = target.split(".")
        for i in range(1, len(parts) + 1):  # a module's import loads its packages first
            candidate = ".".join(parts[:i])
            if candidate in MODULES and not name.startswith(candidate + ".") and candidate != name:
                loaded.add(candidate)
    return loaded


def import_graph() -> dict[str, set[str]]:
    return {
        name: set().union(*(_targets(name, n) for n in _module_level_imports(ast.parse(path.read_text()))))
        for name, path in MODULES.items()
    }


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_graph_sees_the_package():
    graph = import_graph()
    assert len(graph) > 40
    assert "wsseg_fast.pipelines.methods" in graph["wsseg_fast.pipelines.pseudo_label"]


def test_no_import_circle():
    assert find_cycle(import_graph()) is None, " -> ".join(find_cycle(import_graph()))


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


# The layers, lowest first. A module's layer is the first pattern (fnmatch) its name matches:
#   fuzzy, io, native  wsseg_fast.fuzzy, wsseg_fast.io, wsseg_fast._native: import nothing of wsseg_fast
#   op helpers         the ops package itself (it loads its op modules lazily), the backend choice and
#                      the helpers every op shares: neighbour stencils, colour conversion
#   reference          wsseg_fast.reference.*: pure-PyTorch definitions of the ops
#   kernels            wsseg_fast.kernels.*: Triton kernels
#   ops                wsseg_fast.ops.*: the public op modules
#   logic              wsseg_fast.logic.*: knowledge bases
#   top                everything else (pipelines, cli, sam, cache, data, models, ...): unchecked
LAYER_OF = {
    "wsseg_fast.fuzzy": "fuzzy",
    "wsseg_fast.io": "io",
    "wsseg_fast.errors": "errors",
    "wsseg_fast._native": "native",
    "wsseg_fast.ops": "op helpers",
    "wsseg_fast.ops._backend": "op helpers",
    "wsseg_fast.ops.neighbors": "op helpers",
    "wsseg_fast.ops.color": "op helpers",
    "wsseg_fast.reference*": "reference",
    "wsseg_fast.kernels*": "kernels",
    "wsseg_fast.ops.*": "ops",
    "wsseg_fast.logic*": "logic",
    "*": "top",
}
_BASE = {"fuzzy", "io", "errors", "native"}
ALLOWED = {  # layer -> the layers its modules may import (its own included where it may)
    "fuzzy": set(),
    "io": set(),
    "errors": set(),
    "native": set(),
    "op helpers": {"native", "op helpers"},
    "reference": _BASE | {"op helpers", "reference"},
    "kernels": _BASE | {"op helpers", "reference", "kernels"},
    "ops": _BASE | {"op helpers", "reference", "kernels", "ops"},
    "logic": _BASE | {"op helpers", "reference", "kernels", "ops", "logic"},
}


def layer(module: str) -> str:
    return next(layer for pattern, layer in LAYER_OF.items() if fnmatch.fnmatchcase(module, pattern))


def test_the_layer_table_names_real_modules():
    assert all(pattern in MODULES for pattern in LAYER_OF if "*" not in pattern)
    assert {layer(name) for name in MODULES} == set(ALLOWED) | {"top"}
    assert [
        layer(n)
        for n in (
            "wsseg_fast.ops",
            "wsseg_fast.ops.slic",
            "wsseg_fast.reference.slic",
            "wsseg_fast.kernels.fuzzy",
            "wsseg_fast.cli",
        )
    ] == ["op helpers", "ops", "reference", "kernels", "top"]


def test_low_layers_import_nothing_above_them():
    wrong = [
        f"{name} ({layer(name)}) imports {target} ({layer(target)})"
        for name, targets in sorted(import_graph().items())
        if layer(name) in ALLOWED
        for target in sorted(targets)
        if layer(target) not in ALLOWED[layer(name)]
    ]
    assert wrong == []


def test_no_function_local_imports_of_the_package():
    local = []
    for name, path in MODULES.items():
        for fn in ast.walk(ast.parse(path.read_text())):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for node in ast.walk(fn):
                    module = node.module if isinstance(node, ast.ImportFrom) else None
                    names = [a.name for a in node.names] if isinstance(node, ast.Import) else [module or ""]
                    if isinstance(node, (ast.Import, ast.ImportFrom)) and any(
                        n.startswith("wsseg_fast") for n in names
                    ):
                        local.append(f"{name}.{fn.name} (line {node.lineno})")
    assert local == []


_WRITERS = re.compile(
    r"""\.write_text\(|\.write_bytes\(|\bjson\.dump\(|\btorch\.save\(|\bnp\.save\(|open\([^)]*["'][wax]b?\+?["']"""
)


def test_only_the_io_module_writes_durable_files():
    """Files meant to survive a crash are written atomically by wsseg_fast/io.py, nowhere else."""
    writers = [
        f"{name} line {i}"
        for name, path in MODULES.items()
        if name != "wsseg_fast.io"
        for i, line in enumerate(path.read_text().splitlines(), 1)
        if _WRITERS.search(line)
    ]
    assert writers == []
    assert _WRITERS.search('with open(path, "w") as f:') and _WRITERS.search("torch.save(obj, path)")


def test_no_long_functions():
    """No function of the package (outside the Triton kernels) is over 80 lines: a longer one holds
    several steps that want names of their own."""
    long = [
        f"{name}.{fn.name} ({fn.end_lineno - fn.lineno + 1} lines)"
        for name, path in MODULES.items()
        if not name.startswith("wsseg_fast.kernels")
        for fn in ast.walk(ast.parse(path.read_text()))
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)) and fn.end_lineno - fn.lineno + 1 > 80
    ]
    assert long == []
