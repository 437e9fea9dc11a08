"""Checkers of lab 02 (Post-training quantization)."""
import torch

from . import check, check_close, not_solved, unsolved


def _close(a, b, tol=1e-5) -> bool:
    return a is not None and torch.allclose(torch.as_tensor(a).float(), torch.as_tensor(b).float(), rtol=tol, atol=tol)


def check_rtn_scale(scale, zero, weight: torch.Tensor, bits: int, group_size: int):
    from ..quant.formats import _grouped, int_scale_zero
    expected = int_scale_zero(_grouped(weight, group_size).float(), bits, symmetric=False)
    name = "asymmetric RTN scale and zero point per group"
    if unsolved(scale) or unsolved(zero):
        return not_solved(name, expected)
    check(name, _close(scale, expected[0]) and _close(zero, expected[1]),
          f"view the weight as [groups, {group_size}]; the range [min(w, 0), max(w, 0)] of each group is "
          f"cut into 2^{bits} - 1 steps (scale = (hi - lo) / (2^{bits} - 1)) and the zero point is the "
          "integer code of 0.0: round(-lo / scale). Keep the dimensions (keepdim=True).")
    return scale, zero


def check_gptq_column_update(updated, W: torch.Tensor, q: torch.Tensor, U: torch.Tensor):
    # Independent reference: the optimal update of the remaining columns, solved from the
    # inverse Hessian itself rather than from its Cholesky factor.
    Hinv = U.T @ U
    err = W[:, 0] - q
    expected = W[:, 1:] - torch.outer(err / Hinv[0, 0], Hinv[0, 1:])
    name = "GPTQ update of the columns after the first one"
    if unsolved(updated):
        return not_solved(name, expected)
    check(name, _close(updated, expected, 1e-4),
          "err = (w0 - q0) / U[0, 0]; W[:, 1:] -= outer(err, U[0, 1:]). U is the upper Cholesky "
          "factor of H^-1, so U[0, 0]^2 = H^-1[0, 0] and U[0, 0] * U[0, j] = H^-1[0, j].")
    return updated


def check_smoothing_scale(s, act_absmax: torch.Tensor, weights: list, alpha: float):
    from ..quant.smoothquant import smoothing_scale
    expected = smoothing_scale(act_absmax, weights, alpha)
    name = f"SmoothQuant scales at alpha={alpha}"
    if unsolved(s):
        return not_solved(name, expected)
    check(name, _close(s, expected, 1e-4),
          "s_j = max|X_j|^alpha / max|W_j|^(1 - alpha), where max|W_j| is taken over input column j of "
          "q, k and v together (amax over dim 0 of each weight, then the max of the three).")
    return s


def check_domain_penalty(penalty, study: dict, method: str):
    """The out-of-domain cost of calibrating `method` on wiki: its python-docs perplexity calibrated on wiki
    over its python-docs perplexity calibrated on python-docs."""
    ppl = {row["calib"]: row["ppl"]["python-docs"] for row in study["rows"] if row["method"] == method}
    return check_close(f"out-of-domain penalty of {method} calibrated on wiki", penalty, ppl["wiki"] / ppl["python-docs"],
                       1e-9, f"take the rows of calibration_study['rows'] whose method is {method!r}; divide the "
                       "python-docs perplexity of the row calibrated on 'wiki' by that of the row calibrated on "
                       "'python-docs'.")
