"""The hardware decision table judges each rule of thumb by its premise, accuracy included."""
from common.decision_table import USABLE_PPL_RATIO, decision_rows
from common.verdicts import RecordedRun


def _recorded(dense: float, awq: float, sparse_24: float, student: float = 16.0) -> dict:
    def run(lab, rows):
        return RecordedRun(lab, "test GPU", "full", "2026-12-07", rows, {what: ("", "") for what in rows})
    return {"02_post_training_quantization": run("02_post_training_quantization", {
                "PPL wiki, baseline (bfloat16)": dense, "PPL wiki, AWQ W4 g64": awq}),
            "03_pruning_and_low_rank": run("03_pruning_and_low_rank", {"perplexity SparseGPT 2:4, wiki": sparse_24}),
            "04_knowledge_distillation": run("04_knowledge_distillation", {"perplexity on wiki, pruned + KD": student})}


def _datacenter(recorded: dict, sparse_large: float = 1.4, w4a16_m1: float = 1.5):
    rows = decision_rows(sparse_large=sparse_large, sparse_m16=0.3, sparse_source="test", w4a16_m1=w4a16_m1,
                         kernels_source="test", int4_share=0.43, width_share=0.82, gguf_bytes=98_000_000,
                         dense_bytes_16=270_000_000, kv_per_token=23_040, recorded=recorded)
    return next(row for row in rows if row.situation == "datacenter GPU")


def test_datacenter_rule_needs_speed_and_a_usable_model():
    assert _datacenter(_recorded(13.2, 15.3, 15.0)).holds is True
    # fast but collapsed (lab 03's one-shot 2:4 on this model): the rule does not hold
    collapsed = _datacenter(_recorded(13.2, 15.3, 13.2 * USABLE_PPL_RATIO * 1.1))
    assert collapsed.holds is False and "x dense" in collapsed.evidence
    # usable but slow: does not hold either
    assert _datacenter(_recorded(13.2, 15.3, 15.0), sparse_large=0.9).holds is False


def test_datacenter_rule_without_perplexities_gives_no_verdict():
    row = _datacenter({lab: None for lab in _recorded(1, 1, 1)})
    assert row.holds is None and "not in the recorded runs yet" in row.evidence
