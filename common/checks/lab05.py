"""Checkers of lab 05 (Ordering)."""
from . import check, check_close, not_solved, unsolved


def check_recipe(recipe, order: str):
    from ..pipeline import recipe_from_order
    name, expected = f"the recipe of {order}", recipe_from_order(order)
    if unsolved(recipe):
        return not_solved(name, expected)
    check(name, recipe == expected, f"a recipe is a list of step configs in order; {order} is "
          + ", ".join({"P": "WidthPrune()", "KD": "Distill()", "Q": "NF4()"}[s] for s in order.split(",")) + ".")
    return recipe


def check_float_share(share, model):
    """The share of a packed model's weights that are still float parameters (what training can move)."""
    from ..pipeline import weight_count
    expected = sum(p.numel() for p in model.parameters()) / weight_count(model)
    return check_close("share of the weights left in floating point after packing", share, expected, 1e-9,
                       "count the elements of model.parameters() (norms, embeddings: the packed codes are buffers) "
                       "and divide by all the weights: parameters plus in_features x out_features of every "
                       "QuantLinear.")


def check_gap_shrink(shrink, packed: list, qat: list, text: str = "wiki"):
    from ..pipeline import quantize_early_gap
    expected = 1 - quantize_early_gap(qat, text) / quantize_early_gap(packed, text)
    return check_close("share of the quantize-before-prune gap that QAT removes", shrink, expected, 1e-9,
                       "gap = mean final perplexity of Q-P-KD, Q-KD-P and KD-Q-P minus P-KD-Q's; "
                       "shrink = 1 - gap(QAT) / gap(packed).")
