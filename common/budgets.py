"""Every budget the labs and the CLI use, in one place, keyed by mode.

quick: a laptop or CI CPU; the whole model with small budgets (few windows, samples and steps) and the
       same code paths. Calibration has 8,192 tokens: GPTQ's and SparseGPT's Hessians need several
       times the widest layer input (1,536) to be well conditioned.
full:  a GPU; the protocol of the papers (2048-token windows over the whole evaluation text).
smoke: the check that every lab runs to its end with its exercises unsolved (make test, make
       test-labs): quick's code paths on the embedded model cut to its first few decoder
       layers, with one short window. Its numbers mean nothing; it is never chosen from the hardware.
`WORKSHOP_MODE=quick|full|smoke` overrides the choice made from the hardware.
"""
import os
from dataclasses import dataclass, replace

from .errors import WorkshopError

MODES = ("quick", "full", "smoke")


@dataclass(frozen=True)
class Budget:
    mode: str
    dtype: str                     # compute dtype for evaluation and training
    eval_seqlen: int               # tokens per perplexity window
    eval_max_windows: int | None   # None: every window of the evaluation text
    calib_samples: int             # calibration sequences for PTQ and one-shot pruning
    calib_seqlen: int
    train_steps: int               # optimizer steps for distillation / fine-tuning
    train_batch: int
    train_seqlen: int
    teacher_samples: int           # sequences sampled from the teacher for sequence-level KD
    generate_batch: int            # sequences generated at once (decode is cheap per sequence on a GPU)
    bench_repeats: int             # timed repeats (median reported)
    decode_tokens: int             # tokens generated when timing decode
    decode_batches: tuple          # batch sizes for the decode-throughput sweep
    prefill_shape: tuple           # (prompts, tokens) of a timed prefill: enough work to be compute-bound
    sweep_eval_windows: int | None # perplexity windows per point of a sweep (many models evaluated)
    sweep_sparsities: tuple        # sparsity levels of pruning curves
    sensitivity_layers: int        # decoder layers scanned one at a time in sensitivity studies
    long_context: int              # tokens for KV-cache experiments at long context
    pipeline_train_steps: int      # steps of each KD step of a pipeline (lab 05 runs fifteen): lab 04's budget, train_steps
    pipeline_finetune_steps: int   # steps of the short CE fine-tune that ends a pipeline's P step
    pipeline_eval_seqlen: int      # tokens per perplexity window after each step of a pipeline
    pipeline_eval_windows: int | None  # perplexity windows per text after each step of a pipeline
    cloze_items: int | None        # last-word items per text (common.cloze; None: every item)
    model_layers: int | None = None  # decoder layers load_model keeps of the embedded model (None: all; smoke mode)


QUICK = Budget(mode="quick", dtype="float32", eval_seqlen=512, eval_max_windows=3,
               calib_samples=16, calib_seqlen=512, train_steps=8, train_batch=4, train_seqlen=128,
               teacher_samples=4, generate_batch=4,
               bench_repeats=3, decode_tokens=8, decode_batches=(1, 4), prefill_shape=(1, 128),
               sweep_eval_windows=2, sweep_sparsities=(0.5,), sensitivity_layers=3, long_context=1024,
               pipeline_train_steps=8, pipeline_finetune_steps=0, pipeline_eval_seqlen=256, pipeline_eval_windows=1,
               cloze_items=256)
FULL = Budget(mode="full", dtype="bfloat16", eval_seqlen=2048, eval_max_windows=None,
              calib_samples=32, calib_seqlen=512, train_steps=300, train_batch=32, train_seqlen=512,
              teacher_samples=512, generate_batch=256,
              bench_repeats=10, decode_tokens=64, decode_batches=(1, 4, 16, 64, 256), prefill_shape=(16, 2048),
              sweep_eval_windows=None, sweep_sparsities=(0.3, 0.5, 0.6, 0.7, 0.8), sensitivity_layers=30,
              long_context=8192, pipeline_train_steps=300, pipeline_finetune_steps=50, pipeline_eval_seqlen=2048,
              pipeline_eval_windows=None, cloze_items=None)
SMOKE = replace(QUICK, mode="smoke", model_layers=2, eval_seqlen=256, eval_max_windows=1, calib_samples=4,
                calib_seqlen=128, train_steps=2, teacher_samples=2, generate_batch=2, bench_repeats=1,
                decode_tokens=4, sweep_eval_windows=1, sensitivity_layers=2, long_context=512,
                pipeline_train_steps=1, pipeline_eval_seqlen=64, pipeline_eval_windows=1, cloze_items=16)
BUDGETS = {"quick": QUICK, "full": FULL, "smoke": SMOKE}


def current_mode() -> str:
    """`WORKSHOP_MODE` if set, else full on a machine with a CUDA GPU and quick otherwise."""
    mode = os.environ.get("WORKSHOP_MODE", "").strip().lower()
    if mode:
        if mode not in MODES:
            raise WorkshopError(f"WORKSHOP_MODE={mode!r} is not a mode.",
                                f"Set WORKSHOP_MODE to one of {', '.join(MODES)}, or unset it.")
        return mode
    import torch
    return "full" if torch.cuda.is_available() else "quick"


def get_budget(mode: str | None = None, **overrides) -> Budget:
    """The budget for `mode` (default: the current mode), with optional field overrides."""
    mode = mode or current_mode()
    if mode not in MODES:
        raise WorkshopError(f"Unknown mode {mode!r}.", f"Use one of {', '.join(MODES)}.")
    return replace(BUDGETS[mode], **overrides)
