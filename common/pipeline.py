"""Compression as a pipeline: a recipe is an ordered list of steps, each a model -> model technique
with its config (llm-compressor's shape), run in order and measured after every step.

    recipe = [WidthPrune(mlp=0.3), Distill(), NF4()]          # P -> KD -> Q
    result = run_pipeline(model, tokenizer, recipe, protocol, teacher=teacher)

The steps mirror the ordering study (arXiv 2511.19495, Qwen2.5-3B): P removes 30% of the MLP's
intermediate channels, scored by 0.5 x the L1 norm of their gate/up rows + 0.5 x their mean |gate
activation| (each normalized), then fine-tunes briefly on the data's cross-entropy (no teacher); KD trains the student on 0.7 x CE + 0.3 x T^2 x KL from the teacher; Q is
NF4 stored as bitsandbytes stores it, packed 4-bit codes that no gradient reaches, so any training
after Q only moves what stayed float. `NF4(qat=True)` instead keeps a float weight under an NF4
forward pass (a straight-through estimator), so that a later KD step can move the quantized weights;
the pipeline packs them when it ends.

Beyond the study's three, a recipe may hold INT4 (round-to-nearest groups, packed or QAT: the
deployment stacks' format), KV (the KV cache quantized from there on), MQ (modelopt's
quantization; a KD step with engine="modelopt" after it is modelopt's QAT/QAD path) and LoRA
(QLoRA: adapters added to the frozen packed codes of an earlier Q or INT4 step and trained with the
KD step's loss and budget; everything else stays frozen).
`check_recipe` refuses, before any step runs, a recipe whose earlier steps make a later one
impossible (weights quantized twice, P after modelopt's quantizers, LoRA without packed codes under
it or P after it).

A step is a frozen dataclass (its options, checked when it is made) with `apply(model, context)`, which
returns (model, record fields or None); `context` (StepContext) holds what the run shares: calibration
and training ids, the teacher, the budget, and what earlier steps left (the weight quantizer, the KV
format). A new step is one such class and one line in STEPS.

After every step the record holds perplexity on each evaluation text, stored bytes, parameters, wall
time and, for a training step, the fraction of the model's weights that a gradient reached.
`pipeline_protocol` is the data protocol of lab 05 and `workshop pipeline` (the mode's pipeline
budget); `final_ppl` reads the final perplexities of one family (packed NF4 or QAT) from result rows,
this run's or a recorded run's, so that a lab can judge either.
"""
import copy
import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from torch.nn.utils import parametrize

from .errors import WorkshopError


@dataclass
class StepContext:
    """What the steps of one pipeline run share."""
    calib: torch.Tensor | None          # calibration ids (P's importance, modelopt's calibration)
    train_ids: torch.Tensor | None      # training text, where a step trains
    teacher: object
    budget: object
    progress: bool
    quantizer: object = None            # the NF4/INT4 step that quantized the weights (P quantizes again with it)
    kv: object = None                   # the KV-cache format (KVQuantConfig) every later evaluation sees


class Step:
    """What every step has; each step says what differs (and `apply`)."""
    name = "?"
    quantizes_weights = False   # the weights are quantized once (check_recipe)
    needs_teacher = False       # its training distils from the teacher

    @property
    def label(self) -> str:
        """P, KD, Q, INT4, KV(int8), Q(modelopt); (QAT) after a trainable quantizer, (modelopt) after its KD."""
        return self.name + ("(QAT)" if getattr(self, "qat", False) else "")

    def trains(self, budget) -> bool:
        return False

    def apply(self, model, context: StepContext):
        """(the model after this step, fields for its record or None)."""
        raise NotImplementedError


@dataclass(frozen=True)
class WidthPrune(Step):
    """P: remove `mlp` of every layer's MLP channels (the study's importance); the channels kept are a
    multiple of `round_to`, so that a 4-bit block (64) still divides the down projection's inputs.
    Then `finetune_steps` of CE-only training, as the study's P ends (None: the mode's budget; 0: none);
    like any training step, it moves only what is still float."""
    mlp: float = 0.3
    round_to: int = 64
    finetune_steps: int | None = None
    finetune_lr: float = 1e-4
    name = "P"

    def __post_init__(self):
        if not 0 < self.mlp < 1:
            raise WorkshopError(f"WidthPrune(mlp={self.mlp}): the fraction removed must be in (0, 1).",
                                "Give e.g. mlp=0.3 (the study's 30%).")
        if (self.finetune_steps is not None and self.finetune_steps < 0) or self.finetune_lr <= 0:
            raise WorkshopError(f"WidthPrune(finetune_steps={self.finetune_steps}, finetune_lr={self.finetune_lr}) "
                                "is out of range.", "Give finetune_steps >= 0 (0: no fine-tune) and a positive lr.")

    def steps(self, budget) -> int:
        return budget.pipeline_finetune_steps if self.finetune_steps is None else self.finetune_steps

    def trains(self, budget) -> bool:
        return bool(self.steps(budget))

    def apply(self, model, context: StepContext):
        model = _prune(model, self, context.calib, context.quantizer)
        if not self.steps(context.budget):
            return model, None
        return _train(model, None, context.train_ids, context.budget, context.progress, steps=self.steps(context.budget),
                      ce_weight=1.0, temperature=1.0, lr=self.finetune_lr)


@dataclass(frozen=True)
class Distill(Step):
    """KD: ce_weight x CE + (1 - ce_weight) x T^2 x KL from the teacher; steps None: the mode's pipeline budget.
    engine "modelopt": the same loss and budget through modelopt.torch.distill (its QAD path)."""
    steps: int | None = None
    ce_weight: float = 0.7
    temperature: float = 2.0
    lr: float = 2e-4
    engine: str = "ours"
    name = "KD"
    needs_teacher = True

    def __post_init__(self):
        if self.steps is not None and self.steps < 1:
            raise WorkshopError(f"Distill(steps={self.steps}) trains nothing.", "Give steps >= 1, or leave it out.")
        from .distill.train import DistillConfig
        # the training's own config checks the loss weights and the rate (one validator, not two)
        DistillConfig(steps=self.steps or 1, ce_weight=self.ce_weight, temperature=self.temperature, lr=self.lr)
        if self.engine not in ("ours", "modelopt"):
            raise WorkshopError(f"Distill(engine={self.engine!r}) is not an engine here.", "Use 'ours' or 'modelopt'.")

    @property
    def label(self) -> str:
        return "KD(modelopt)" if self.engine == "modelopt" else self.name

    def trains(self, budget) -> bool:
        return True

    def apply(self, model, context: StepContext):
        return _distill(model, self, context.teacher, context.train_ids, context.budget, context.progress)


@dataclass(frozen=True)
class NF4(Step):
    """Q: NF4 weights in groups of `group_size` (QLoRA's blocks); packed (frozen, as bitsandbytes) or QAT (trainable)."""
    group_size: int = 64
    qat: bool = False
    name = "Q"

    def __post_init__(self):
        if self.group_size < 2 or self.group_size % 2:
            raise WorkshopError(f"NF4(group_size={self.group_size}) is not an even group size.", "Use 64 (or 32, 128).")

    def grid(self):
        from .quant.nf4 import NF4Config
        return NF4Config(group_size=self.group_size)

    quantizes_weights = True

    def apply(self, model, context: StepContext):
        context.quantizer = self
        return _quantize(model, self), None


@dataclass(frozen=True)
class INT4(Step):
    """Q as deployment stacks store it: INT4 weights rounded to nearest in groups of `group_size`
    (asymmetric: a zero point per group, as the W4A16 kernels take it); packed or QAT."""
    group_size: int = 64
    symmetric: bool = False
    qat: bool = False
    name = "INT4"

    def __post_init__(self):
        if self.group_size < 2 or self.group_size % 2:
            raise WorkshopError(f"INT4(group_size={self.group_size}) is not an even group size.", "Use 64 or 128.")

    def grid(self):
        from .quant.rtn import RTNConfig
        return RTNConfig(bits=4, group_size=self.group_size, symmetric=self.symmetric)

    quantizes_weights = True
    apply = NF4.apply   # the same step on another grid


@dataclass(frozen=True)
class LoRA(Step):
    """QLoRA: adapters of `rank` (scaled by alpha / rank) on every decoder linear of a model whose
    weights an earlier Q or INT4 step packed, trained by the KD step's loss on the KD step's budget
    (steps None: the mode's pipeline budget). The codes and every other parameter stay frozen. The
    rate is its own: B starts at zero, and at KD's 2e-4 quick mode's 8 steps left the adapters where
    they began (1e-3 closed most of frozen NF4's gap to QAT, on the embedded model, 2026-12-08)."""
    rank: int = 8
    alpha: float = 16.0
    steps: int | None = None
    lr: float = 1e-3
    name = "LoRA"
    needs_teacher = True

    def __post_init__(self):
        self.adapters()   # LoRAConfig checks rank and alpha,
        self.training()   # Distill the steps and the rate

    def adapters(self):
        from .quant.lora import LoRAConfig
        return LoRAConfig(rank=self.rank, alpha=self.alpha)

    def training(self) -> Distill:
        """The KD step it trains as: Distill's loss, with this step's budget and rate."""
        return Distill(steps=self.steps, lr=self.lr)

    def trains(self, budget) -> bool:
        return True

    def apply(self, model, context: StepContext):
        from .quant.lora import add_lora
        return _distill(add_lora(model, self.adapters()), self.training(), context.teacher, context.train_ids,
                        context.budget, context.progress)


@dataclass(frozen=True)
class KVCache(Step):
    """KV: the keys and values the attention caches, quantized KIVI-style (keys per channel, values
    per token) from here on; the weights do not change, every later evaluation sees the cache."""
    fmt: str = "int8"
    token_group: int = 32
    name = "KV"

    def __post_init__(self):
        self.cache_config()   # checks the format

    @property
    def label(self) -> str:
        return f"KV({self.fmt})"

    def cache_config(self):
        from .quant.kv_cache import KVQuantConfig
        return KVQuantConfig(fmt=self.fmt, token_group=self.token_group)

    def apply(self, model, context: StepContext):
        context.kv = self.cache_config()
        return model, None


@dataclass(frozen=True)
class ModeloptQuantize(Step):
    """Q through nvidia-modelopt: `mtq.quantize` with one of the configurations compared in lab 02
    (fake-quantized, so a later KD step trains through modelopt's quantizers: its QAT/QAD path)."""
    config: str = "INT4_BLOCKWISE_G64"
    name = "Q(modelopt)"

    def __post_init__(self):
        from .quant.modelopt_ptq import CONFIGS
        if self.config not in CONFIGS:
            raise WorkshopError(f"ModeloptQuantize(config={self.config!r}) is not a configuration compared here.",
                                f"Use one of {', '.join(CONFIGS)}.")

    quantizes_weights = True

    def apply(self, model, context: StepContext):
        from .quant.modelopt_ptq import ModeloptConfig, quantize_modelopt
        return quantize_modelopt(model, ModeloptConfig(self.config), context.calib, progress=False), None


STEPS = {"P": WidthPrune, "KD": Distill, "Q": NF4, "INT4": INT4, "KV": KVCache, "MQ": ModeloptQuantize,
         "LORA": LoRA}  # the registry (recipe files may spell a name in any case)
ORDER_STEPS = ("P", "KD", "Q")  # the study's three
ORDERS = ["P,KD,Q", "KD,P,Q", "P,Q,KD", "Q,P,KD", "Q,KD,P", "KD,Q,P"]  # the study's six
QUANTIZE_BEFORE_PRUNE = ("Q-P-KD", "Q-KD-P", "KD-Q-P")  # the study's worst three


def recipe_from_order(order: str, qat: bool = False) -> list:
    """'P,KD,Q' -> [WidthPrune(), Distill(), NF4()]: each of the three steps exactly once."""
    names = [n.strip().upper() for n in order.split(",") if n.strip()]
    unknown = [n for n in names if n not in ORDER_STEPS]
    if unknown:
        raise WorkshopError(f"--order {order}: unknown step {', '.join(unknown)}.",
                            f"Use the steps {', '.join(ORDER_STEPS)}, e.g. --order P,KD,Q.")
    if sorted(names) != sorted(ORDER_STEPS):
        raise WorkshopError(f"--order {order} must name each of {', '.join(ORDER_STEPS)} exactly once.",
                            "Give all three, e.g. --order P,KD,Q (or a --recipe file for any list of steps).")
    return [NF4(qat=qat) if n == "Q" else STEPS[n]() for n in names]


def recipe_from_file(path) -> list:
    """A JSON or YAML list of steps: [{"step": "P", "mlp": 0.3}, {"step": "KD", "steps": 100}, {"step": "Q"}]."""
    path = Path(path)
    if not path.is_file():
        raise WorkshopError(f"--recipe {path} is not a file.", "Give the path of a JSON or YAML recipe.")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix in (".yaml", ".yml"):
            import yaml
            items = yaml.safe_load(text)
        else:
            items = json.loads(text)
    except Exception as e:
        raise WorkshopError(f"--recipe {path} does not parse: {type(e).__name__}: {e}".splitlines()[0],
                            "Write a list of steps, e.g. [{\"step\": \"P\", \"mlp\": 0.3}, {\"step\": \"KD\"}, "
                            "{\"step\": \"Q\"}].")
    if not isinstance(items, list) or not items or not all(isinstance(i, dict) and "step" in i for i in items):
        raise WorkshopError(f"--recipe {path} is not a non-empty list of steps, each with a 'step' key.",
                            "Write e.g. [{\"step\": \"P\", \"mlp\": 0.3}, {\"step\": \"KD\"}, {\"step\": \"Q\"}].")
    recipe = []
    for item in items:
        options = {k: v for k, v in item.items() if k != "step"}
        kind = STEPS.get(str(item["step"]).upper())
        if kind is None:
            raise WorkshopError(f"--recipe {path}: unknown step {item['step']!r}.", f"Use {', '.join(STEPS)}.")
        try:
            recipe.append(kind(**options))
        except TypeError as e:
            raise WorkshopError(f"--recipe {path}: step {item['step']} takes no such option ({e}).",
                                f"Options of {kind.__name__}: {', '.join(kind.__dataclass_fields__)}.")
    return check_recipe(recipe, f"--recipe {path}")


def check_recipe(recipe: list, source: str = "The recipe") -> list:
    """Refuse, before any step runs, a recipe whose earlier steps make a later one impossible: a
    second weight quantization (Q, INT4 or MQ) of weights already quantized, P after a modelopt
    quantization (its fake quantizers cannot be sliced), LoRA where no packed Q or INT4 step came
    before it (QLoRA's adapters sit on frozen codes: on float or QAT weights, training the weights
    themselves is the stronger choice, and modelopt's quantizers are not packed), a second LoRA, and P
    after LoRA (the adapters would have to be sliced with the channels). One message names the step
    and why; the recipe is returned unchanged when every step can run."""
    if not recipe:
        raise WorkshopError(f"{source} has no steps.", "Give at least one step, e.g. --order P,KD,Q.")
    quantized_by = None   # (number, label) of the step that quantized the weights
    adapted_by = None     # the number of the LoRA step
    for number, step in enumerate(recipe, start=1):
        label = step_label(step)
        quantizer = recipe[quantized_by[0] - 1] if quantized_by else None
        if isinstance(step, LoRA) and (quantizer is None or not isinstance(quantizer, (NF4, INT4)) or quantizer.qat):
            raise WorkshopError(f"{source}: step {number} (LoRA) adds adapters to frozen packed codes, and "
                                + (f"step {quantized_by[0]} ({quantized_by[1]}) leaves none." if quantizer else
                                   "no step before it quantizes the weights."),
                                "Put a packed Q (NF4) or INT4 step before it, e.g. [Q, LoRA] (QLoRA); with QAT "
                                "or unquantized weights, a KD step trains the weights themselves.")
        if isinstance(step, (LoRA, WidthPrune)) and adapted_by:
            raise WorkshopError(f"{source}: step {number} ({label}) comes after the LoRA step (step {adapted_by}).",
                                "Keep one LoRA step, after the pruning and the quantization: [P, KD, Q, LoRA].")
        if step.quantizes_weights and quantized_by:
            raise WorkshopError(f"{source}: step {number} ({label}) would quantize weights that step {quantized_by[0]} "
                                f"({quantized_by[1]}) has already quantized.",
                                "Quantize the weights once: remove one of the two steps (a KV step quantizes the "
                                "cache, not the weights, and may come anywhere).")
        if isinstance(step, WidthPrune) and quantized_by and isinstance(recipe[quantized_by[0] - 1], ModeloptQuantize):
            raise WorkshopError(f"{source}: step {number} (P) comes after a modelopt quantization (step "
                                f"{quantized_by[0]}, {quantized_by[1]}), whose quantizers cannot be pruned here.",
                                "Prune before the modelopt step, or quantize with Q (NF4) or INT4, which are "
                                "quantized again after pruning.")
        if step.quantizes_weights:
            quantized_by = (number, label)
        if isinstance(step, LoRA):
            adapted_by = number
    return recipe


def step_label(step) -> str:
    return step.label


def recipe_label(recipe: list) -> str:
    return "-".join(step_label(step) for step in recipe)


# ---------------------------------------------------------------------------------------------
# The steps
# ---------------------------------------------------------------------------------------------
def _prune(model, step: WidthPrune, calib, quantizer):
    """Width pruning with the study's importance (the fine-tune that follows is the runner's). A
    quantized model is pruned as a deployment stack would: packed 4-bit layers are unpacked to their
    grid values, sliced, and quantized again with `quantizer` (the step that quantized them: the down
    projection's groups change, so it is rounded once more); under QAT the float weights are sliced and
    the rounding forward pass is put back."""
    from .prune.width import WidthPruneConfig, prune_width
    from .quant.qat import finish_qat, is_qat, prepare_qat
    from .quant.packing import unpack_quantized
    if _modelopt_quantized(model):
        raise WorkshopError("A WidthPrune step after a modelopt quantization is not supported here.",
                            "Prune before the modelopt step, or quantize with NF4/INT4 (which re-quantize after pruning).")
    config = WidthPruneConfig(mlp_fraction=step.mlp, importance="study", round_to=step.round_to)
    if is_qat(model):
        model = prune_width(finish_qat(model, round_weights=False), config, calib)
        return prepare_qat(model, quantizer.grid())
    packed = unpack_quantized(model)
    model = prune_width(model, config, calib)
    if packed:
        model = _quantize(model, quantizer)
    return model


def _quantize(model, step):
    from .quant.qat import prepare_qat, quantize_with
    from .quant.packing import pack_quantized
    if step.qat:
        return prepare_qat(model, step.grid())
    return pack_quantized(quantize_with(model, step.grid()), progress=False)


def _modelopt_quantized(model) -> bool:
    return any(name.endswith("weight_quantizer") for name, _ in model.named_modules())


def weight_count(model) -> int:
    """Parameters, counting the weights that packed layers store as codes (buffers, not parameters)."""
    from .quant.qlinear import QuantLinear
    return sum(p.numel() for p in model.parameters()) + sum(
        m.in_features * m.out_features for m in model.modules() if isinstance(m, QuantLinear))


def weights_reached_by_gradient(model, ids: torch.Tensor) -> float:
    """The fraction of the model's weights (parameters, and the codes packed layers store) that one
    backward pass of the CE loss on `ids` gives a non-zero gradient."""
    model.zero_grad(set_to_none=True)
    was_training = model.training
    model.train()
    out = model(ids, labels=ids)
    out.loss.backward()
    reached = sum(int((p.grad != 0).sum()) for p in model.parameters() if p.grad is not None)
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    return reached / weight_count(model)


def _distill(model, step: Distill, teacher, train_ids, budget, progress):
    if teacher is None:
        raise WorkshopError("A KD step needs a teacher, and none was given.",
                            "Pass teacher=... (the uncompressed model), or --teacher SPEC on the command line.")
    return _train(model, teacher, train_ids, budget, progress, steps=step.steps or budget.pipeline_train_steps,
                  ce_weight=step.ce_weight, temperature=step.temperature, lr=step.lr, engine=step.engine)


def _train(model, teacher, train_ids, budget, progress, steps: int, ce_weight: float, temperature: float, lr: float,
           engine: str = "ours"):
    """`steps` of training (KD, or CE only with ce_weight=1 and no teacher); returns (model, record fields)."""
    from .distill.train import DistillConfig, DistillHistory, distill
    config = DistillConfig(steps=steps, ce_weight=ce_weight, temperature=temperature, lr=lr,
                           warmup_steps=steps // 10, batch=budget.train_batch, seqlen=budget.train_seqlen)
    dtypes = {name: b.dtype for name, b in model.named_buffers()}  # distill trains in fp32: keep stored types
    param_dtype = next(model.parameters()).dtype
    device = next(model.parameters()).device
    # one training sequence is enough: every weight a gradient can reach gets one from any text (the
    # embedding is tied to the output head, whose softmax sends a gradient to every row)
    reached = weights_reached_by_gradient(model.float(), train_ids[: config.seqlen].view(1, -1).to(device))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)   # what the optimizer can move
    history = DistillHistory()
    if engine == "modelopt":
        from .distill.modelopt_kd import distill_modelopt
        model = distill_modelopt(model, config, train_ids, teacher=teacher, progress=progress, history=history)
    else:
        model = distill(model, config, train_ids, teacher=teacher, progress=progress, history=history)
    model.to(param_dtype)
    for name, buffer in model.named_buffers():
        if name in dtypes and buffer.dtype != dtypes[name]:
            module, _, attr = name.rpartition(".")
            setattr(model.get_submodule(module), attr, buffer.to(dtypes[name]))
    return model, {"weights_reached_by_gradient": reached, "train_tokens": history.tokens,
                   "final_loss": history.records[-1]["loss"], "trainable_parameters": trainable}


# ---------------------------------------------------------------------------------------------
# The runner
# ---------------------------------------------------------------------------------------------
@dataclass
class PipelineResult:
    recipe: str
    records: list = field(default_factory=list)   # one per stage: "start" then each step

    @property
    def final(self) -> dict:
        return self.records[-1]

    def to_dict(self) -> dict:
        return asdict(self)


def run_pipeline(model, tokenizer, recipe: list, protocol, teacher=None, budget=None, progress: bool = True,
                 start: dict | None = None, prefixes: dict | None = None):
    """Run `recipe` on a copy of `model`; returns (compressed model, PipelineResult). The last step's
    model is packed where it is quantized (QAT weights are put on the grid and packed at the end).
    Stored bytes count quantized weights at their packed size (modelopt's too: those of its export).
    `start`: the "start" record of another pipeline on the same model and protocol, reused.
    `prefixes`: a dict shared by pipelines on the same model, teacher, protocol and budget. The model
    after every proper prefix of the recipe is kept there, and a recipe that begins with steps already
    run starts after the longest such prefix: the same steps with the same seeds and data would compute
    the same model again (P-KD-Q and P-Q-KD share their P). Records taken over are marked "shared"."""
    from .budgets import get_budget
    from .quant.kv_cache import head_dim, kv_bits_per_value, quantized_kv_cache
    from .quant.qat import copy_model, finish_qat, is_qat
    from .quant.packing import pack_quantized
    from .quant.storage import true_bytes
    check_recipe(recipe)
    if any(s.needs_teacher for s in recipe) and teacher is None:
        raise WorkshopError("The recipe has a KD or LoRA step and no teacher was given.",
                            "Pass teacher=... (the uncompressed model), or --teacher SPEC on the command line.")
    budget = budget or get_budget()
    prefixes = {} if prefixes is None else prefixes
    done = next((k for k in range(len(recipe) - 1, 0, -1) if tuple(recipe[:k]) in prefixes), 0)
    result = PipelineResult(recipe=recipe_label(recipe))
    quantizer, kv = None, None
    if done:
        model, quantizer, kv, records = prefixes[tuple(recipe[:done])]
        model = copy_model(model)
        result.records = [r | {"shared": True} if r["stage"] != "start" else r for r in copy.deepcopy(records)]
    else:
        model = copy.deepcopy(model)
    trains = any(step.trains(budget) for step in recipe[done:])
    context = StepContext(calib=protocol.calibration(tokenizer, model=model), teacher=teacher, budget=budget,
                          train_ids=protocol.training(tokenizer) if trains else None, progress=progress,
                          quantizer=quantizer, kv=kv)

    def record(stage, seconds, extra=None):
        # under QAT every forward pass rounds the weights again; they do not change while evaluating
        with quantized_kv_cache(model, context.kv), parametrize.cached():
            ppl = {text: r.ppl for text, r in protocol.evaluate(model, tokenizer, progress=False).items()}
        kv_bits = kv_bits_per_value(context.kv, head_dim(model.config)) if context.kv else 16
        result.records.append({"stage": stage, "ppl": ppl, "stored_bytes": true_bytes(model),
                               "parameters": weight_count(model), "kv_bits_per_value": kv_bits,
                               "seconds": seconds} | (extra or {}))

    if not done and start is not None:
        result.records.append(copy.deepcopy(start))
    elif not done:
        record("start", 0.0)
    for k, step in enumerate(recipe[done:], start=done + 1):
        began = time.perf_counter()
        model, extra = step.apply(model, context)
        if k == len(recipe) and is_qat(model):  # the end: the trained weights go on the grid, packed
            model = pack_quantized(finish_qat(model), progress=False)
        record(step_label(step), time.perf_counter() - began, extra)
        if k < len(recipe):
            prefixes[tuple(recipe[:k])] = (copy_model(model), context.quantizer, context.kv, copy.deepcopy(result.records))
    return model.eval(), result


def pipeline_protocol(budget=None, **given):
    """Lab 05's DataProtocol (and `workshop pipeline`'s): a pipeline is measured after every step, so
    its forward passes follow the mode's pipeline budget. Evaluation: `pipeline_eval_windows` windows
    of `pipeline_eval_seqlen` tokens per text. Calibration (P's importance, modelopt's calibration):
    the mode's calibration text, cut to the size of one training batch (`train_batch` sequences of
    `train_seqlen` tokens) where it is larger. P's importance is a mean |activation| per channel, not
    a Hessian as in GPTQ, so it needs far fewer tokens; in full mode the two sizes are the same and
    nothing changes. Options in `given` that are not None win."""
    from .budgets import get_budget
    from .protocol import DataProtocol
    budget = budget or get_budget()
    chosen = {key: value for key, value in given.items() if value is not None}
    protocol = DataProtocol.for_budget(budget, **({
        "seqlen": budget.pipeline_eval_seqlen, "calib_samples": min(budget.calib_samples, budget.train_batch),
        "calib_seqlen": min(budget.calib_seqlen, budget.train_seqlen)} | chosen))
    # for_budget reads None as "not given": set the window count (None: every window) afterwards
    return replace(protocol, max_windows=chosen.get("max_windows", budget.pipeline_eval_windows))


def run_orders(model, tokenizer, protocol, teacher, orders=ORDERS, qat: bool = False, budget=None,
               progress: bool = True, start: dict | None = None, prefixes: dict | None = None) -> list:
    """Every order of P, KD and Q (lab 05's table): [PipelineResult], in the order of `orders`. The
    uncompressed model is evaluated once (or `start` is reused), and orders that begin with the same
    step run it once (`prefixes`, as in run_pipeline)."""
    from tqdm.auto import tqdm
    results = []
    prefixes = {} if prefixes is None else prefixes
    for order in tqdm(orders, desc="orders", disable=not progress):
        _, result = run_pipeline(model, tokenizer, recipe_from_order(order, qat), protocol, teacher=teacher,
                                 budget=budget, progress=False, start=start, prefixes=prefixes)
        start = result.records[0]
        results.append(result)
    return results


def ranking(results: list, text: str = "wiki") -> list:
    """The recipes from best to worst by final perplexity on `text`."""
    return [r.recipe for r in sorted(results, key=lambda r: r.final["ppl"][text])]


def pipeline_text(results: list) -> str:
    """One line per stage of each recipe: perplexity per text, stored MB, x smaller, gradient reach and
    trainable parameters."""
    lines = []
    for result in results:
        start = result.records[0]
        lines.append(f"{result.recipe}")
        for r in result.records:
            reach = r.get("weights_reached_by_gradient")
            lines.append(f"  {r['stage']:8s} " + "  ".join(f"{t} {p:9.2f}" for t, p in r["ppl"].items()) +
                         f"  {r['stored_bytes'] / 1e6:7.1f} MB ({start['stored_bytes'] / r['stored_bytes']:.2f}x smaller)"
                         f"  {r['seconds']:6.1f} s" + (" (shared)" if r.get("shared") else "") + (f"  KV cache {r['kv_bits_per_value']:.2f} bits/value"
                                                       if r["kv_bits_per_value"] != 16 else "")
                         + (f"  gradient reached {reach:.1%} of the weights, {r['trainable_parameters'] / 1e6:.2f} M "
                            "trainable" if reach is not None else ""))
    if len(results) > 1:
        texts = list(results[0].final["ppl"])
        lines.append("ranking (best first): " + "; ".join(f"{t}: {' > '.join(ranking(results, t))}" for t in texts))
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Reading the results: this run's, or a recorded run's rows (reports/h200/results.json)
# ---------------------------------------------------------------------------------------------
FAMILIES = ("packed NF4", "QAT")   # Q as frozen packed codes, or trained under the grid (then packed)


def ppl_row(text: str, recipe: str, family: str) -> str:
    """The name of a final perplexity among lab 05's results: 'PPL wiki, P-Q(QAT)-KD (QAT)'."""
    return f"PPL {text}, {recipe} ({family})"


def family_rows(results: list, family: str) -> dict:
    """{ppl_row name: final perplexity} of every PipelineResult of one family, on every text."""
    return {ppl_row(text, r.recipe, family): ppl for r in results for text, ppl in r.final["ppl"].items()}


def final_ppl(rows: dict, family: str, text: str = "wiki") -> dict:
    """{order ('P-KD-Q', ...): final perplexity on `text`} of one family, read from rows named as
    ppl_row names them; an order the rows do not hold is left out. In the QAT family an order that
    ends with Q is the packed one (nothing trains after its Q), recorded under its plain name."""
    final = {}
    for order in ORDERS:
        name = order.replace(",", "-")
        for recipe in (name, recipe_label(recipe_from_order(order, qat=True))):
            if ppl_row(text, recipe, family) in rows:
                final[name] = rows[ppl_row(text, recipe, family)]
    return final


def quantize_early_gap(final: dict) -> float:
    """Mean final perplexity of the three orders that quantize before they prune (the study's worst
    three), minus P-KD-Q's, from {order: perplexity} (final_ppl)."""
    return sum(final[order] for order in QUANTIZE_BEFORE_PRUNE) / len(QUANTIZE_BEFORE_PRUNE) - final["P-KD-Q"]
