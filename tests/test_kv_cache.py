import pytest
import torch

from common.errors import WorkshopError
from common.quant.formats import relative_error
from common.quant.kv_cache import KVQuantConfig, fake_quant_kv, kv_cache_bytes, quantized_kv_cache


@pytest.fixture(autouse=True)
def seeded():
    torch.manual_seed(0)


def test_kv_cache_bytes(tiny):
    model, _ = tiny
    cfg = model.config  # 2 layers, 2 KV heads of 64
    assert kv_cache_bytes(cfg, batch=3, context=100) == 2 * 2 * 2 * 64 * 3 * 100 * 2
    assert kv_cache_bytes(cfg, 3, 100, bits=4) * 4 == kv_cache_bytes(cfg, 3, 100, bits=16)


def test_per_channel_keys_beat_per_token_keys_with_outlier_channels():
    torch.manual_seed(0)
    keys = torch.randn(2, 128, 128)
    keys[..., [3, 70]] *= 30  # a few channels large in every token, as in real keys
    per_channel = fake_quant_kv(keys, "int4", "channel", token_group=32)
    per_token = fake_quant_kv(keys, "int4", "token", channel_group=64)
    # per token, the outliers set every token's scale and the ordinary channels round to zero
    ordinary = torch.ones(128, dtype=torch.bool)
    ordinary[[3, 70]] = False
    assert relative_error(keys[..., ordinary], per_channel[..., ordinary]) < 0.25
    assert relative_error(keys[..., ordinary], per_token[..., ordinary]) > 0.5
    assert relative_error(keys, per_channel) < relative_error(keys, per_token)


def test_partial_token_group_stays_in_full_precision():
    x = torch.randn(1, 40, 64)
    q = fake_quant_kv(x, "int2", "channel", token_group=32)
    assert torch.equal(q[:, 32:], x[:, 32:]) and not torch.equal(q[:, :32], x[:, :32])


def test_quantized_cache_changes_logits_more_at_fewer_bits(tiny):
    model, tokenizer = tiny
    ids = torch.randint(0, model.config.vocab_size, (2, 64))
    with torch.no_grad():
        reference = model(ids).logits
        diffs = {}
        for fmt in ("int8", "fp8_e4m3", "int4", "int2"):
            with quantized_kv_cache(model, KVQuantConfig(fmt, token_group=16)):
                diffs[fmt] = (model(ids).logits - reference).norm().item() / reference.norm().item()
        assert torch.equal(model(ids).logits, reference)  # hooks removed on exit
    assert diffs["int8"] < 0.01
    assert 0 < diffs["int8"] < diffs["int4"] < diffs["int2"]
    assert diffs["fp8_e4m3"] < diffs["int4"]


def test_bad_config():
    with pytest.raises(WorkshopError, match="not supported"):
        KVQuantConfig("int5")
    with pytest.raises(WorkshopError, match="axes"):
        KVQuantConfig("int8", key_axis="head")


def test_bits_per_value_count_the_scales():
    from common.quant.kv_cache import KVQuantConfig, kv_bits_per_value
    # INT4 KIVI: K a scale and zero per 32 tokens (+1 bit), V per token of a 64-wide head (+0.5 bit)
    assert kv_bits_per_value(KVQuantConfig("int4"), 64) == 4 + (1 + 0.5) / 2
    assert kv_bits_per_value(KVQuantConfig("fp8_e4m3"), 64) == 8 + (0.5 + 0.25) / 2
    assert kv_bits_per_value(KVQuantConfig("int8", key_axis="token"), 64) == 8 + 0.5
