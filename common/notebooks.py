"""The notebook workflow: solutions/ is the source, labs/ is generated from it.

In a solution's code cells, the lines between `### BEGIN SOLUTION` and `### END SOLUTION` are the
answer. The exercise notebook keeps everything else, replaces each answer by a TODO and
`raise NotImplementedError`, and carries no outputs.
"""
import copy
import os
import sys
import time
from pathlib import Path

import nbformat

from .reports import REPO_ROOT

SOLUTIONS = REPO_ROOT / "solutions"
LABS = REPO_ROOT / "labs"
BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"


def strip_solutions(source: str) -> str:
    out, inside = [], False
    for line in source.splitlines():
        stripped = line.strip()
        if stripped.startswith(BEGIN):
            inside = True
            indent = line[: len(line) - len(line.lstrip())]
            out.append(f"{indent}# TODO: your code here")
            out.append(f'{indent}raise NotImplementedError("Exercise: replace this line with your solution")')
        elif stripped.startswith(END):
            inside = False
        elif not inside:
            out.append(line)
    if inside:
        raise ValueError("a solution region is opened and never closed")
    return "\n".join(out)


def make_lab(solution: nbformat.NotebookNode) -> nbformat.NotebookNode:
    lab = copy.deepcopy(solution)
    for cell in lab.cells:
        if cell.cell_type == "code":
            cell.source = strip_solutions(cell.source)
            cell.outputs = []
            cell.execution_count = None
        cell.metadata.pop("execution", None)
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


def execute_notebook(path: Path, mode: str, timeout: int = 3600):
    """Run a notebook top to bottom in a fresh kernel with WORKSHOP_MODE=mode, in its own folder.

    Returns (notebook, None) when every cell ran, or (the notebook as far as it got, the error).
    """
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError
    nb = nbformat.read(path, as_version=4)
    os.environ["WORKSHOP_MODE"] = mode  # the kernel inherits this process's environment
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    try:
        client.execute()
        return nb, None
    except CellExecutionError as error:
        return nb, error


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
