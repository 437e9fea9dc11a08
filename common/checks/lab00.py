"""Checkers of lab 00 (Baseline)."""
from . import check_close


def check_mlp_parameters(answer: int, model):
    from ..eval import parameter_breakdown
    return check_close("MLP parameters from the config", answer, parameter_breakdown(model)["mlp"], 0.0,
                "each layer has gate_proj and up_proj (hidden x intermediate) and down_proj "
                "(intermediate x hidden), with no biases; multiply by the number of layers.")


def check_gguf_tensor_bytes(answer: float, reader):
    return check_close("predicted bytes of the GGUF's tensors", answer, sum(int(t.n_bytes) for t in reader.tensors),
                1e-6, "Q4_1 stores a block of 32 weights in 20 bytes (16 bytes of 4-bit codes, an fp16 "
                "scale and an fp16 minimum); Q8_0 stores 32 weights in 34 bytes (32 int8 codes and an "
                "fp16 scale); F32 takes 4 bytes per value.")


def check_window_nll(answer, model, window):
    from ..eval import window_nll
    expected = window_nll(model, window.unsqueeze(0)).item()
    return check_close("summed NLL of one window", answer, expected, 1e-4,
                "log_softmax the logits at positions 0..L-2 and pick the log-probability of the token "
                "at positions 1..L-1; sum their negatives.")


def check_decode_bound(answer: float, bytes_per_step: float, bandwidth: float, batch_size: int = 1):
    from ..eval import decode_bound_tokens_per_s
    return check_close(f"decode bound at batch {batch_size}", answer,
                decode_bound_tokens_per_s(bytes_per_step, bandwidth, batch_size), 0.01,
                "each decode step reads every weight once and yields one token per sequence: "
                "tokens/s = batch x bandwidth / bytes read per step.")
