"""One exception type for bad input and missing resources.

The CLI turns it into one line on stderr and exit code 2; IPython shows only the message, not a
40-line traceback from deep inside a library.
"""


class WorkshopError(Exception):
    """Something the user can fix: what was wrong, and what to do about it."""

    def __init__(self, problem: str, fix: str):
        super().__init__(problem, fix)
        self.problem = problem
        self.fix = fix

    def __str__(self) -> str:
        return f"{self.problem}\n  What to do: {self.fix}"

    def _render_traceback_(self):  # IPython calls this instead of printing the traceback
        return [f"WorkshopError: {self}"]
