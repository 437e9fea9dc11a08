"""Lab 07's checkers reject the unsolved stub and a plausible wrong answer, and accept the right one."""
import pytest
import torch

from common.checks import ExerciseFailed
from common.checks.lab07 import check_qdq, check_unpack_int4
from conftest import unsolved_function   # an exercise left open: the stub labs/ hands the learner


def test_the_qdq_checker_falls_back_on_the_reference_and_accepts_it(capsys):
    reference = check_qdq(unsolved_function)
    assert reference is not unsolved_function and "NOT SOLVED YET" in capsys.readouterr().out
    assert check_qdq(reference) is reference


def test_a_qdq_that_rounds_half_up_or_never_saturates_is_rejected():
    def half_up(x, scale):   # ties away from the even code: 0.25 / 0.5 = 0.5 goes to 1, ONNX sends it to 0
        return torch.floor(x / scale + 0.5).clamp(-128, 127) * scale

    def no_clamp(x, scale):   # 100 / 0.5 = 200 is past 127
        return torch.round(x / scale) * scale

    def symmetric_range(x, scale):   # clamps to [-127, 127]: -64.5 / 0.5 = -129 must give -128, not -127
        return torch.round(x / scale).clamp(-127, 127) * scale

    for wrong in (half_up, no_clamp, symmetric_range):
        with pytest.raises(ExerciseFailed):
            check_qdq(wrong)


def test_the_unpack_checker_falls_back_on_the_reference_and_accepts_it(capsys):
    reference = check_unpack_int4(unsolved_function)
    assert reference is not unsolved_function and "NOT SOLVED YET" in capsys.readouterr().out
    assert check_unpack_int4(reference) is reference


def test_an_unpack_with_the_nibbles_reversed_or_without_the_offset_is_rejected():
    reference = check_unpack_int4(unsolved_function)

    def reversed_nibbles(words):   # the first code in the highest bits
        return reference(words).reshape(words.shape[0], -1, 8).flip(-1).reshape(words.shape[0], -1)

    def no_offset(words):   # the stored nibble 0..15, not the signed code
        return reference(words) + 8

    def arithmetic_shift_unmasked(words):   # int32 >> keeps the sign: the top nibble comes out negative
        shifted = words.unsqueeze(-1) >> (4 * torch.arange(8, dtype=torch.int32))
        return (torch.where(torch.arange(8) == 7, shifted, shifted & 0xF) - 8).reshape(words.shape[0], -1)

    for wrong in (reversed_nibbles, no_offset, arithmetic_shift_unmasked):
        with pytest.raises(ExerciseFailed):
            check_unpack_int4(wrong)
