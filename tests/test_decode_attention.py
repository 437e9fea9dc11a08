"""The fused decode attention (kernels/decode_attention.py) against the PyTorch path it replaces in
LeanLlamaStep: apply_rotary_pos_emb, index_copy_ into the cache and SDPA with enable_gqa.

On a CPU the Triton kernel runs in Triton's interpreter; on a GPU (pytest on the device) compiled."""
import copy
import os

import pytest
import torch
import torch.nn.functional as F

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"  # must be set before triton compiles anything

from transformers.models.llama.modeling_llama import apply_rotary_pos_emb  # noqa: E402

import kernels.decode_attention as fused  # noqa: E402
from common.decode import StaticGreedyDecoder  # noqa: E402
from common.errors import WorkshopError  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOLERANCE = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.bfloat16: dict(rtol=2e-2, atol=2e-2)}
LAYERS, LAYER = 2, 1  # the kernel writes layer 1 of a two-layer cache


def step_inputs(batch, heads, kv_heads, head_dim, max_len, dtype, seed=0):
    """A step's q/k/v, rotary tables, caches full of earlier (random) entries, each row at its own
    position, and masks with nothing after the position and a hole before it; the last row sees only
    the second half of the cache (a first block with nothing to attend), whose first half holds keys
    large enough to swamp any softmax they would enter."""
    g = torch.Generator().manual_seed(seed)
    qkv = torch.randn(batch, 1, (heads + 2 * kv_heads) * head_dim, generator=g)
    angles = torch.arange(max_len)[:, None] / 10000 ** (torch.arange(0, head_dim, 2) / head_dim)
    cos, sin = torch.cat([angles, angles], -1).cos(), torch.cat([angles, angles], -1).sin()
    k_cache, v_cache = (torch.randn(LAYERS, batch, kv_heads, max_len, head_dim, generator=g) for _ in range(2))
    positions = torch.tensor([[max_len - 2 - 7 * b] for b in range(batch)])
    mask = torch.arange(max_len) <= positions[:, :, None, None]
    mask[:, ..., 1] = False
    mask[-1, ..., :max_len // 2] = False
    k_cache[:, -1, :, :max_len // 2] *= 1000
    return [t.to(DEVICE, dtype) for t in (qkv, cos, sin, k_cache, v_cache)] + [positions.to(DEVICE), mask.to(DEVICE)]


def reference(qkv, cos, sin, k_cache, v_cache, positions, mask, heads, kv_heads, head_dim, scaling):
    """LeanLlamaStep's PyTorch path, on layer LAYER of the caches, one row at a time (rows at different places)."""
    batch = qkv.shape[0]
    q, k, v = qkv.split([heads * head_dim, kv_heads * head_dim, kv_heads * head_dim], dim=-1)
    q = q.view(batch, 1, heads, head_dim).transpose(1, 2)
    k = k.view(batch, 1, kv_heads, head_dim).transpose(1, 2)
    v = v.view(batch, 1, kv_heads, head_dim).transpose(1, 2)
    q, k = apply_rotary_pos_emb(q, k, cos[positions], sin[positions], unsqueeze_dim=1)
    for b in range(batch):
        k_cache[LAYER, b].index_copy_(1, positions[b], k[b])
        v_cache[LAYER, b].index_copy_(1, positions[b], v[b])
    out = F.scaled_dot_product_attention(q, k_cache[LAYER], v_cache[LAYER], attn_mask=mask, scale=scaling,
                                         enable_gqa=True)
    return out.transpose(1, 2).reshape(batch, 1, heads * head_dim)


def assert_written_at(cache, before, expected, positions, tolerance):
    """`cache` is `before` except at each row's position of layer LAYER, which holds `expected`'s entries."""
    slot = torch.zeros(cache.shape[:4], dtype=torch.bool, device=cache.device)
    for b, position in enumerate(positions[:, 0].tolist()):
        slot[LAYER, b, :, position] = True
    assert torch.equal(cache[~slot], before[~slot])
    torch.testing.assert_close(cache[slot], expected[slot], **tolerance)


def run_both(shape, dtype, block_n, positions_for_reference=None):
    """The kernel and the reference (at `positions_for_reference` if given) on the same step: the kernel's
    output, the reference's, the caches the kernel wrote, the caches before, the reference's, the positions."""
    batch, heads, kv_heads, head_dim, max_len = shape
    qkv, cos, sin, k_cache, v_cache, positions, mask = step_inputs(batch, heads, kv_heads, head_dim, max_len, dtype)
    ref_k, ref_v = k_cache.clone(), v_cache.clone()
    ref_positions = positions if positions_for_reference is None else positions_for_reference
    expected = reference(qkv, cos, sin, ref_k, ref_v, ref_positions, mask, heads, kv_heads, head_dim, head_dim ** -0.5)
    before = k_cache.clone(), v_cache.clone()
    out = fused.decode_attention(qkv, cos, sin, k_cache, v_cache, LAYER, positions, mask, heads, kv_heads, head_dim,
                                 head_dim ** -0.5, block_n=block_n)
    return out, expected, (k_cache, v_cache), before, (ref_k, ref_v), positions


# (batch, heads, kv_heads, head_dim, max_len), block: one to three blocks of the cache, the last one partial
SHAPES = [((1, 4, 4, 64, 37), 16),     # no grouping
          ((2, 9, 3, 64, 37), 16),     # SmolLM2-135M's heads: 3 query heads per KV head
          ((2, 6, 2, 32, 100), 64)]    # head size 32


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape, block_n", SHAPES)
def test_the_kernel_is_the_pytorch_step(shape, block_n, dtype):
    out, expected, caches, before, ref_caches, positions = run_both(shape, dtype, block_n)
    assert out.dtype == dtype and out.shape == expected.shape
    torch.testing.assert_close(out, expected, **TOLERANCE[dtype])
    for cache, old, ref in zip(caches, before, ref_caches):
        assert_written_at(cache, old, ref, positions, TOLERANCE[dtype])


def test_a_wrong_slot_would_be_seen():
    # the reference one slot further on: the checks above fail on the output and on the cache
    out, _, caches, before, _, positions = run_both(SHAPES[1][0], torch.float32, 16)
    _, expected, _, _, ref_caches, _ = run_both(SHAPES[1][0], torch.float32, 16, positions_for_reference=positions + 1)
    with pytest.raises(AssertionError):
        torch.testing.assert_close(out, expected, **TOLERANCE[torch.float32])
    for cache, old, ref in zip(caches, before, ref_caches):
        with pytest.raises(AssertionError):
            assert_written_at(cache, old, ref, positions, TOLERANCE[torch.float32])


def test_the_lean_step_with_the_kernel_gives_the_models_tokens(tiny, monkeypatch):
    model = copy.deepcopy(tiny[0]).to(DEVICE)
    calls = []
    kernel = fused.decode_attention
    monkeypatch.setattr(fused, "decode_attention", lambda *args, **kw: calls.append(1) or kernel(*args, **kw))
    prompt = torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(5))
    tokens = []
    for options in ({}, dict(lean=True, fused_attention=True)):  # the model's own forward, then the kernel's
        decoder = StaticGreedyDecoder(model, batch_size=2, max_len=32, cuda_graph=False, **options)
        decoder.prefill(prompt)
        tokens.append(decoder.decode(10))
    assert torch.equal(tokens[1], tokens[0])
    assert len(calls) == 10 * model.config.num_hidden_layers  # every decode step of every layer, no prefill


def test_bad_input_is_refused(tiny):
    qkv, cos, sin, k_cache, v_cache, positions, mask = step_inputs(2, 4, 2, 32, 20, torch.float32)
    good = dict(qkv=qkv, cos=cos, sin=sin, k_cache=k_cache, v_cache=v_cache, layer=LAYER, positions=positions,
                mask=mask, heads=4, kv_heads=2, head_dim=32, scaling=0.2)
    fused.decode_attention(**good)
    for bad in (dict(qkv=qkv.expand(2, 3, -1)),          # a prompt, not one token
                dict(mask=mask.float()), dict(positions=positions.int()), dict(k_cache=k_cache[LAYER]),
                dict(v_cache=v_cache.half()), dict(cos=cos[:10]), dict(layer=LAYERS), dict(kv_heads=3)):
        with pytest.raises(WorkshopError):
            fused.decode_attention(**(good | bad))
    with pytest.raises(WorkshopError):
        StaticGreedyDecoder(tiny[0], 1, 8, lean=False, fused_attention=True)  # only the lean step has it
