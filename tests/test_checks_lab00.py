"""Lab 00's checkers hand back their reference for the unsolved stub and reject plausible wrong answers."""
import math
from types import SimpleNamespace

import pytest
import torch

from common.checks import ExerciseFailed
from common.checks.lab00 import check_parameter_count, check_perplexity
from conftest import unsolved_function   # an exercise left open: the stub labs/ hands the learner


@pytest.fixture(scope="module")
def smollm2_config():
    from transformers import LlamaConfig
    return LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                       num_attention_heads=9, num_key_value_heads=3, head_dim=64, tie_word_embeddings=True)


def count(cfg, gqa=True, tied_once=True, norms=True):
    """A parameter count with one deliberate mistake switched on by each flag set to False."""
    h, kv_width = cfg.hidden_size, (cfg.num_key_value_heads if gqa else cfg.num_attention_heads) * cfg.head_dim
    layer = 2 * h * cfg.num_attention_heads * cfg.head_dim + 2 * h * kv_width + 3 * h * cfg.intermediate_size
    layer += 2 * h if norms else 0
    heads = 1 if cfg.tie_word_embeddings and tied_once else 2
    return cfg.num_hidden_layers * layer + heads * cfg.vocab_size * h + (h if norms else 0)


def test_the_parameter_count_falls_back_on_its_reference_and_accepts_a_right_count(smollm2_config, capsys):
    reference = check_parameter_count(unsolved_function, smollm2_config)
    assert "NOT SOLVED YET" in capsys.readouterr().out
    assert reference(smollm2_config) == 134_515_008
    assert check_parameter_count(count, smollm2_config) is count


@pytest.mark.parametrize("mistake", [dict(gqa=False), dict(tied_once=False), dict(norms=False)],
                         ids=["k and v as wide as q", "tied head counted twice", "norms forgotten"])
def test_the_parameter_count_rejects_a_count_with_one_mistake(smollm2_config, mistake):
    with pytest.raises(ExerciseFailed):
        check_parameter_count(lambda cfg: count(cfg, **mistake), smollm2_config)


def test_the_parameter_count_rejects_the_embedded_models_number_typed_in(smollm2_config):
    with pytest.raises(ExerciseFailed):
        check_parameter_count(lambda cfg: 134_515_008, smollm2_config)


class Bigram(torch.nn.Module):
    """A stand-in causal LM whose next-token distribution depends on the current token only: windows
    and positions give very different likelihoods, so every protocol mistake shows."""

    def __init__(self, vocab=50):
        super().__init__()
        self.table = torch.nn.Parameter(4 * torch.randn(vocab, vocab, generator=torch.Generator().manual_seed(0)))

    def forward(self, input_ids, **kwargs):
        return SimpleNamespace(logits=self.table[input_ids])


def perplexity(model, ids, seqlen, max_windows=None, keep_tail=False, shift=1, per_window=False, denominator=None):
    """The protocol, with one deliberate mistake switched on by each keyword."""
    starts = range(0, ids.numel() - (0 if keep_tail else seqlen - 1), seqlen)
    nlls, counts = [], []
    for start in list(starts)[:max_windows]:
        window = ids[start: start + seqlen]
        logits = model(window[None]).logits[0].float()
        log_probs = torch.log_softmax(logits[: len(window) - shift], dim=-1)
        nlls.append(-log_probs.gather(1, window[shift:, None]).sum().item())
        counts.append(len(window) - 1 if denominator is None else denominator)
    if per_window:
        return sum(math.exp(n / c) for n, c in zip(nlls, counts)) / len(nlls)
    return math.exp(sum(nlls) / sum(counts))


@pytest.fixture(scope="module")
def bigram_ids():
    return torch.randint(0, 50, (5 * 16 + 7,), generator=torch.Generator().manual_seed(1))


def test_the_perplexity_falls_back_on_the_protocol_and_accepts_a_right_one(bigram_ids, capsys):
    model = Bigram()
    reference = check_perplexity(unsolved_function, model, bigram_ids, seqlen=16)
    assert "NOT SOLVED YET" in capsys.readouterr().out
    assert math.isclose(reference(model, bigram_ids[:3 * 16], 16), perplexity(model, bigram_ids[:3 * 16], 16))
    assert check_perplexity(perplexity, model, bigram_ids, seqlen=16) is perplexity
    assert check_perplexity(perplexity, model, bigram_ids, seqlen=16, windows=5) is perplexity


@pytest.mark.parametrize("mistake", [dict(keep_tail=True), dict(shift=0), dict(per_window=True),
                                     dict(denominator=16)],
                         ids=["tail kept", "logit t scored against token t", "mean of per-window PPL",
                              "divided by seqlen, not seqlen - 1"])
def test_the_perplexity_rejects_a_protocol_with_one_mistake(bigram_ids, mistake):
    model = Bigram()
    wrong = lambda model, ids, seqlen, max_windows=None: perplexity(model, ids, seqlen, max_windows, **mistake)  # noqa: E731
    with pytest.raises(ExerciseFailed):
        check_perplexity(wrong, model, bigram_ids, seqlen=16)
