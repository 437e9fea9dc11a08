"""Exercise checkers: each prints PASS, or raises ExerciseFailed with a hint.

Expected values are computed from the model and data in front of the participant, never typed in.
A failing check raises (rather than only printing) so that `make test` catches a broken solution.
"""
import math


class ExerciseFailed(AssertionError):
    def _render_traceback_(self):  # IPython: show the hint, not a traceback
        return [f"FAIL: {self}"]


def check(name: str, ok: bool, hint: str) -> None:
    if not ok:
        raise ExerciseFailed(f"{name}. Hint: {hint}")
    print(f"PASS: {name}")


def check_close(name: str, answer, expected: float, rel_tol: float, hint: str) -> None:
    if answer is None or isinstance(answer, type(Ellipsis)):
        raise ExerciseFailed(f"{name}: no answer yet. Hint: {hint}")
    ok = math.isclose(float(answer), float(expected), rel_tol=rel_tol)
    tolerance = "exactly" if rel_tol == 0 else f"within {100 * rel_tol:.3g}%"
    check(name if ok else f"{name}: got {_shown(answer)}, expected {_shown(expected)} ({tolerance})", ok, hint)


def _shown(value) -> str:
    """A count as a count (53,084,160), anything else to six significant digits."""
    value = float(value)
    return f"{int(value):,}" if value.is_integer() and abs(value) < 2 ** 53 else f"{value:.6g}"
