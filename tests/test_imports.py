"""Every import the project makes of its own modules resolves, wherever it is written.

Imports inside functions run only when the function does, so a stale one (a renamed helper) fails on
the one machine that reaches it: lab 07's TensorRT timing once imported a function that no longer
existed. This walks the syntax tree of every module of `common/` and `kernels/` and resolves every
`from X import name` and `import X` of a project module, at module level and inside functions.
"""
import ast
import importlib
from pathlib import Path

import pytest

from common.reports import REPO_ROOT

PACKAGES = ("common", "kernels")
MODULES = sorted(p for package in PACKAGES for p in (REPO_ROOT / package).rglob("*.py"))


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_imports(source: str, module: str, is_package: bool = False) -> list:
    """[(line, imported module, name or None)] of every import of a project module in `source`, the
    text of `module`."""
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
