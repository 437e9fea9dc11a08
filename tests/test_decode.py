import torch

from common.decode import StaticGreedyDecoder, measure_static_decode


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


def test_measure_static_decode_runs(tiny):
    result = measure_static_decode(tiny[0], batch_size=1, prompt_len=8, new_tokens=4, repeats=1)
    assert result["decode_tokens_per_s"] > 0 and result["cuda_graph"] is False
