"""Lab 06's checkers reject the unsolved stub and a plausible wrong answer."""
import pytest

from common.checks import ExerciseFailed
from common.checks.lab06 import check_compute_bound_m, check_gemm_bytes


def unsolved_function(*args, **kwargs):
    raise NotImplementedError("Exercise: replace this line with your solution")


def test_the_gemm_bytes_checker_falls_back_on_its_reference(capsys):
    reference = check_gemm_bytes(unsolved_function)
    assert reference is not unsolved_function and "NOT SOLVED YET" in capsys.readouterr().out
    assert check_gemm_bytes(reference) is reference


def test_compute_bound_m_falls_back_on_the_reference_and_rejects_a_wrong_function():
    gemm_bytes = check_gemm_bytes(unsolved_function)
    reference = check_compute_bound_m(unsolved_function, 14336, 4096, 3.3e12, 7e14)
    assert check_compute_bound_m(reference, 14336, 4096, 3.3e12, 7e14) is reference
    assert gemm_bytes(1, 2, 3, 16, None) == 2 * 3 * 2 + 2 * (3 + 2)
    with pytest.raises(ExerciseFailed):
        check_compute_bound_m(lambda *a: 1, 14336, 4096, 3.3e12, 7e14)

