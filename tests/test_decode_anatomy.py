"""common.decode_anatomy splits a decode step's time the way lab 00 reads it (here on a CPU)."""
from common.decode_anatomy import profile_decode_step


def test_a_cpu_decode_step_is_split_into_operators_and_matrix_products(tiny):
    model, _ = tiny
    anatomy = profile_decode_step(model, prompt_len=8, steps=2)
    assert anatomy.device == "cpu" and anatomy.kernels is None      # no kernels to launch on a CPU
    assert 0 < anatomy.matmul_s <= anatomy.busy_s <= anatomy.profiled_step_s
    # at least one operator (aten::linear) per linear layer of the two decoder layers and the head
    assert anatomy.operators >= 2 * 7 + 1
    assert set(anatomy.to_dict()) == {"device", "profiled_step_s", "busy_s", "matmul_s", "operators", "kernels"}
