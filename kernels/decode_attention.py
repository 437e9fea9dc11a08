"""A decode step's attention in one kernel (Triton): rotary embeddings, the KV-cache write and attention.

For one new token per sequence, `common.decode.LeanLlamaStep` otherwise runs per layer the rotary
embeddings of q and k, two cache writes and the attention with its grouped-query handling: several
kernels of a few microseconds each, however little they compute, times the number of layers.

One program per sequence and KV head:
  1. the head's new k and v from the row of the fused q/k/v projection: k rotated with the cos and
     sin of the sequence's position (the HF Llama convention x cos + rotate_half(x) sin), both stored
     at that position's slot of the cache, in the cache's dtype;
  2. the GROUP = heads // kv_heads query heads that share this KV head (GQA), rotated the same way,
     as the rows of one tile padded to 16 (the fewest rows a tensor-core dot takes): the KV head's
     cache is read once for all of them;
  3. attention over every slot of the cache in blocks of BLOCK_N, with an online softmax in fp32;
     slots the mask excludes get no weight. The slot just written is taken from registers: a
     program's own stores are not guaranteed visible to its later loads.
The dots take fp32 operands: as TF32 (10-bit mantissa, fp32's exponent) every bf16 or fp16 value is
exact, so nothing is lost against a bf16 dot, and Triton 3.6's interpreter, which runs the tests on
the CPU, multiplies bf16 operands as raw 16-bit integers.
Nothing is split along the cache, so there are only batch x kv_heads programs: plenty for the
course's contexts of a few hundred tokens. Thousands of tokens would want the cache split over more
programs and their partial softmaxes merged (flash-decoding).
"""
import torch
import triton
import triton.language as tl

from common.errors import WorkshopError

NEGATIVE = tl.constexpr(-1.0e30)  # "minus infinity" that stays finite under subtraction


@triton.jit
def _decode_attention_kernel(qkv_ptr, cos_ptr, sin_ptr, k_cache_ptr, v_cache_ptr, positions_ptr, mask_ptr, out_ptr,
                             layer, scaling, HEADS: tl.constexpr, KV_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr,
                             MAX_LEN: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr,
                             BLOCK_N: tl.constexpr, PRECISION: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    kv_head = tl.program_id(1)
    GROUP: tl.constexpr = HEADS // KV_HEADS
    HALF: tl.constexpr = HEAD_DIM // 2
    position = tl.load(positions_ptr + row)
    qkv = qkv_ptr + row * (HEADS + 2 * KV_HEADS) * HEAD_DIM
    cache = ((layer * tl.num_programs(0) + row) * KV_HEADS + kv_head) * MAX_LEN * HEAD_DIM

    # rotate_half(x)[d] is -x[d + D/2] in the first half and x[d - D/2] in the second: the sign goes into sin
    d = tl.arange(0, BLOCK_D)
    d_ok = d < HEAD_DIM
    partner = tl.where(d < HALF, d + HALF, d - HALF)
    cos = tl.load(cos_ptr + position * HEAD_DIM + d, mask=d_ok, other=0.0).to(tl.float32)
    sin = tl.load(sin_ptr + position * HEAD_DIM + d, mask=d_ok, other=0.0).to(tl.float32)
    sin = tl.where(d < HALF, -sin, sin)

    # 1. the new k and v, stored at the slot (a position past the cache writes nothing, not the next head's)
    k_at = qkv + (HEADS + kv_head) * HEAD_DIM
    k_new = tl.load(k_at + d, mask=d_ok, other=0.0).to(tl.float32) * cos + \
        tl.load(k_at + partner, mask=d_ok, other=0.0).to(tl.float32) * sin
    k_new = k_new.to(k_cache_ptr.dtype.element_ty)
    v_new = tl.load(qkv + (HEADS + KV_HEADS + kv_head) * HEAD_DIM + d, mask=d_ok, other=0.0)
    in_cache = d_ok & (position < MAX_LEN)
    tl.store(k_cache_ptr + cache + position * HEAD_DIM + d, k_new, mask=in_cache)
    tl.store(v_cache_ptr + cache + position * HEAD_DIM + d, v_new, mask=in_cache)

    # 2. the group's query heads as rows, rounded to the cache's dtype like the k they meet (then exact in TF32)
    h = tl.arange(0, BLOCK_H)
    q_ok = (h < GROUP)[:, None] & d_ok[None, :]
    q_at = qkv + (kv_head * GROUP + h[:, None]) * HEAD_DIM
    q = tl.load(q_at + d[None, :], mask=q_ok, other=0.0).to(tl.float32) * cos[None, :] + \
        tl.load(q_at + partner[None, :], mask=q_ok, other=0.0).to(tl.float32) * sin[None, :]
    q = q.to(k_cache_ptr.dtype.element_ty).to(tl.float32)

    # 3. online softmax over the cache: m the running maximum, z the running sum of exp, acc the weighted v
    m = tl.full([BLOCK_H], NEGATIVE, tl.float32)
    z = tl.zeros([BLOCK_H], tl.float32)
    acc = tl.zeros([BLOCK_H, BLOCK_D], tl.float32)
    for start in range(0, MAX_LEN, BLOCK_N):
        slots = start + tl.arange(0, BLOCK_N)
        slot_ok = slots < MAX_LEN
        keep = tl.load(mask_ptr + row * MAX_LEN + slots, mask=slot_ok, other=0) != 0
        offsets = cache + slots[:, None] * HEAD_DIM + d[None, :]
        kv_ok = slot_ok[:, None] & d_ok[None, :]
        new = (slots == position)[:, None]
        k = tl.where(new, k_new[None, :], tl.load(k_cache_ptr + offsets, mask=kv_ok, other=0.0)).to(tl.float32)
        v = tl.where(new, v_new[None, :], tl.load(v_cache_ptr + offsets, mask=kv_ok, other=0.0)).to(tl.float32)
        # [BLOCK_H, BLOCK_N]; cast back because under torch.compile a Python float arrives as fp64
        s = (tl.dot(q, tl.trans(k), input_precision=PRECISION) * scaling).to(tl.float32)
        # a masked score is NEGATIVE: its exp is 0, or 1 while nothing was kept yet, wiped by the first
        # rescale by exp(NEGATIVE - m) that follows (the slot being written is always kept in decode)
        s = tl.where(keep[None, :], s, NEGATIVE)
        m_new = tl.maximum(m, tl.max(s, 1))
        p = tl.exp(s - m_new[:, None])
        rescale = tl.exp(m - m_new)
        z = z * rescale + tl.sum(p, 1)
        acc = acc * rescale[:, None] + tl.dot(p, v, input_precision=PRECISION)
        m = m_new
    out = out_ptr + row * HEADS * HEAD_DIM + (kv_head * GROUP + h[:, None]) * HEAD_DIM + d[None, :]
    tl.store(out, (acc / z[:, None]).to(out_ptr.dtype.element_ty), mask=q_ok)


# A triton_op: torch.compile sees the kernel itself and that it writes the two caches. They are whole
# buffers, all layers, with the layer as an argument: a buffer the graph receives is written in place,
# whereas one layer's view of it was, traced on the CPU, copied out before the kernel and back after.
@torch.library.triton_op("workshop::decode_attention", mutates_args={"k_cache", "v_cache"})
def _decode_attention(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, k_cache: torch.Tensor,
                      v_cache: torch.Tensor, layer: int, positions: torch.Tensor, mask: torch.Tensor, heads: int,
                      kv_heads: int, scaling: float, block_n: int) -> torch.Tensor:
    _, batch, _, max_len, head_dim = k_cache.shape
    out = qkv.new_empty(batch, 1, heads * head_dim)
    torch.library.wrap_triton(_decode_attention_kernel)[(batch, kv_heads)](
        qkv, cos, sin, k_cache, v_cache, positions, mask, out, layer, scaling, HEADS=heads, KV_HEADS=kv_heads,
        HEAD_DIM=head_dim, MAX_LEN=max_len, BLOCK_H=max(16, triton.next_power_of_2(heads // kv_heads)),
        BLOCK_D=max(16, triton.next_power_of_2(head_dim)), BLOCK_N=block_n,
        PRECISION="ieee" if k_cache.dtype == torch.float32 else "tf32")
    return out


def check_decode_attention_inputs(qkv, cos, sin, k_cache, v_cache, layer, positions, mask, heads, kv_heads, head_dim,
                                  block_n):
    if qkv.dim() != 3 or qkv.shape[1] != 1:
        raise WorkshopError(f"decode_attention takes one new token per sequence, q/k/v [batch, 1, width]; got "
                            f"q/k/v of shape {tuple(qkv.shape)}.",
                            "Run prompts (length > 1) through PyTorch's attention, as LeanLlamaStep does for prefill.")
    if heads % kv_heads or head_dim % 2 or qkv.dtype not in (torch.float16, torch.bfloat16, torch.float32) or \
            block_n < 16 or block_n & (block_n - 1):
        raise WorkshopError(f"decode_attention needs whole groups of query heads per KV head, an even head size, "
                            f"float16/bfloat16/float32 and a power of two >= 16 as the block; got {heads} heads, "
                            f"{kv_heads} KV heads, head size {head_dim}, {qkv.dtype}, block {block_n}.",
                            "Use PyTorch's attention for this model (fused_attention=False).")
    layers, max_len = (k_cache.shape[0], k_cache.shape[3]) if k_cache.dim() == 5 else (0, -1)
    batch = qkv.shape[0]
    cache = (layers, batch, kv_heads, max_len, head_dim)
    expected = {"q/k/v": (qkv, (batch, 1, (heads + 2 * kv_heads) * head_dim), qkv.dtype),
                "k_cache": (k_cache, cache, qkv.dtype), "v_cache": (v_cache, cache, qkv.dtype),
                "cos": (cos, (max_len, head_dim), qkv.dtype), "sin": (sin, (max_len, head_dim), qkv.dtype),
                "positions": (positions, (batch, 1), torch.long), "mask": (mask, (batch, 1, 1, max_len), torch.bool)}
    for name, (tensor, shape, dtype) in expected.items():
        found = (tuple(tensor.shape), tensor.dtype, tensor.device, tensor.is_contiguous())
        if found != (shape, dtype, qkv.device, True):
            raise WorkshopError(f"decode_attention: {name} is a {'' if tensor.is_contiguous() else 'non-'}contiguous "
                                f"{tuple(tensor.shape)} {tensor.dtype} tensor on {tensor.device}; expected a "
                                f"contiguous {shape} {dtype} tensor on {qkv.device}.",
                                "Pass what LeanLlamaStep passes: the q/k/v projection of one step, the rotary tables "
                                "[max_len, head_dim], the caches of all layers, positions [batch, 1] and the mask.")
    if not 0 <= layer < layers:
        raise WorkshopError(f"decode_attention: layer {layer} of a cache of {layers} layers.",
                            "Pass the index of the layer within the caches.")


def decode_attention(qkv, cos, sin, k_cache, v_cache, layer: int, positions, mask, heads: int, kv_heads: int,
                     head_dim: int, scaling: float, block_n: int = 64):
    """One decode step of attention layer `layer`, as `LeanLlamaStep` computes it with PyTorch.

    qkv [batch, 1, (heads + 2 kv_heads) head_dim]: the new tokens' q, k and v projections side by side;
    cos, sin [max_len, head_dim]: the rotary tables; k_cache, v_cache [layers, batch, kv_heads, max_len,
    head_dim]: written at each row's position (`positions` [batch, 1], below max_len) of layer `layer`;
    mask [batch, 1, 1, max_len]: True where the row attends. Returns [batch, 1, heads head_dim] in qkv's dtype.
    """
    check_decode_attention_inputs(qkv, cos, sin, k_cache, v_cache, layer, positions, mask, heads, kv_heads, head_dim,
                                  block_n)
    return _decode_attention(qkv, cos, sin, k_cache, v_cache, layer, positions, mask, heads, kv_heads, float(scaling),
                             block_n)
