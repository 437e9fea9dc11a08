"""Per-row sparsity (after TRIM, 2025): the output rows of one matrix get different sparsities.

Uniform pruning takes the same fraction from every output row, yet rows differ a lot in what losing
weights costs them. TRIM measures, for every output row, how well the pruned row still reproduces
its dense output on calibration inputs, gives the rows that suffer a lower sparsity and the others a
higher one while the matrix keeps its total, and searches per layer how far apart the rows'
sparsities may go. Its largest gains are at extreme sparsity (OPT-13B at 80%: perplexity 6461 with
uniform rows, 324 with per-row ratios).

Here, in one shot and with a fixed range, rows are scored by how much of the layer's output they
carry: their output energy on the calibration inputs, mean (x . w_i)^2 = w_i^T G w_i with G the
input Gram matrix. The rows are ranked by it: the row with the most energy is pruned at target -
spread, the one with the least at target + spread, the others evenly in between by rank, so the mean
is the target exactly (a rank, unlike the score itself, cannot let one extreme row squeeze all the
others); the counts are then rounded so the matrix loses exactly round(target x its size) weights.
Why energy rather than each row's *relative* error under uniform pruning (TRIM's kind of measure):
the relative error ignores how large a row's output is, and without TRIM's search of the spread,
ranking by it made Wanda at 70% worse than uniform on the embedded model; ranking by energy made it
better.
"""
import torch

from ..errors import WorkshopError


def check_row_spread(row_spread: float, pattern: str | None) -> None:
    if not 0.0 <= row_spread < 0.5:
        raise WorkshopError(f"row_spread {row_spread} is outside [0, 0.5): it is how far a row's sparsity may "
                            "move from the target, either way.",
                            "Use e.g. 0.1, or 0 for the same sparsity in every row.")
    if row_spread and pattern:
        raise WorkshopError(f"row_spread gives rows different sparsities, but the pattern {pattern} keeps "
                            "exactly N of every M weights in every row.",
                            "Use row_spread with unstructured sparsity (no pattern), or set it to 0.")


def row_output_energy(weight: torch.Tensor, gram: torch.Tensor) -> torch.Tensor:
    """[out] each row's mean squared output on the calibration inputs, w_i^T G w_i."""
    w = weight.float()
    return ((w @ gram.float()) * w).sum(1)


def row_prune_counts(row_scores: torch.Tensor, sparsity: float, spread: float, row_length: int) -> torch.Tensor:
    """[rows] how many weights each row loses: fewer for higher scores, exactly round(sparsity x rows x
    row_length) in total, every row's sparsity within sparsity +- spread (narrowed to stay in [0, 1])."""
    rows = row_scores.numel()
    spread = min(spread, sparsity, 1 - sparsity)
    rank = torch.empty(rows, dtype=torch.float64, device=row_scores.device)
    rank[row_scores.argsort()] = torch.arange(rows, dtype=torch.float64, device=row_scores.device)
    position = rank / (rows - 1) if rows > 1 else rank + 0.5  # 0 for the lowest score, 1 for the highest
    wanted = (sparsity + spread - 2 * spread * position) * row_length
    counts = wanted.floor().long()
    # Hand the weights lost to flooring to the rows that lost the largest fractions.
    missing = round(sparsity * rows * row_length) - int(counts.sum())
    counts[(wanted - counts).argsort(descending=True)[:missing]] += 1
    return counts.clamp(0, row_length)


def mask_with_row_counts(scores: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Keep-mask that drops the counts[i] lowest scores of row i."""
    rank_in_row = scores.argsort(dim=1).argsort(dim=1)
    return rank_in_row >= counts.to(scores.device)[:, None]


def trim_row_counts(weight: torch.Tensor, gram: torch.Tensor, sparsity: float, spread: float) -> torch.Tensor:
    """Per-row prune counts for one matrix: rows that carry more of the output lose fewer weights."""
    return row_prune_counts(row_output_energy(weight, gram), sparsity, spread, weight.size(1))
