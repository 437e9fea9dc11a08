"""Lab 06's checkers reject the unsolved stub and a plausible wrong answer, and accept the right one."""
import math

import pytest

from common.checks import ExerciseFailed
from common.checks.lab06 import check_compute_bound_m, check_gemm_bytes
from conftest import unsolved_function   # an exercise left open: the stub labs/ hands the learner

H100 = (3.3e12, 7e14)   # bandwidth (B/s) and bf16 FLOP/s of the order of an H100's


def test_the_gemm_bytes_checker_falls_back_on_its_reference(capsys):
    reference = check_gemm_bytes(unsolved_function)
    assert reference is not unsolved_function and "NOT SOLVED YET" in capsys.readouterr().out
    assert check_gemm_bytes(reference) is reference
    assert reference(1, 2, 3, 16, None) == 2 * 3 * 2 + 2 * (3 + 2)


def test_gemm_bytes_without_the_zero_points_or_the_activations_is_rejected():
    def scales_only(m, n, k, bits, group):   # forgets the zero point stored beside each scale
        return n * k * bits / 8 + (0 if group is None else 2 * n * k / group) + 2 * (m * k + m * n)

    def weights_only(m, n, k, bits, group):   # forgets the activations read and the output written
        return n * k * bits / 8 + (0 if group is None else 4 * n * k / group)

    for wrong in (scales_only, weights_only):
        with pytest.raises(ExerciseFailed):
            check_gemm_bytes(wrong)


def test_compute_bound_m_falls_back_on_the_reference_and_accepts_it():
    check_gemm_bytes(unsolved_function)
    reference = check_compute_bound_m(unsolved_function, 14336, 4096, *H100)
    assert check_compute_bound_m(reference, 14336, 4096, *H100) is reference
    assert reference(14336, 4096, 16, None, *H100) > reference(14336, 4096, 4, 128, *H100) > 1
    assert reference(64, 64, 16, None, *H100) is None   # a layer this thin never reaches the ridge point


def test_compute_bound_m_off_by_one_or_on_the_weight_bytes_only_is_rejected():
    gemm_bytes = check_gemm_bytes(unsolved_function)
    reference = check_compute_bound_m(unsolved_function, 14336, 4096, *H100)

    def last_memory_bound(n, k, bits, group, bandwidth, flops):   # the M before the crossing
        m = reference(n, k, bits, group, bandwidth, flops)
        return None if m is None else m - 1

    def weights_only(n, k, bits, group, bandwidth, flops):   # ignores the activations' bytes
        return math.ceil(flops / bandwidth * gemm_bytes(0, n, k, bits, group) / (2 * n * k))

    def never_none(n, k, bits, group, bandwidth, flops):   # loops on to a huge M instead of answering None
        m = reference(n, k, bits, group, bandwidth, flops)
        return 10**9 if m is None else m

    cpu = (2e10, 2e11)   # a CPU's ridge, 10 FLOPs per byte
    for wrong in (last_memory_bound, weights_only, never_none, lambda *a: 1):
        for ceilings in (H100, cpu):   # the checker also asks on a GPU's ceilings and on a thin shape
            with pytest.raises(ExerciseFailed):
                check_compute_bound_m(wrong, 14336, 4096, *ceilings)
