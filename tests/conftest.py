import os

import pytest

os.environ.setdefault("WORKSHOP_MODE", "quick")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from common.offline import block_network  # noqa: E402

# Any test that reaches for the network fails: the course is offline-first.
block_network()


@pytest.fixture(scope="session")
def tiny():
    from common.models import load_model
    return load_model("tiny-random", device="cpu")


@pytest.fixture(scope="session")
def embedded():
    from common.models import load_model
    return load_model("embedded", device="cpu", dtype="float32")


@pytest.fixture
def reports_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKSHOP_REPORTS", str(tmp_path / "reports"))
    return tmp_path / "reports"


def lab_run_calls(notebook: str, config_modules: tuple) -> dict:
    """{name: (function name, config, *other literal args)} of every run("name", function, Config(...), ...)
    call in a solution notebook; configs are evaluated with the *Config classes of `config_modules`."""
    import ast

    import nbformat
    namespace = {name: getattr(module, name) for module in config_modules for name in dir(module) if name.endswith("Config")}
    calls = {}
    for cell in nbformat.read(notebook, as_version=4).cells:
        if cell.cell_type == "code":
            for node in ast.walk(ast.parse(cell.source)):
                if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "run":
                    name, function, config, *rest = node.args
                    calls[name.value] = (function.id, eval(ast.unparse(config), namespace), *(a.value for a in rest))
    return calls


def unsolved_function(*args, **kwargs):
    raise NotImplementedError("Exercise: replace this line with your solution")
