"""What this machine is and what it can do: versions, GPU features, and the two ceilings
(memory bandwidth and matmul rate) that every speed number in the course is compared with."""
import importlib.metadata
import platform
import statistics
import sys
import time

import torch

PACKAGES = ("torch", "transformers", "nvidia-modelopt", "gguf", "accelerate", "datasets", "triton", "nbval")
# Minimum compute capability of each feature the labs use.
FEATURES = {
    "bf16 tensor cores": (8, 0),
    "2:4 sparse tensor cores": (8, 0),
    "INT8 tensor cores": (7, 5),
    "FP8 (E4M3/E5M2) tensor cores": (8, 9),
    "NVFP4 tensor cores": (10, 0),
}


def package_versions() -> dict:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def gpu_info() -> dict | None:
    if not torch.cuda.is_available():
        return None
    props = torch.cuda.get_device_properties(0)
    capability = (props.major, props.minor)
    return {"name": props.name, "compute_capability": f"{props.major}.{props.minor}",
            "memory_gib": round(props.total_memory / 2**30, 1), "multiprocessors": props.multi_processor_count,
            "cuda": torch.version.cuda,
            "features": {feature: capability >= need for feature, need in FEATURES.items()}}


def supports(feature: str) -> bool:
    """Whether the current GPU has `feature` (a key of FEATURES); False without a GPU."""
    info = gpu_info()
    return bool(info and info["features"][feature])


def device_description() -> str:
    """One line naming the device, for every reported number."""
    info = gpu_info()
    if info:
        return f"{info['name']} (sm_{info['compute_capability'].replace('.', '')}, CUDA {info['cuda']})"
    return f"CPU {platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)"


def _time_median(fn, device: torch.device, repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1000)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure_memory_bandwidth(device: str | torch.device = "cuda", megabytes: int = 1024, repeats: int = 10) -> float:
    """Bytes per second of a large copy, counting bytes read plus bytes written."""
    device = torch.device(device)
    n = megabytes * 2**20 // 4
    src = torch.rand(n, device=device)
    dst = torch.empty_like(src)
    seconds = _time_median(lambda: dst.copy_(src), device, repeats)
    return 2 * src.numel() * src.element_size() / seconds


def measure_matmul_flops(device: str | torch.device = "cuda", dtype=torch.bfloat16, n: int = 8192,
                         repeats: int = 10) -> float:
    """FLOP/s of an n x n x n matrix product on random data."""
    device = torch.device(device)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    seconds = _time_median(lambda: a @ b, device, repeats)
    return 2 * n**3 / seconds


def doctor_report() -> dict:
    """Everything `workshop doctor` prints: versions, GPU, features, model/data availability, mode."""
    from .budgets import current_mode
    from .errors import WorkshopError
    from .models import cache_root, find_embedded_gguf
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
    report["wikitext2_cached"] = _wikitext2_cached()
    return report


def _wikitext2_cached() -> bool:
    try:
        from datasets import config
        return any(config.HF_DATASETS_CACHE.glob("wikitext/wikitext-2-raw-v1*"))
    except Exception:
        return False
