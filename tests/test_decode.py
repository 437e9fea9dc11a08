import copy
import time

import pytest
import torch

from common.decode import StaticGreedyDecoder, concat_linears, measure_static_decode
from common.quant.qlinear import QuantLinear, replace_linears


def test_static_decoder_matches_transformers_greedy(tiny):
    model, _ = tiny
    prompt = torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(3))
    expected = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=9, do_sample=False,
                              pad_token_id=0)[:, 12:]
    decoder = StaticGreedyDecoder(model, batch_size=2, max_len=32)
    decoder.prefill(prompt)
    assert torch.equal(decoder.decode(8), expected)
    decoder.prefill(prompt)  # a second prompt reuses every buffer
    assert torch.equal(decoder.decode(8), expected)


def greedy(model, prompt, max_len, steps, **options):
    """A StaticGreedyDecoder built with `options`, prefilled with `prompt`: (decoder, its next `steps` tokens)."""
    decoder = StaticGreedyDecoder(model, batch_size=prompt.shape[0], max_len=max_len, **options)
    decoder.prefill(prompt)
    return decoder, decoder.decode(steps)


def test_static_decode_speed_is_the_decode_steps_alone(tiny, monkeypatch):
    """Tokens/s is batch x new tokens over the time of the decode steps, the prefill before each run not
    counted: with steps of 50 ms after a 400 ms prefill (a decoder whose work is timed sleeps; the real
    steps are tested above), 2 sequences decode at just under 40 tokens/s (about 13 if the prefill were
    counted) and a step takes just over 50 ms."""
    monkeypatch.setattr(StaticGreedyDecoder, "prefill", lambda self, prompt: time.sleep(0.4))
    monkeypatch.setattr(StaticGreedyDecoder, "decode", lambda self, steps: time.sleep(0.05 * steps))
    result = measure_static_decode(tiny[0], batch_size=2, prompt_len=8, new_tokens=4, repeats=2)
    assert 0.7 * 40 < result["decode_tokens_per_s"] <= 40 and result["cuda_graph"] is False
    assert result["ms_per_step"] == pytest.approx(1000 * 2 / result["decode_tokens_per_s"])


def test_compiled_decoder_gives_the_same_tokens(tiny):
    model, _ = tiny
    prompt = torch.randint(0, 256, (1, 10), generator=torch.Generator().manual_seed(4))
    _, eager = greedy(model, prompt, 24, 6)
    _, compiled = greedy(model, prompt, 24, 6, compile=True)
    assert torch.equal(compiled, eager)


@pytest.mark.parametrize("quantized", [False, True])
def test_lean_step_gives_the_models_tokens(tiny, quantized):
    model, _ = tiny
    if quantized:  # packed INT4 layers: q/k/v and gate/up are fused by concatenating codes, scales and zeros
        model = replace_linears(copy.deepcopy(model), "int4", group_size=64, progress=False)
    prompt = torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(5))
    _, reference = greedy(model, prompt, 32, 10)
    lean, tokens = greedy(model, prompt, 32, 10, lean=True)
    assert torch.equal(tokens, reference)
    step = lean.forward
    assert all(type(m).__name__ != "_Concatenated" for m in list(step.qkv) + list(step.gate_up))


def test_concat_linears_is_the_same_map():
    layers = [torch.nn.Linear(32, n, bias=True) for n in (16, 8, 8)]
    x = torch.randn(3, 32)
    assert torch.allclose(concat_linears(layers)(x), torch.cat([m(x) for m in layers], -1), atol=1e-6)
    packed = [QuantLinear.from_linear(m, "int4", 16) for m in layers]
    assert torch.equal(concat_linears(packed)(x), torch.cat([m(x) for m in packed], -1))
    mixed = [QuantLinear.from_linear(layers[0], "int4", 16), QuantLinear.from_linear(layers[1], "int4", 32)]
    assert concat_linears(mixed) is None  # different grids: the layers stay separate


def test_compiled_lean_step_with_fused_gemvs_gives_the_models_tokens(tiny):
    model, _ = tiny
    prompt = torch.randint(0, 256, (1, 10), generator=torch.Generator().manual_seed(6))
    _, reference = greedy(model, prompt, 24, 6)
    lean, tokens = greedy(model, prompt, 24, 6, compile=True, lean=True)
    assert lean.forward.gemv_as_reduction
    assert torch.equal(tokens, reference)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the Marlin-style kernel needs a CUDA GPU (sm_80+)")
def test_fused_linears_compute_the_same_step_without_separate_norms_or_silu(tiny):
    from common.decode import LeanLlamaStep
    model = replace_linears(copy.deepcopy(tiny[0]).to("cuda", torch.bfloat16), "int4", group_size=64, progress=False)
    layers, length, max_len = model.config.num_hidden_layers, 8, 16
    prompt = torch.randint(0, 256, (1, length), generator=torch.Generator().manual_seed(7)).cuda()
    causal = torch.ones(length, max_len, dtype=torch.bool, device="cuda").tril()
    causal[:, length:] = False
    positions = torch.arange(length, device="cuda")[None]
    next_mask = torch.arange(max_len, device="cuda") <= length
    logits, ops = {}, {}
    for fused in (False, True):
        step = LeanLlamaStep(model, 1, max_len, fused_linears=fused)
        with torch.inference_mode(), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            prefill = step(prompt, positions, causal[None, None])        # 8 rows: the kernel takes them too
            one = step(prefill.argmax(-1, keepdim=True), positions[:, -1:] + 1, next_mask[None, None, None])
        logits[fused] = torch.cat([prefill, one]).float()
        ops[fused] = [e.name for e in prof.events()]
    head_fused = isinstance(model.lm_head, QuantLinear)  # the final norm goes into the head's kernel only then
    assert ops[False].count("aten::rsqrt") == 2 * (2 * layers + 1) and ops[False].count("aten::silu") == 2 * layers
    assert ops[True].count("aten::rsqrt") == (0 if head_fused else 2) and "aten::silu" not in ops[True]
    scale = logits[False].abs().max()
    assert (logits[True] - logits[False]).abs().max() <= 0.03 * scale
