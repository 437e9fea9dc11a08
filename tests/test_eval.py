import math

import pytest
import torch
import torch.nn.functional as F

from common.errors import WorkshopError
from common.models import load_model
from common.eval import decode_bound_tokens_per_s, measure_throughput, perplexity
from common.sizes import parameter_breakdown, stored_bytes, stored_bytes_by_kind


class UniformModel(torch.nn.Module):
    """Every next token equally likely: perplexity is exactly the vocabulary size."""
    def __init__(self, vocab_size=384):
        super().__init__()
        self.config = type("Config", (), {"vocab_size": vocab_size, "max_position_embeddings": 4096})()
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, ids):
        return type("Out", (), {"logits": torch.zeros(*ids.shape, self.config.vocab_size)})()


def test_uniform_model_has_vocab_size_perplexity(tiny):
    _, tokenizer = tiny
    result = perplexity(UniformModel(), tokenizer, seqlen=64, max_windows=3, progress=False)
    assert result.ppl == pytest.approx(384, rel=1e-6)
    assert result.windows == 3 and result.tokens == 3 * 63


def test_perplexity_matches_hand_computed_loop(tiny):
    model, tokenizer = tiny
    text = "The quick brown fox jumps over the lazy dog. " * 20
    result = perplexity(model, tokenizer, text=text, seqlen=32, progress=False, batch_size=3)
    ids = tokenizer(text).input_ids
    nlls = []
    for w in range(len(ids) // 32):
        window = torch.tensor(ids[w * 32:(w + 1) * 32])
        with torch.no_grad():
            logp = F.log_softmax(model(window[None]).logits[0].double(), dim=-1)
        nlls += [-logp[t, window[t + 1]].item() for t in range(31)]
    assert result.tokens == len(nlls)
    assert result.ppl == pytest.approx(math.exp(sum(nlls) / len(nlls)), rel=1e-5)
    assert "seqlen=32" in str(result) and "windows=" in str(result)


def test_perplexity_bad_input(tiny):
    model, tokenizer = tiny
    with pytest.raises(WorkshopError, match="beyond this model's context"):
        perplexity(model, tokenizer, seqlen=4096)
    with pytest.raises(WorkshopError, match="fewer than one window"):
        perplexity(model, tokenizer, text="short", seqlen=64)


def test_sizes_and_counts():
    model, _ = load_model("tiny-random", device="cpu")  # converted below: not the shared fixture
    counts = parameter_breakdown(model)
    hidden, inter, layers, vocab = 256, 512, 2, 384
    assert counts["mlp"] == 3 * hidden * inter * layers
    assert counts["attention"] == layers * (2 * hidden * hidden + 2 * hidden * 128)  # q,o + k,v (2 kv heads)
    assert counts["embeddings"] == vocab * hidden  # tied head counted once
    assert counts["norms"] == (2 * layers + 1) * hidden
    assert counts["total"] == sum(p.numel() for p in model.parameters())
    assert stored_bytes(model) == 4 * counts["total"]
    assert stored_bytes(model.to(torch.bfloat16)) == 2 * counts["total"]
    model.to(torch.float32)
    assert stored_bytes_by_kind(model)["mlp"] == 4 * counts["mlp"]


def test_stored_bytes_counts_packed_buffers():
    layer = torch.nn.Module()
    layer.register_buffer("packed", torch.zeros(128, 64, dtype=torch.uint8))  # 128x128 int4, two per byte
    layer.register_buffer("scales", torch.zeros(128, 1, dtype=torch.float16))
    assert stored_bytes(layer) == 128 * 64 + 128 * 2


def test_throughput_and_bound(tiny):
    model, _ = tiny
    t = measure_throughput(model, batch_size=2, prompt_len=16, new_tokens=4, repeats=2)
    assert t.prefill_tokens_per_s > 0 and t.decode_tokens_per_s > 0 and t.peak_memory_bytes is None
    assert decode_bound_tokens_per_s(1e9, 3e12, batch_size=4) == pytest.approx(12000)


def hf_labels_perplexity(model, ids, seqlen):
    """The usual hand-written transformers loop: the model's own shifted loss, averaged over windows."""
    losses = []
    for w in range(ids.numel() // seqlen):
        window = ids[w * seqlen:(w + 1) * seqlen][None]
        with torch.no_grad():
            losses.append(model(window, labels=window).loss.item())
    return math.exp(sum(losses) / len(losses))


def test_perplexity_matches_transformers_labels_loop(tiny):
    from common.data import load_text, tokenize
    model, tokenizer = tiny
    ours = perplexity(model, tokenizer, "python-docs", seqlen=128, max_windows=4, progress=False)
    ids = tokenize(tokenizer, load_text("python-docs"))[: 4 * 128]
    assert ours.ppl == pytest.approx(hf_labels_perplexity(model, ids, 128), rel=1e-4)
