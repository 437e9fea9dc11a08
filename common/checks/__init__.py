"""Exercise checkers: each prints PASS and gives back the answer, or raises ExerciseFailed with a hint.

Expected values are computed from the model and data in front of the participant, never typed in.
A wrong answer raises (rather than only printing) so that `make test` catches a broken solution. An
exercise not attempted yet (its answer still `...`, or its function still raising
NotImplementedError) is not an error: the checker says so and gives back the reference answer,
computed here, so that a participant who skips an exercise can run the rest of the lab.
"""
import math


class ExerciseFailed(AssertionError):
    def _render_traceback_(self):  # IPython: show the hint, not a traceback
        return [f"FAIL: {self}"]


def unsolved(answer) -> bool:
    return answer is Ellipsis


def not_solved(name: str, reference, shown: str | None = None):
    """Say that exercise `name` is still open and give back the reference answer for the cells after it."""
    what = f"the reference value {shown}" if shown else "the reference answer"
    print(f"NOT SOLVED YET: {name}. The lab goes on with {what}, computed by common.checks, not by you; "
          "replace the ... (or the NotImplementedError) above and run the cell again.")
    return reference


def check(name: str, ok: bool, hint: str) -> None:
    if not ok:
        raise ExerciseFailed(f"{name}. Hint: {hint}")
    print(f"PASS: {name}")


def check_close(name: str, answer, expected: float, rel_tol: float, hint: str):
    """PASS if `answer` is within `rel_tol` of `expected`; returns the answer (`expected` if unsolved)."""
    if unsolved(answer):
        return not_solved(name, expected, _shown(expected))
    if answer is None:
        raise ExerciseFailed(f"{name}: no answer yet. Hint: {hint}")
    ok = math.isclose(float(answer), float(expected), rel_tol=rel_tol)
    tolerance = "exactly" if rel_tol == 0 else f"within {100 * rel_tol:.3g}%"
    check(name if ok else f"{name}: got {_shown(answer)}, expected {_shown(expected)} ({tolerance})", ok, hint)
    return answer


def _shown(value) -> str:
    """A count as a count (53,084,160), anything else to six significant digits."""
    value = float(value)
    return f"{int(value):,}" if value.is_integer() and abs(value) < 2 ** 53 else f"{value:.6g}"


# Predict, then measure: a prediction is written into a variable before the run and printed beside the
# measurement after it. A prediction is never right or wrong for the checker; an empty or malformed one
# is said in one line and the lab goes on without it.

def predicted(name: str, value, choices: tuple | None = None):
    """The learner's prediction `value` for `name`: a number, or one of `choices` (case-insensitive).

    Returns the prediction (a float, or the matching choice), or None when there is none to use: the
    `...` left in place (said as NOT SOLVED YET, like any open exercise) or a value of the wrong kind.
    """
    if unsolved(value):
        print(f"NOT SOLVED YET: prediction \u00ab{name}\u00bb. No prediction written; the lab goes on and "
              "prints the measurement alone.")
        return None
    if choices is not None:
        match = next((c for c in choices if isinstance(value, str) and value.strip().lower() == c.lower()), None)
        if match is None:
            print(f"Your prediction \u00ab{name}\u00bb should be one of {', '.join(map(repr, choices))}; got "
                  f"{value!r}. The lab goes on without it.")
            return None
        print(f"prediction recorded: {name}: {match}")
        return match
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        print(f"Your prediction \u00ab{name}\u00bb should be a number (e.g. 2.5); got {value!r}. "
              "The lab goes on without it.")
        return None
    print(f"prediction recorded: {name}: {_shown(value)}")
    return float(value)


def compare_prediction(name: str, prediction, measured, unit: str = "") -> str:
    """Print the prediction beside the measurement; returns the line printed."""
    shown = f"{_shown(measured) if isinstance(measured, (int, float)) else measured}{unit}"
    if prediction is None:
        line = f"\u00ab{name}\u00bb: measured {shown} (no prediction was recorded)"
    elif isinstance(prediction, str):
        line = (f"\u00ab{name}\u00bb: you predicted {prediction}, measured {shown}: "
                + ("as predicted" if prediction == measured else "not what you predicted"))
    else:
        ratio = float(measured) / prediction if prediction else math.inf
        factor = max(ratio, 1 / ratio) if ratio > 0 else math.inf
        if ratio == 1:
            off = "exactly"
        elif factor < 1.5:   # a factor would round to "1x": say the difference in percent
            off = f"{abs(ratio - 1):.0%} " + ("higher" if ratio > 1 else "lower") + " than predicted"
        else:
            off = f"{factor:.2g}x " + ("higher" if ratio > 1 else "lower") + " than predicted"
        line = f"\u00ab{name}\u00bb: you predicted {_shown(prediction)}{unit}, measured {shown}: {off}"
    print(line)
    return line
