"""Fast greedy decode: a static KV cache and one CUDA graph per decode step.

Eager transformers code launches hundreds of small kernels per token from Python; for a small model
the GPU then waits on the CPU, far from the memory-bandwidth bound. Here every buffer a step touches
has a fixed address (the static cache, the next token, its position, the attention mask), so one
step can be captured once as a CUDA graph and replayed: one launch per token.
"""
import statistics
import time

import torch

from .errors import WorkshopError


class StaticGreedyDecoder:
    """Greedy generation for `batch_size` sequences of at most `max_len` tokens in total."""

    def __init__(self, model, batch_size: int, max_len: int, cuda_graph: bool = True):
        from transformers import StaticCache
        self.model, self.batch_size, self.max_len = model, batch_size, max_len
        self.device = next(model.parameters()).device
        self.cuda_graph = cuda_graph and self.device.type == "cuda"
        self.cache = StaticCache(config=model.config, max_cache_len=max_len)
        self.token = torch.zeros(batch_size, 1, dtype=torch.long, device=self.device)
        self.position = torch.zeros(batch_size, 1, dtype=torch.long, device=self.device)
        self.mask = torch.zeros(batch_size, 1, 1, max_len, dtype=torch.bool, device=self.device)
        self.graph = None

    @torch.inference_mode()
    def prefill(self, prompt: torch.Tensor) -> None:
        batch, length = prompt.shape
        if batch != self.batch_size or length >= self.max_len:
            raise WorkshopError(f"The prompt is {batch} x {length} but the decoder was built for batch "
                                f"{self.batch_size} and {self.max_len} tokens in total.",
                                "Build the decoder with the prompt's batch size and a larger max_len.")
        self.cache.reset()
        self.mask.zero_()
        self.mask[..., :length] = True
        causal = torch.ones(length, self.max_len, dtype=torch.bool, device=self.device).tril()
        causal[:, length:] = False
        positions = torch.arange(length, device=self.device).expand(batch, -1)
        logits = self.model(prompt.to(self.device), past_key_values=self.cache, position_ids=positions,
                            attention_mask=causal.expand(batch, 1, -1, -1), logits_to_keep=1).logits
        self.token.copy_(logits[:, -1:].argmax(-1))
        self.position.fill_(length)

    def _step(self) -> None:
        # Everything in place: the same code serves eager execution and graph capture.
        self.mask.index_fill_(3, self.position[0], True)
        logits = self.model(self.token, past_key_values=self.cache, position_ids=self.position,
                            attention_mask=self.mask).logits
        self.token.copy_(logits[:, -1:].argmax(-1))
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
                    self._step()
            if self.graph is not None and i >= 2:
                self.graph.replay()
            else:
                self._step()
            out.append(self.token.clone())
        return torch.cat(out, dim=1)


def measure_static_decode(model, batch_size: int = 1, prompt_len: int = 64, new_tokens: int = 128,
                          repeats: int = 5, cuda_graph: bool = True) -> dict:
    """Decode tokens/s of StaticGreedyDecoder (median of repeats, CUDA-synchronised)."""
    decoder = StaticGreedyDecoder(model, batch_size, prompt_len + new_tokens + 1, cuda_graph)
    prompt = torch.randint(0, model.config.vocab_size, (batch_size, prompt_len), generator=torch.Generator().manual_seed(0))
    times = []
    for _ in range(repeats + 1):  # the first run captures the graph and is not counted
        decoder.prefill(prompt)
        if decoder.device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        decoder.decode(new_tokens)
        if decoder.device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    seconds = statistics.median(times[1:])
    return {"batch_size": batch_size, "new_tokens": new_tokens, "cuda_graph": decoder.cuda_graph,
            "decode_tokens_per_s": batch_size * new_tokens / seconds, "ms_per_step": 1000 * seconds / new_tokens}
