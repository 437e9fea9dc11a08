"""Checkers of lab 03 (Pruning and low rank)."""
import torch

from . import check, check_close


def check_nm_mask(make_mask) -> None:
    """`make_mask(scores, n, m)` must keep the n highest scores of every group of m along each row."""
    from ..prune.masks import nm_mask
    generator = torch.Generator().manual_seed(3)
    for n, m in ((2, 4), (4, 8)):
        scores = torch.rand(8, 32, generator=generator)
        answer = make_mask(scores, n, m)
        ok = (isinstance(answer, torch.Tensor) and answer.shape == scores.shape
              and torch.equal(answer.bool(), nm_mask(scores, n, m)))
        check(f"{n}:{m} mask", ok, "reshape the scores to [rows, cols // m, m], take topk(n) along the last "
              "dimension, scatter True at those indices into a zero bool tensor, reshape back.")


def check_wanda_scores(answer, weight: torch.Tensor, inputs: torch.Tensor) -> None:
    expected = weight.abs().float() * inputs.float().reshape(-1, inputs.size(-1)).norm(dim=0)[None, :]
    ok = isinstance(answer, torch.Tensor) and answer.shape == weight.shape and torch.allclose(
        answer.float(), expected, rtol=1e-4, atol=1e-6 * float(expected.abs().max()))
    check("Wanda scores |W_ij| * ||X_j||", ok, "flatten the inputs to [tokens, in_features], take the L2 norm of "
          "each column (input channel) over the tokens, and multiply |W| by it row-wise (broadcast over rows).")


def check_block_importance(answer, model, calib_batch, index: int) -> None:
    from ..prune.depth import block_importance
    expected = float(block_importance(model, calib_batch)[index])
    check_close(f"block importance of layer {index}", answer, expected, 1e-2,
                "1 - cosine similarity between the hidden state entering and leaving the layer, per token "
                "(along the hidden dimension), averaged over every token of the batch.")
