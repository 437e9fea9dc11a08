import hashlib
import os

import pytest
import torch

from common.errors import WorkshopError
from common.models import EMBEDDED_GGUF_MD5, find_embedded_gguf, load_model


def test_embedded_is_smollm2_135m(embedded):
    model, tokenizer = embedded
    config = model.config
    assert (config.num_hidden_layers, config.hidden_size, config.intermediate_size) == (30, 576, 1536)
    assert (config.num_attention_heads, config.num_key_value_heads, config.vocab_size) == (9, 3, 49152)
    assert model.model.embed_tokens.weight is model.lm_head.weight  # tied
    assert 134e6 < sum(p.numel() for p in model.parameters()) < 135e6
    assert tokenizer.eos_token == "<|im_end|>"  # the GGUF metadata says <|im_start|>; we fix it


def test_embedded_predicts_english(embedded):
    model, tokenizer = embedded
    ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        next_id = model(ids).logits[0, -1].argmax().item()
    assert tokenizer.decode(next_id).strip() == "Paris"


def test_embedded_weights_sit_on_q4_1_grid(embedded):
    """The checkpoint was published at Q4_1: each block of 32 weights holds at most 16 values."""
    weight = embedded[0].model.layers[0].mlp.down_proj.weight.detach()
    blocks = weight.reshape(-1, 32)
    assert max(len(torch.unique(b)) for b in blocks[:200]) <= 16


def test_embedded_dtype_and_gguf_location(embedded):
    path = find_embedded_gguf()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    model, _ = load_model("embedded", dtype="bfloat16", device="cpu")
    assert next(model.parameters()).dtype == torch.bfloat16


def test_gguf_override_must_exist(monkeypatch, tmp_path):
    monkeypatch.setenv("WORKSHOP_EMBEDDED_GGUF", str(tmp_path / "nope.gguf"))
    with pytest.raises(WorkshopError, match="not a file"):
        find_embedded_gguf()


def test_corrupt_gguf_is_refused_and_leaves_no_cache(monkeypatch, tmp_path):
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"GGUF" + os.urandom(1000))
    monkeypatch.setenv("WORKSHOP_EMBEDDED_GGUF", str(bad))
    monkeypatch.setenv("WORKSHOP_CACHE", str(tmp_path / "cache"))
    with pytest.raises(WorkshopError, match="md5"):
        load_model("embedded", device="cpu")
    assert not any((tmp_path / "cache").glob("embedded-*"))


def test_tiny_random_is_seeded_and_packable(tiny):
    model, tokenizer = tiny
    again, _ = load_model("tiny-random", device="cpu")
    for (name, a), (_, b) in zip(model.named_parameters(), again.named_parameters()):
        assert torch.equal(a, b), name
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            assert module.in_features % 128 == 0 and module.out_features % 128 == 0, name
    text = "héllo, wörld\n"
    assert tokenizer.decode(tokenizer(text).input_ids) == text


@pytest.mark.parametrize("spec, message", [
    ("not a model", "Unknown model spec"),
    ("someone/not-cached-anywhere", "not in the local Hugging Face cache"),
])
def test_bad_specs(spec, message):
    with pytest.raises(WorkshopError, match=message):
        load_model(spec, device="cpu")


def test_a_hub_id_without_network_fails_at_once_with_the_working_command(monkeypatch):
    import time
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HTTPS_PROXY", raising=False)
    monkeypatch.delenv("https_proxy", raising=False)
    began = time.perf_counter()
    with pytest.raises(WorkshopError, match="cannot be reached") as info:   # the tests block the network
        load_model("someone/not-cached-anywhere", device="cpu")
    assert time.perf_counter() - began < 5
    assert "hf download someone/not-cached-anywhere" in info.value.fix and "huggingface-cli" not in info.value.fix


def test_hf_hub_offline_is_honoured_without_trying_the_network(monkeypatch):
    import common.models
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(common.models, "hub_host_answers", lambda: pytest.fail("the network was tried"))
    with pytest.raises(WorkshopError, match="HF_HUB_OFFLINE=1"):
        load_model("someone/not-cached-anywhere", device="cpu")


def test_directory_checks(tmp_path, tiny):
    with pytest.raises(WorkshopError, match="no config.json"):
        load_model(str(tmp_path), device="cpu")
    model, tokenizer = tiny
    model.save_pretrained(tmp_path / "ckpt")
    tokenizer.save_pretrained(tmp_path / "ckpt")
    loaded, _ = load_model(str(tmp_path / "ckpt"), device="cpu")
    assert torch.equal(loaded.lm_head.weight, model.lm_head.weight)
    for f in (tmp_path / "ckpt").glob("*.safetensors"):
        f.unlink()
    with pytest.raises(WorkshopError, match="no .safetensors"):
        load_model(str(tmp_path / "ckpt"), device="cpu")


def test_cuda_requested_without_gpu():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(WorkshopError, match="no usable GPU"):
        load_model("tiny-random", device="cuda")


def test_md5_constant_matches_installed_wheel():
    digest = hashlib.md5(find_embedded_gguf().read_bytes()).hexdigest()
    assert digest == EMBEDDED_GGUF_MD5


def test_smoke_mode_cuts_the_embedded_model_and_only_in_smoke_mode(monkeypatch, embedded):
    from common.budgets import get_budget
    monkeypatch.setenv("WORKSHOP_MODE", "smoke")
    layers = get_budget().model_layers
    model, _ = load_model("embedded", device="cpu", progress=False)
    assert len(model.model.layers) == model.config.num_hidden_layers == layers < embedded[0].config.num_hidden_layers
    with torch.no_grad():
        assert model(torch.tensor([[1, 2, 3]])).logits.shape[-1] == model.config.vocab_size
    monkeypatch.setenv("WORKSHOP_MODE", "quick")
    assert get_budget().model_layers is None


def test_shaped_specs_have_the_published_parameter_counts():
    # Llama-3.2-1B and -3B as published (1,235,814,400 and 3,212,749,824 parameters, embeddings tied);
    # built on the meta device: shapes only, no memory, no time.
    from common.models import shaped_random
    counts = {spec: sum(p.numel() for p in shaped_random(spec, torch.bfloat16, torch.device("meta"))[0].parameters())
              for spec in ("llama-1b-shaped", "llama-3b-shaped", "llama-8b-layer")}
    assert counts["llama-1b-shaped"] == 1_235_814_400
    assert counts["llama-3b-shaped"] == 3_212_749_824
    # one Llama-3-8B layer with its two norms (218,112,000), embeddings and a separate head (2 x 128256 x 4096),
    # the final norm
    assert counts["llama-8b-layer"] == 218_112_000 + 2 * 128256 * 4096 + 4096


def test_smollm2_shaped_spec_has_the_embedded_models_shapes(embedded):
    from common.models import shaped_random
    shaped, _ = shaped_random("smollm2-135m-shaped", torch.bfloat16, torch.device("meta"))
    real = dict(embedded[0].named_parameters())
    assert {n: tuple(p.shape) for n, p in shaped.named_parameters()} == {n: tuple(p.shape) for n, p in real.items()}
    for key in ("rope_parameters", "num_key_value_heads", "head_dim", "tie_word_embeddings"):
        assert getattr(shaped.config, key) == getattr(embedded[0].config, key), key
    assert shaped.config.rms_norm_eps == pytest.approx(embedded[0].config.rms_norm_eps, rel=1e-6)  # GGUF: float32
