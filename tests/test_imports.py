"""Every import the project makes of its own modules resolves, and together they form no circle.

Imports inside functions run only when the function does, so a stale one (a renamed helper) fails on
the one machine that reaches it: lab 07's TensorRT timing once imported a function that no longer
existed. This walks the syntax tree of every module of `common/` and `kernels/` and resolves every
`from X import name` and `import X` of a project module, at module level and inside functions.

The same walk gives the project's import graph. Imports inside functions are where circles hide (the
module-level ones would fail at import time), so they count: the graph has no circle, library code
never imports the command line (`common/commands/`, `common/cli.py`), and no module imports another's
private (`_name`) helper.
"""
import ast
import importlib
from pathlib import Path

import pytest

from common.paths import REPO_ROOT

PACKAGES = ("common", "kernels")
MODULES = sorted(p for package in PACKAGES for p in (REPO_ROOT / package).rglob("*.py"))


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_imports(source: str, module: str, is_package: bool = False) -> list:
    """[(line, imported module, name or None)] of every import of a project module in `source`, the
    text of `module` (`from package import submodule` gives the package and the submodule's name)."""
    package = module if is_package else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                imported = ".".join(base[: len(base) - node.level + 1] + ([node.module] if node.module else []))
            else:
                imported = node.module or ""
            if imported.split(".")[0] in PACKAGES:
                found += [(node.lineno, imported, alias.name) for alias in node.names]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, None) for alias in node.names if alias.name.split(".")[0] in PACKAGES]
    return found


def unresolved(imports: list) -> list:
    """The imports of `project_imports` that fail, one line each."""
    failed = []
    for line, module, name in imports:
        try:
            imported = importlib.import_module(module)
        except ImportError as error:
            failed.append(f"line {line}: {module} ({error})")
            continue
        if name is not None and name != "*" and not hasattr(imported, name):
            try:
                importlib.import_module(f"{module}.{name}")
            except ImportError:
                failed.append(f"line {line}: {module} has no {name}")
    return failed


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_every_project_import_resolves(path):
    imports = project_imports(path.read_text(), module_name(path), path.name == "__init__.py")
    assert not unresolved(imports), f"{path.name}: " + "; ".join(unresolved(imports))


def test_a_stale_import_inside_a_function_is_found():
    source = "import torch\n\ndef f():\n    from ..hardware import _time_median, median_seconds\n    from . import onnx\n"
    imports = project_imports(source, "common.export.tensorrt")
    assert imports == [(4, "common.hardware", "_time_median"), (4, "common.hardware", "median_seconds"),
                       (5, "common.export", "onnx")]
    assert unresolved(imports) == ["line 4: common.hardware has no _time_median"]


# ---------------------------------------------------------------------------------------------
# The import graph
# ---------------------------------------------------------------------------------------------
COMMAND_LINE = ("common.commands", "common.cli", "common.__main__")   # __main__: `python -m common` runs the CLI
NAMES = {module_name(p): p for p in MODULES}


def import_graph(sources: dict) -> dict:
    """{module: {imported project module: [(line, name)]}} from {module: (source, is_package)}; an import
    of a submodule by name (`from . import onnx`) points at the submodule."""
    graph = {}
    for module, (source, is_package) in sources.items():
        edges = graph.setdefault(module, {})
        for line, imported, name in project_imports(source, module, is_package):
            target = f"{imported}.{name}" if f"{imported}.{name}" in sources else imported
            if target != module:
                edges.setdefault(target, []).append((line, name))
    return graph


def circles(graph: dict) -> list:
    """Each import circle as a list of modules [a, b, ..., a], found by depth-first search (one circle
    per strongly connected group is enough to report)."""
    found, done, path = [], set(), []

    def visit(module):
        path.append(module)
        for target in graph.get(module, {}):
            if target in path:
                found.append(path[path.index(target):] + [target])
            elif target not in done:
                visit(target)
        path.pop()
        done.add(module)

    for module in sorted(graph):
        if module not in done:
            visit(module)
    return found


def is_command_line(module: str) -> bool:
    return any(module == top or module.startswith(top + ".") for top in COMMAND_LINE)


PROJECT = import_graph({name: (path.read_text(), path.name == "__init__.py") for name, path in NAMES.items()})


def test_the_project_has_no_import_circle():
    assert not circles(PROJECT), "import circles: " + "; ".join(" -> ".join(c) for c in circles(PROJECT))


def test_library_code_never_imports_the_command_line():
    upward = [f"{module} -> {target} (line {uses[0][0]})" for module, edges in PROJECT.items()
              if not is_command_line(module) for target, uses in edges.items() if is_command_line(target)]
    assert not upward, "; ".join(upward)


def test_no_module_imports_another_modules_private_names():
    private = [f"{module} line {line}: {target}.{name}" for module, edges in PROJECT.items()
               for target, uses in edges.items() for line, name in uses
               if name and name.startswith("_") and not name.startswith("__")]
    assert not private, "; ".join(private)


def test_a_circle_closed_inside_a_function_is_found():
    sources = {"common.a": ("from .b import f\n", False),
               "common.b": ("def f():\n    from .c import g\n", False),
               "common.c": ("import torch\n\ndef g():\n    from common.a import f\n", False),
               "common.d": ("from .a import f\n", False)}
    assert circles(import_graph(sources)) == [["common.a", "common.b", "common.c", "common.a"]]
    del sources["common.c"]
    assert circles(import_graph(sources)) == []


def test_an_upward_or_private_import_is_seen():
    graph = import_graph({"common.eval": ("def f():\n    from .commands.eval import run\n    from .data import _x\n", False),
                          "common.commands.eval": ("", False), "common.data": ("", False)})
    assert graph["common.eval"] == {"common.commands.eval": [(2, "run")], "common.data": [(3, "_x")]}
    assert is_command_line("common.commands.eval") and is_command_line("common.cli")
    assert not is_command_line("common.commandsx") and not is_command_line("common.eval")
