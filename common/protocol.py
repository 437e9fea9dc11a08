"""What a measurement was calibrated, trained and evaluated on: one object, validated when it is made.

Every command that calibrates, trains or evaluates builds a `DataProtocol` from the mode's budget and
the user's options, and every number it prints carries the protocol's description. By default a model
is calibrated on `wiki`'s calibration part, trained on `wiki+sotu`'s training parts, and evaluated on
`wiki` (in domain) and `python-docs` (out of domain), so that a method that fits its calibration text
shows it in every table.
"""
from dataclasses import dataclass, replace

from . import budgets
from .budgets import Budget
from .data import DEFAULT_CALIB, DEFAULT_EVAL, DEFAULT_TRAIN, calibration_batch, check_data, training_ids
from .errors import WorkshopError


@dataclass(frozen=True)
class DataProtocol:
    calib_data: str
    calib_samples: int
    calib_seqlen: int
    eval_data: tuple
    seqlen: int
    max_windows: int | None
    train_data: str

    def __post_init__(self):
        for option, value in (("--calib-samples", self.calib_samples), ("--calib-seqlen", self.calib_seqlen),
                              ("--seqlen", self.seqlen)):
            if value < 1:
                raise WorkshopError(f"{option} {value} is not a positive number.", f"Give {option} 1 or more "
                                    "(or leave it out to use the mode's budget).")
        if self.seqlen < 2:
            raise WorkshopError(f"--seqlen {self.seqlen} is too short to predict anything.", "Use --seqlen 2 or more.")
        if self.max_windows is not None and self.max_windows < 1:
            raise WorkshopError(f"--max-windows {self.max_windows} is not a positive number.",
                                "Give 1 or more, or leave it out to use the mode's budget.")
        if not self.eval_data:
            raise WorkshopError("No evaluation text.", f"Give --eval-data (e.g. {' and '.join(DEFAULT_EVAL)}).")
        repeated = sorted({name for name in self.eval_data if self.eval_data.count(name) > 1})
        if repeated:
            raise WorkshopError(f"--eval-data names {', '.join(repeated)} more than once.", "Name each text once.")
        check_data(self.calib_data, "calib")
        check_data(self.train_data, "train")
        for name in self.eval_data:
            check_data(name, "eval")

    @classmethod
    def for_budget(cls, budget: Budget | None = None, sweep: bool = False, **given) -> "DataProtocol":
        """The mode's protocol (`sweep`: the fewer windows a lab's many-row tables use), with the options
        in `given` that are not None taking precedence."""
        budget = budget or budgets.get_budget()
        defaults = dict(calib_data=DEFAULT_CALIB, calib_samples=budget.calib_samples,
                        calib_seqlen=budget.calib_seqlen, eval_data=DEFAULT_EVAL, seqlen=budget.eval_seqlen,
                        max_windows=budget.sweep_eval_windows if sweep else budget.eval_max_windows,
                        train_data=DEFAULT_TRAIN)
        chosen = {key: value for key, value in given.items() if value is not None}
        if "eval_data" in chosen:
            chosen["eval_data"] = tuple(chosen["eval_data"])
        return cls(**(defaults | chosen))

    def with_eval(self, *texts) -> "DataProtocol":
        return replace(self, eval_data=tuple(texts))

    def calibration(self, tokenizer, model=None):
        """The calibration batch [calib_samples, calib_seqlen] ('self' samples from `model`)."""
        return calibration_batch(tokenizer, self.calib_samples, self.calib_seqlen, self.calib_data, model=model)

    def training(self, tokenizer):
        return training_ids(tokenizer, self.train_data)

    def evaluate(self, model, tokenizer, progress: bool = True) -> dict:
        """{text: PerplexityResult} on every evaluation text."""
        from .eval import perplexities
        return perplexities(model, tokenizer, self.eval_data, seqlen=self.seqlen, max_windows=self.max_windows,
                            progress=progress)

    def calibration_label(self) -> str:
        return f"{self.calib_samples}x{self.calib_seqlen} tokens of {self.calib_data}:calib"

    def describe(self) -> str:
        windows = ("every window" if self.max_windows is None else
                   f"at most {self.max_windows} window{'s' * (self.max_windows != 1)}")
        return (f"calibration {self.calibration_label()}; evaluation on {', '.join(self.eval_data)} "
                f"({windows} of {self.seqlen}); training text {self.train_data}:train")

    def to_dict(self) -> dict:
        return {"calib_data": self.calib_data, "calib_samples": self.calib_samples, "calib_seqlen": self.calib_seqlen,
                "eval_data": list(self.eval_data), "seqlen": self.seqlen, "max_windows": self.max_windows,
                "train_data": self.train_data}
