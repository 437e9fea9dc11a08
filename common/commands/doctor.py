"""`workshop doctor`: versions, GPU and its features, the model, the texts and their token counts, mode."""
from . import Output

HELP = "Versions, GPU and its features, model and texts (tokens per part), mode."


def add_arguments(p) -> None:
    pass


def run(args) -> Output:
    from ..data import TEXTS, corpus_token_counts
    from ..errors import WorkshopError
    report = doctor_report()
    lines = ["versions:"] + [f"  {k:16s} {v or 'not installed'}" for k, v in report["versions"].items()]
    gpu = report["gpu"]
    if gpu:
        lines.append(f"GPU: {gpu['name']}, compute capability {gpu['compute_capability']}, "
                     f"{gpu['memory_gib']} GiB, CUDA {gpu['cuda']}")
        lines += [f"  {'yes' if ok else 'no ':3s}  {feature}" for feature, ok in gpu["features"].items()]
    else:
        lines.append("GPU: none (quick mode: labs run on the CPU with small budgets)")
    lines += [f"mode: {report['mode']} (WORKSHOP_MODE overrides)",
              f"embedded model: {report['embedded_model']}",
              f"embedded model cache: {report['embedded_model_cache']}"]
    try:
        from ..models import load_tokenizer
        report["texts"] = corpus_token_counts(load_tokenizer("embedded"))
        lines.append("texts (tokens of the embedded model's tokenizer, train / calib / eval):")
        lines += [f"  {name:12s} {c['train']:>10,} {c['calib']:>9,} {c['eval']:>9,}  {TEXTS[name].description}"
                  for name, c in report["texts"].items()]
    except WorkshopError as e:
        report["texts"] = f"unavailable: {e.problem}"
        lines.append(f"texts: unavailable ({e.problem} {e.fix})")
    lines += [f"  {'self':12s} sampled from the model being compressed (calibration only)",
              f"  {'wikitext2':12s} {'cached' if report['wikitext2_cached'] else 'not cached (needs network once)'}"]
    return Output(report, "\n".join(lines))


def doctor_report() -> dict:
    """Everything `workshop doctor` prints: versions, GPU, features, model/data availability, mode."""
    import platform
    import sys

    import torch

    from ..budgets import current_mode
    from ..data import wikitext2_cached
    from ..errors import WorkshopError
    from ..hardware import gpu_info, package_versions
    from ..models import find_embedded_gguf
    from ..paths import cache_root
    report = {"versions": package_versions(), "gpu": gpu_info(), "platform": platform.platform(),
              "cpu_threads": torch.get_num_threads(), "executable": sys.executable}
    try:
        report["mode"] = current_mode()
    except WorkshopError as e:
        report["mode"] = f"invalid ({e.problem})"
    try:
        report["embedded_model"] = str(find_embedded_gguf())
    except WorkshopError as e:
        report["embedded_model"] = f"missing: {e.fix}"
    cached = sorted(p.name for p in cache_root().glob("embedded-*")) if cache_root().is_dir() else []
    report["embedded_model_cache"] = cached or "not converted yet (the first load takes ~30 s)"
    report["wikitext2_cached"] = wikitext2_cached()
    return report
