"""Checkers of lab 03 (Pruning and low rank)."""
import torch

from . import check, check_close, not_solved, unsolved


def check_nm_mask(make_mask):
    """`make_mask(scores, n, m)` must keep the n highest scores of every group of m along each row."""
    from ..prune.masks import nm_mask
    generator = torch.Generator().manual_seed(3)
    for n, m in ((2, 4), (4, 8)):
        scores = torch.rand(8, 32, generator=generator)
        try:
            answer = make_mask(scores, n, m)
        except NotImplementedError:
            return not_solved("N:M mask", nm_mask)
        ok = (isinstance(answer, torch.Tensor) and answer.shape == scores.shape
              and torch.equal(answer.bool(), nm_mask(scores, n, m)))
        check(f"{n}:{m} mask", ok, "reshape the scores to [rows, cols // m, m], take topk(n) along the last "
              "dimension, scatter True at those indices into a zero bool tensor, reshape back.")
    return make_mask


def check_wanda_scores(answer, weight: torch.Tensor, inputs: torch.Tensor):
    expected = weight.abs().float() * inputs.float().reshape(-1, inputs.size(-1)).norm(dim=0)[None, :]
    name = "Wanda scores |W_ij| * ||X_j||"
    if unsolved(answer):
        return not_solved(name, expected)
    ok = isinstance(answer, torch.Tensor) and answer.shape == weight.shape and torch.allclose(
        answer.float(), expected, rtol=1e-4, atol=1e-6 * float(expected.abs().max()))
    check(name, ok, "flatten the inputs to [tokens, in_features], take the L2 norm of each column (input "
          "channel) over the tokens, and multiply |W| by it row-wise (broadcast over rows).")
    return answer


def check_block_importance(answer, model, calib_batch, index: int):
    from ..prune.depth import block_importance
    expected = float(block_importance(model, calib_batch)[index])
    return check_close(f"block importance of layer {index}", answer, expected, 1e-2,
                       "1 - cosine similarity between the hidden state entering and leaving the layer, per token "
                       "(along the hidden dimension), averaged over every token of the batch.")
