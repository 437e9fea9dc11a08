"""How much of a compression gap a training run recovered (lab 04's reading of its runs).

`gap_closed(reference, compressed, recovered)`: (PPL compressed - PPL recovered) / (PPL compressed -
PPL reference). 1 is back to the reference (the teacher), 0 no better than the compressed model,
negative worse; above 1 the student ended below the reference's perplexity on that text.
"""


def gap_closed(reference_ppl: float, compressed_ppl: float, recovered_ppl: float) -> float:
    return (compressed_ppl - recovered_ppl) / (compressed_ppl - reference_ppl)
