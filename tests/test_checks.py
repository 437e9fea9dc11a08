"""Exercise checkers: a right answer passes, a wrong one raises, a skipped one hands back the reference."""
import pytest
import torch

from common.checks import ExerciseFailed, check_close
from common.checks.lab03 import check_nm_mask, check_wanda_scores
from common.checks.lab04 import check_gap_closed
from common.checks.lab06 import check_compute_bound_m, check_gemm_bytes


def unsolved_function(*args, **kwargs):
    raise NotImplementedError("Exercise: replace this line with your solution")


def test_a_skipped_value_gets_the_reference_and_says_so(capsys):
    assert check_close("the answer", ..., 42.0, 1e-6, "hint") == 42.0
    assert "NOT SOLVED YET: the answer" in capsys.readouterr().out
    assert check_close("the answer", 42.0000001, 42.0, 1e-6, "hint") == 42.0000001
    with pytest.raises(ExerciseFailed, match="got 41, expected 42"):
        check_close("the answer", 41, 42, 1e-6, "hint")


def test_a_skipped_tensor_gets_the_reference_which_passes_its_check(capsys):
    weight, inputs = torch.randn(4, 8), torch.randn(2, 5, 8)
    reference = check_wanda_scores(..., weight, inputs)
    assert check_wanda_scores(reference, weight, inputs) is reference
    assert "PASS" in capsys.readouterr().out.splitlines()[-1]
    with pytest.raises(ExerciseFailed):
        check_wanda_scores(reference * 2, weight, inputs)


@pytest.mark.parametrize("checker, args", [(check_nm_mask, ()), (check_gemm_bytes, ()),
                                           (check_gap_closed, (10.0, 14.0, 12.0))])
def test_a_skipped_function_gets_a_reference_function_which_passes_its_check(checker, args, capsys):
    reference = checker(unsolved_function, *args)
    assert reference is not unsolved_function and "NOT SOLVED YET" in capsys.readouterr().out
    assert checker(reference, *args) is reference
    assert "NOT SOLVED" not in capsys.readouterr().out


def test_compute_bound_m_falls_back_on_the_reference_and_rejects_a_wrong_function():
    gemm_bytes = check_gemm_bytes(unsolved_function)
    reference = check_compute_bound_m(unsolved_function, 14336, 4096, 3.3e12, 7e14)
    assert check_compute_bound_m(reference, 14336, 4096, 3.3e12, 7e14) is reference
    assert gemm_bytes(1, 2, 3, 16, None) == 2 * 3 * 2 + 2 * (3 + 2)
    with pytest.raises(ExerciseFailed):
        check_compute_bound_m(lambda *a: 1, 14336, 4096, 3.3e12, 7e14)
