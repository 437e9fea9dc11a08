"""Lab 04's checkers reject the unsolved stub and a plausible wrong answer."""
from common.checks.lab04 import check_gap_closed


def unsolved_function(*args, **kwargs):
    raise NotImplementedError("Exercise: replace this line with your solution")


def test_the_gap_closed_checker_falls_back_on_its_reference(capsys):
    reference = check_gap_closed(unsolved_function, 10.0, 14.0, 12.0)
    assert reference is not unsolved_function and "NOT SOLVED YET" in capsys.readouterr().out
    assert check_gap_closed(reference, 10.0, 14.0, 12.0) is reference

