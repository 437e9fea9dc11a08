"""Fast greedy decode: a static KV cache and one CUDA graph per decode step.

Eager transformers code launches hundreds of small kernels per token from Python; for a small model
the GPU then waits on the CPU, far from the memory-bandwidth bound. Here every buffer a step touches
has a fixed address (the static cache, the next token, its position, the attention mask), so one
step can be captured once as a CUDA graph and replayed: one launch per token.

A graph removes the CPU from the loop but keeps every kernel: eager code runs RMSNorm, rotary
embeddings and the MLP's gate as chains of small element-wise kernels, each a few microseconds on
the GPU however little it computes. `compile=True` first lets torch.compile (Inductor) fuse those
chains into a few generated kernels per layer; the compiled step is then captured the same way.
`lean=True` replaces the model's forward by `LeanLlamaStep`: fused projections, and (compiled, at
batch 1) GEMVs that Inductor fuses with the normalization or activation before them. On CUDA its
decode steps also run each layer's rotary embeddings, cache writes and attention as one Triton kernel
(`fused_attention`, kernels/decode_attention.py) instead of several. `fused_linears` (off by default)
lets INT4 layers that run the Marlin-style CUDA kernel take the RMSNorm before them, SiLU x up before
the down projection and the residual add after them into that kernel, which Inductor cannot fuse into:
fewer kernels per step, but on the H200 a slower step (kernels/marlin/NOTES.md, kernels/DECODE.json).
"""
import copy

import torch
import torch.nn.functional as F

from .errors import WorkshopError
from .hardware import median_seconds
from .quant.kernel_paths import marlin_for
from .quant.qlinear import QuantLinear


class TransformersStep:
    """One forward of the model itself, with transformers' StaticCache."""

    def __init__(self, model, max_len: int):
        from transformers import StaticCache
        self.model, self.cache = model, StaticCache(config=model.config, max_cache_len=max_len)

    def reset(self) -> None:
        self.cache.reset()

    def __call__(self, tokens, positions, mask):
        return self.model(tokens, past_key_values=self.cache, position_ids=positions, attention_mask=mask,
                          logits_to_keep=1).logits[:, -1]


def concat_linears(layers):
    """The layers that read the same input as one wider layer (their outputs side by side), or None.

    One matmul of N1 + N2 + N3 rows instead of three: fewer, fuller kernels. Packed QuantLinear
    layers concatenate their codes, scales and zeros row-wise, provided the formats match and the
    scales are per row (a per-tensor FP8 scale is not).
    """
    first = layers[0]
    if all(type(m) is torch.nn.Linear for m in layers):
        fused = torch.nn.Linear(first.in_features, sum(m.out_features for m in layers), bias=first.bias is not None,
                                device=first.weight.device, dtype=first.weight.dtype)
        fused.weight.data = torch.cat([m.weight.data for m in layers])
        if first.bias is not None:
            fused.bias.data = torch.cat([m.bias.data for m in layers])
        return fused
    same = all(isinstance(m, QuantLinear) and (m.fmt, m.group_size, m.activations, m.bias is None) ==
               (first.fmt, first.group_size, first.activations, first.bias is None) for m in layers)
    if not same or any(m.scales.shape[0] != m.out_features for m in layers) or \
            (first.activations and any(not torch.equal(m.input_scale, first.input_scale) for m in layers)):
        return None
    fused = copy.deepcopy(first)
    fused.out_features = sum(m.out_features for m in layers)
    for name in ("qweight", "scales", "zeros", "bias"):
        if getattr(first, name, None) is not None:
            setattr(fused, name, torch.cat([getattr(m, name) for m in layers]))
    return fused


class _Concatenated(torch.nn.Module):
    """Layers that cannot be fused, run one after another with their outputs side by side."""

    def __init__(self, layers):
        super().__init__()
        self.layers = torch.nn.ModuleList(layers)

    def forward(self, x):
        return torch.cat([m(x) for m in self.layers], dim=-1)


class LeanLlamaStep(torch.nn.Module):
    """A Llama-family forward written out for decoding, on the model's own modules and weights.

    What a step does, without the generality of the transformers code: q/k/v in one matmul and
    gate/up in one, rotary embeddings from a table, a KV cache owned here, and logits for the last
    position only. The same greedy tokens as the model itself (tested). With `fused_attention`, a step
    of one token runs each layer's rotary embeddings, cache write and attention as one Triton kernel;
    with `fused_linears`, each INT4 layer on the Marlin-style kernel also does its neighbours (`project`).
    """

    def __init__(self, model, batch_size: int, max_len: int, gemv_as_reduction: bool = False,
                 fused_attention: bool = False, fused_linears: bool = False):
        super().__init__()
        config = model.config
        self.gemv_as_reduction, self.fused_attention = gemv_as_reduction, fused_attention
        self.fused_linears = fused_linears
        self.silu_mlp = getattr(config, "hidden_act", None) in ("silu", "swish")  # what the kernel computes
        unsupported = [n for n, _ in model.named_modules() if n.endswith(("q_norm", "k_norm"))]
        if config.model_type not in ("llama", "mistral", "qwen2") or unsupported or \
                getattr(config, "sliding_window", None) and config.sliding_window < max_len:
            raise WorkshopError(f"The lean decode step covers Llama, Mistral and Qwen2 models without sliding "
                                f"windows or q/k norms; this is a {config.model_type} model.",
                                "Decode with lean=False (the model's own forward, still with a static cache).")
        self.model = model
        self.heads, self.kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        self.qkv, self.gate_up = torch.nn.ModuleList(), torch.nn.ModuleList()
        for layer in model.model.layers:
            a, m = layer.self_attn, layer.mlp
            self.qkv.append(concat_linears([a.q_proj, a.k_proj, a.v_proj]) or _Concatenated([a.q_proj, a.k_proj, a.v_proj]))
            self.gate_up.append(concat_linears([m.gate_proj, m.up_proj]) or _Concatenated([m.gate_proj, m.up_proj]))
        weight = model.model.embed_tokens.weight
        shape = (len(model.model.layers), batch_size, self.kv_heads, max_len, self.head_dim)
        self.register_buffer("k_cache", torch.zeros(shape, dtype=weight.dtype, device=weight.device))
        self.register_buffer("v_cache", torch.zeros(shape, dtype=weight.dtype, device=weight.device))
        # the model's own rotary module, evaluated once for every position
        positions = torch.arange(max_len, device=weight.device)[None]
        cos, sin = model.model.rotary_emb(weight[:1, None], positions)
        self.register_buffer("cos", cos[0])
        self.register_buffer("sin", sin[0])

    def reset(self) -> None:
        self.k_cache.zero_()
        self.v_cache.zero_()

    def linear(self, layer, x):
        """layer(x); for one row of a dense layer under torch.compile, as a multiply and a sum.

        Written that way, a GEMV is a reduction that Inductor generates itself and fuses with its
        neighbours (the RMSNorm before q/k/v, SiLU x up before down) instead of a separate cuBLAS call.
        Eagerly it would materialize the whole product, so it is used only when compiled.
        """
        if self.gemv_as_reduction and type(layer) is torch.nn.Linear and x.shape[:-1].numel() == 1:
            out = (x.unsqueeze(-2) * layer.weight).sum(-1)
            return out if layer.bias is None else out + layer.bias
        return layer(x)

    def project(self, layer, x, norm=None, act=None, residual=None):
        """layer(f(x)) (+ residual): f is the RMSNorm `norm`, or with `act` act(gate) * up of x = [gate, up].

        With `fused_linears`, an INT4 QuantLinear that runs on the Marlin-style kernel (a GPU, few rows)
        does it all in that one kernel (kernels/marlin, `w4a16_marlin`); anything else runs it in PyTorch,
        where the compiled step's Inductor fuses the pieces with its own kernels.
        """
        if self.fused_linears and isinstance(layer, QuantLinear) and (act is None or self.silu_mlp) and \
                (marlin := marlin_for(layer, x)) is not None:
            from kernels.marlin import w4a16_marlin
            out = w4a16_marlin(x, marlin.packed, marlin.splits_for(x), residual=residual, silu_mul=act is not None,
                               norm_weight=None if norm is None else norm.weight.to(x.dtype),
                               eps=getattr(norm, "variance_epsilon", 0.0))
            return out if layer.bias is None else out + layer.bias.to(x.dtype)
        if norm is not None:
            x = norm(x)
        if act is not None:
            gate, up = x.chunk(2, dim=-1)
            x = act(gate) * up
        out = self.linear(layer, x)
        return out if residual is None else residual + out

    def forward(self, tokens, positions, mask):
        from transformers.models.llama.modeling_llama import apply_rotary_pos_emb
        inner = self.model.model
        batch, length = tokens.shape
        h = inner.embed_tokens(tokens)
        fused = self.fused_attention and length == 1                            # prefill keeps PyTorch's attention
        if fused:  # imported when used: Triton is not installed everywhere the CPU path runs
            from kernels.decode_attention import decode_attention
        else:
            cos, sin = self.cos[positions], self.sin[positions]                 # [B, T, D]
            slots = positions[0]                                                # every sequence is at the same place
        q_size, kv_size = self.heads * self.head_dim, self.kv_heads * self.head_dim
        for i, layer in enumerate(inner.layers):
            attn, mlp = layer.self_attn, layer.mlp
            qkv = self.project(self.qkv[i], h, norm=layer.input_layernorm)
            if fused:
                out = decode_attention(qkv, self.cos, self.sin, self.k_cache, self.v_cache, i, positions, mask,
                                       self.heads, self.kv_heads, self.head_dim, attn.scaling)
            else:
                q, k, v = qkv.split([q_size, kv_size, kv_size], dim=-1)
                q = q.view(batch, length, self.heads, self.head_dim).transpose(1, 2)
                k = k.view(batch, length, self.kv_heads, self.head_dim).transpose(1, 2)
                v = v.view(batch, length, self.kv_heads, self.head_dim).transpose(1, 2)
                q, k = apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=1)
                self.k_cache[i].index_copy_(2, slots, k)
                self.v_cache[i].index_copy_(2, slots, v)
                out = F.scaled_dot_product_attention(q, self.k_cache[i], self.v_cache[i], attn_mask=mask,
                                                     scale=attn.scaling, enable_gqa=True)
                out = out.transpose(1, 2).reshape(batch, length, q_size)
            h = self.project(attn.o_proj, out, residual=h)
            gate_up = self.project(self.gate_up[i], h, norm=layer.post_attention_layernorm)
            h = self.project(mlp.down_proj, gate_up, act=mlp.act_fn, residual=h)
        return self.project(self.model.lm_head, h[:, -1], norm=inner.norm)


class StaticGreedyDecoder:
    """Greedy generation for `batch_size` sequences of at most `max_len` tokens in total.

    `lean=True` runs `LeanLlamaStep` instead of the model's own forward; `compile=True` compiles the
    step with torch.compile before the CUDA graph captures it. `fused_attention` (lean only; by default
    on CUDA) attends in decode steps with one Triton kernel per layer; on the CPU that kernel runs only
    in Triton's interpreter (TRITON_INTERPRET=1, for tests). `fused_linears` (lean only, off by default:
    measured slower, see the module's docstring) lets INT4 layers on the Marlin-style kernel do their
    RMSNorm, SiLU x up and residual add.
    """

    def __init__(self, model, batch_size: int, max_len: int, cuda_graph: bool = True, compile: bool = False,
                 lean: bool = False, fused_attention: bool | None = None, fused_linears: bool = False):
        self.model, self.batch_size, self.max_len = model, batch_size, max_len
        self.device = next(model.parameters()).device
        self.cuda_graph = cuda_graph and self.device.type == "cuda"
        self.fused_attention = lean and self.device.type == "cuda" if fused_attention is None else fused_attention
        self.fused_linears = fused_linears
        if (self.fused_attention or self.fused_linears) and not lean:
            raise WorkshopError("fused_attention and fused_linears change the lean decode step; lean=False runs "
                                "the model's own forward.", "Pass lean=True, or leave them out.")
        self.forward = LeanLlamaStep(model, batch_size, max_len, gemv_as_reduction=compile,
                                     fused_attention=self.fused_attention, fused_linears=self.fused_linears) \
            if lean else TransformersStep(model, max_len)
        self.token = torch.zeros(batch_size, 1, dtype=torch.long, device=self.device)
        self.position = torch.zeros(batch_size, 1, dtype=torch.long, device=self.device)
        self.mask = torch.zeros(batch_size, 1, 1, max_len, dtype=torch.bool, device=self.device)
        # fullgraph: a graph break would split the step and hand the pieces back to eager Python
        self.step = torch.compile(self._step, fullgraph=True, dynamic=False) if compile else self._step
        self.graph = None

    @torch.inference_mode()
    def prefill(self, prompt: torch.Tensor) -> None:
        batch, length = prompt.shape
        if batch != self.batch_size or length >= self.max_len:
            raise WorkshopError(f"The prompt is {batch} x {length} but the decoder was built for batch "
                                f"{self.batch_size} and {self.max_len} tokens in total.",
                                "Build the decoder with the prompt's batch size and a larger max_len.")
        self.forward.reset()
        self.mask.zero_()
        self.mask[..., :length] = True
        causal = torch.ones(length, self.max_len, dtype=torch.bool, device=self.device).tril()
        causal[:, length:] = False
        positions = torch.arange(length, device=self.device).expand(batch, -1)
        logits = self.forward(prompt.to(self.device), positions, causal.expand(batch, 1, -1, -1))
        self.token.copy_(logits.argmax(-1, keepdim=True))
        self.position.fill_(length)

    def _step(self) -> None:
        # Everything in place: the same code serves eager execution and graph capture.
        self.mask.index_fill_(3, self.position[0], True)
        logits = self.forward(self.token, self.position, self.mask)
        self.token.copy_(logits.argmax(-1, keepdim=True))
        self.position.add_(1)

    @torch.inference_mode()
    def decode(self, steps: int) -> torch.Tensor:
        """Run `steps` decode steps after `prefill`; returns the generated tokens [batch, steps + 1]."""
        if int(self.position[0, 0]) + steps >= self.max_len:
            raise WorkshopError(f"{steps} more tokens do not fit in max_len={self.max_len}.",
                                "Build the decoder with a larger max_len.")
        out = [self.token.clone()]
        for i in range(steps):
            if self.cuda_graph and self.graph is None and i == 2:  # capture after two eager warm-up steps
                self.graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(self.graph):
                    self.step()
            if self.graph is not None:  # captured at step 2 of the first call; later calls replay from step 0
                self.graph.replay()
            else:
                self.step()
            out.append(self.token.clone())
        return torch.cat(out, dim=1)


def measure_static_decode(model, batch_size: int = 1, prompt_len: int = 64, new_tokens: int = 128,
                          repeats: int = 5, cuda_graph: bool = True, compile: bool = False, lean: bool = False,
                          fused_attention: bool | None = None, fused_linears: bool = False) -> dict:
    """Decode tokens/s of StaticGreedyDecoder (median of repeats, CUDA-synchronised)."""
    decoder = StaticGreedyDecoder(model, batch_size, prompt_len + new_tokens + 1, cuda_graph, compile, lean,
                                  fused_attention, fused_linears)
    prompt = torch.randint(0, model.config.vocab_size, (batch_size, prompt_len), generator=torch.Generator().manual_seed(0))
    # each run after a prefill of its own; the first captures the graph and is not counted
    seconds = median_seconds(lambda: decoder.decode(new_tokens), decoder.device, repeats, warmup=1,
                             setup=lambda: decoder.prefill(prompt))
    return {"batch_size": batch_size, "new_tokens": new_tokens, "cuda_graph": decoder.cuda_graph, "compiled": compile, "lean": lean,
            "fused_attention": decoder.fused_attention, "fused_linears": decoder.fused_linears,
            "decode_tokens_per_s": batch_size * new_tokens / seconds, "ms_per_step": 1000 * seconds / new_tokens}
