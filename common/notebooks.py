"""The notebook workflow: solutions/ is the source, labs/ is generated from it.

In a solution's code cells, the lines between `### BEGIN SOLUTION` and `### END SOLUTION` are the
answer. The exercise notebook keeps everything else and carries no outputs. An answer inside a
function's body becomes a TODO and `raise NotImplementedError`; an answer at the top of a cell
becomes a TODO and `name = ...` for each name it binds that the rest of the notebook reads. The
check under it gives back the reference answer while the `...` or the NotImplementedError is still
there, so a lab runs top to bottom with every exercise unsolved.

In a solution's markdown cells, the text between `<!-- BEGIN ANSWER -->` and `<!-- END ANSWER -->` is
the answer to an "explain" exercise; the lab shows a line to write one instead.
"""
import ast
import copy
import os
import sys
import tempfile
import time
from pathlib import Path

import nbformat

from .paths import REPO_ROOT

SOLUTIONS = REPO_ROOT / "solutions"
LABS = REPO_ROOT / "labs"
BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
TODO = "# TODO: your code here"
ANSWER_BEGIN, ANSWER_END = "<!-- BEGIN ANSWER -->", "<!-- END ANSWER -->"
ANSWER_PLACEHOLDER = "*Your answer:* (write it here; the solution notebook in `solutions/` has one)"


def _python(source: str) -> str:
    """A cell's source without IPython's magics and shell lines, for ast."""
    return "\n".join(line for line in source.splitlines() if not line.lstrip().startswith(("%", "!")))


def bound_names(code: str) -> list:
    """The names a block of top-level code binds, in order (not those local to its functions, lambdas
    or comprehensions)."""
    names = []

    def visit(node):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.append(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.append(node.id)
        elif not isinstance(node, (ast.Lambda, ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)):
            for child in ast.iter_child_nodes(node):
                visit(child)

    for statement in ast.parse(code).body:
        visit(statement)
    return list(dict.fromkeys(names))


def read_names(source: str) -> set:
    return {node.id for node in ast.walk(ast.parse(_python(source)))
            if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load)}


def _regions(source: str):
    """(first line, last line, indent) of each solution region of a cell."""
    regions, begin = [], None
    lines = source.splitlines()
    for i, line in enumerate(lines):
        if line.strip().startswith(BEGIN):
            begin = i
        elif line.strip().startswith(END):
            if begin is None:
                raise ValueError("a solution region is closed and never opened")
            regions.append((begin, i, lines[begin][: len(lines[begin]) - len(lines[begin].lstrip())]))
            begin = None
    if begin is not None:
        raise ValueError("a solution region is opened and never closed")
    return regions


def strip_solutions(source: str, read_elsewhere: set = frozenset()) -> str:
    """The cell with each answer replaced: `raise NotImplementedError` inside a function's body, and
    `name = ...` for every name in `read_elsewhere` that an answer at the top of the cell binds."""
    lines = source.splitlines()
    out, done = [], 0
    for begin, end, indent in _regions(source):
        out += lines[done:begin]
        if indent:
            out += [f"{indent}{TODO}",
                    f'{indent}raise NotImplementedError("Exercise: replace this line with your solution")']
        else:
            names = [n for n in bound_names("\n".join(lines[begin + 1:end])) if n in read_elsewhere]
            if not names:
                raise ValueError(f"the solution at line {begin + 1} binds nothing the notebook reads elsewhere")
            # a prediction has no reference answer: left as `...`, the lab prints the measurement alone
            out += [f"{TODO}; left as ..., the lab measures without your prediction" if "predicted(" in source
                    else f"{TODO}; until then the check below goes on with the reference answer"]
            out += [f"{name} = ..." for name in names]
        done = end + 1
    return "\n".join(out + lines[done:])


def strip_answers(markdown: str) -> str:
    """A markdown cell with each explained answer replaced by a line to write one."""
    if ANSWER_BEGIN not in markdown and ANSWER_END not in markdown:
        return markdown
    out, inside = [], False
    for line in markdown.splitlines():
        if line.strip() == ANSWER_BEGIN:
            if inside:
                raise ValueError("an answer is opened twice")
            inside = True
            out.append(ANSWER_PLACEHOLDER)
        elif line.strip() == ANSWER_END:
            if not inside:
                raise ValueError("an answer is closed and never opened")
            inside = False
        elif not inside:
            out.append(line)
    if inside:
        raise ValueError("an answer is opened and never closed")
    return "\n".join(out)


def _without_solutions(source: str) -> str:
    lines = source.splitlines()
    for begin, end, indent in reversed(_regions(source)):
        lines[begin:end + 1] = [f"{indent}pass"] if indent else []
    return "\n".join(lines)


def make_lab(solution: nbformat.NotebookNode) -> nbformat.NotebookNode:
    lab = copy.deepcopy(solution)
    code = [cell for cell in lab.cells if cell.cell_type == "code"]
    read_elsewhere = set().union(*(read_names(_without_solutions(cell.source)) for cell in code))
    for cell in code:
        cell.source = strip_solutions(cell.source, read_elsewhere)
        cell.outputs = []
        cell.execution_count = None
    for cell in lab.cells:
        cell.metadata.pop("execution", None)
        if cell.cell_type == "markdown":
            cell.source = strip_answers(cell.source)
    return lab


def lab_text(solution_path: Path) -> str:
    return nbformat.writes(make_lab(nbformat.read(solution_path, as_version=4))) + "\n"


def stale_labs() -> list:
    """Labs whose file differs from what their solution generates (or that are missing)."""
    stale = []
    for solution in sorted(SOLUTIONS.glob("*.ipynb")):
        lab = LABS / solution.name
        if not lab.is_file() or lab.read_text() != lab_text(solution):
            stale.append(lab.name)
    return stale


def write_labs() -> list:
    LABS.mkdir(exist_ok=True)
    written = []
    for solution in sorted(SOLUTIONS.glob("*.ipynb")):
        (LABS / solution.name).write_text(lab_text(solution))
        written.append(solution.name)
    return written


def execute_notebook(path: Path, mode: str, timeout: int = 3600, on_cell_start=None):
    """Run a notebook top to bottom in a fresh kernel with WORKSHOP_MODE=mode, in its own folder.
    `on_cell_start(index, count)` is called before each code cell runs (index from 1, of `count`).

    Returns (notebook, None) when every cell ran, or (the notebook as far as it got, the error).
    """
    from jupyter_client.manager import KernelManager
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError
    nb = nbformat.read(path, as_version=4)
    with tempfile.TemporaryDirectory(prefix="workshop-kernel-") as sockets:
        # Unix sockets in a private folder rather than TCP ports on localhost: nothing else can
        # connect, and ipykernel has no cause to warn about unencrypted TCP.
        kernel = KernelManager(kernel_name="python3", transport="ipc", ip=str(Path(sockets) / "kernel"))
        code = [i for i, cell in enumerate(nb.cells) if cell.cell_type == "code"]
        hook = (lambda cell, cell_index: on_cell_start(code.index(cell_index) + 1, len(code))
                if cell_index in code else None) if on_cell_start else None
        client = NotebookClient(nb, km=kernel, timeout=timeout, resources={"metadata": {"path": str(path.parent)}},
                                on_cell_start=hook)
        try:
            # The mode goes to the kernel alone: this process's environment (and so the kernels that
            # nbval or a later call starts) keeps its own.
            client.execute(env=dict(os.environ, WORKSHOP_MODE=mode))
            return nb, None
        except CellExecutionError as error:
            return nb, error
        finally:
            if kernel.has_kernel:   # nbclient shuts down only the kernels it created itself
                kernel.shutdown_kernel()


def refresh_solutions(names=None, mode: str = "quick") -> None:
    """Execute solutions in place (quick mode) so their stored outputs match a fresh run; then labs."""
    for path in sorted(SOLUTIONS.glob("*.ipynb")):
        if names and not any(path.name.startswith(n) for n in names):
            continue
        t0 = time.time()
        print(f"executing {path.name} in {mode} mode...", file=sys.stderr)
        nb, error = execute_notebook(path, mode)
        if error:
            raise SystemExit(f"{path.name} failed; its outputs were not stored:\n{error}")
        nbformat.write(nb, path)
        print(f"  done in {time.time() - t0:.0f} s", file=sys.stderr)
    write_labs()


if __name__ == "__main__":
    if sys.argv[1:2] == ["refresh"]:
        refresh_solutions(sys.argv[2:])
    print("labs written:", ", ".join(write_labs()))
