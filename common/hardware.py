"""What this machine is and what it can do: versions, GPU features, and the two ceilings
(memory bandwidth and matmul rate) that every speed number in the course is compared with."""
import importlib.metadata
import json
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone

import torch

from .paths import reports_dir, write_json_atomic

PACKAGES = ("torch", "transformers", "nvidia-modelopt", "gguf", "accelerate", "datasets", "triton", "nbval")
# Minimum compute capability of each feature the labs use.
FEATURES = {
    "bf16 tensor cores": (8, 0),
    "2:4 sparse tensor cores": (8, 0),
    "Marlin-class W4A16 kernels": (8, 0),
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


def sync(device: torch.device) -> None:
    """Wait for the GPU's queued work (nothing to wait for on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timings(fn, device: torch.device, repeats: int, warmup: int = 2, setup=None) -> list:
    """Seconds of each of `repeats` runs of `fn()` after `warmup` untimed ones: the course's one timer.
    On a GPU, CUDA events around the run (the GPU's time from start to end, launch gaps included); on
    the CPU, the wall clock. `setup()`, when given, runs untimed before every run (e.g. a prefill)."""
    times = []
    for run in range(warmup + repeats):
        if setup is not None:
            setup()
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            seconds = start.elapsed_time(end) / 1000
        else:
            t0 = time.perf_counter()
            fn()
            seconds = time.perf_counter() - t0
        if run >= warmup:
            times.append(seconds)
    return times


def median_seconds(fn, device: torch.device, repeats: int, warmup: int = 2, setup=None) -> float:
    """The median of `timings`."""
    return statistics.median(timings(fn, device, repeats, warmup, setup))


def _rates(work: float, times: list) -> tuple:
    """(median, slowest, fastest) of work / time."""
    return work / statistics.median(times), work / max(times), work / min(times)


def copy_bandwidth_rates(device: torch.device, megabytes: int, repeats: int) -> tuple:
    """(median, slowest, fastest) bytes read + written per second by a copy of `megabytes` MiB on `device`."""
    src = torch.rand(megabytes * 2**20 // 4, device=device)
    dst = torch.empty_like(src)
    return _rates(2 * src.numel() * src.element_size(), timings(lambda: dst.copy_(src), device, repeats))


def matmul_rates(device: torch.device, dtype, n: int, repeats: int) -> tuple:
    """(median, slowest, fastest) FLOP/s of an n x n matmul in `dtype` on `device`."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    return _rates(2 * n**3, timings(lambda: a @ b, device, repeats))


@dataclass(frozen=True)
class Ceilings:
    """The two ceilings every speed figure is compared with, measured once: a large copy's bandwidth
    (bytes read + written per second) and a square matmul's rate, each the median of `repeats`
    timings with the slowest and fastest beside it, and how loaded the CPUs were at the time."""
    device: str
    dtype: str
    repeats: int
    bandwidth: float
    bandwidth_range: tuple
    matmul_flops: float
    matmul_range: tuple
    load_per_core: float | None   # the 1-minute load average over the CPU count, when measured
    measured_at: str

    def describe(self) -> str:
        load = "" if self.load_per_core is None else f"; CPU load {self.load_per_core:.2f} per core when measured"
        return (f"copy bandwidth {self.bandwidth / 1e9:.1f} GB/s ({self.bandwidth_range[0] / 1e9:.1f} to "
                f"{self.bandwidth_range[1] / 1e9:.1f} over {self.repeats} copies); {self.dtype} matmul "
                f"{self.matmul_flops / 1e12:.3g} TFLOP/s ({self.matmul_range[0] / 1e12:.3g} to "
                f"{self.matmul_range[1] / 1e12:.3g}) on {self.device}{load}")


_CEILINGS: dict = {}
MACHINE_FILE = "machine.json"


def machine_ceilings(device: str | torch.device = "cuda", dtype=torch.bfloat16, repeats: int = 10) -> Ceilings:
    """The machine's ceilings for `dtype` on `device`, measured once per process, and once per run of
    `workshop reproduce` (which sets WORKSHOP_RUN_ID; the first lab stores them in the reports
    folder's machine.json and the others read them), so every lab's bound uses the same numbers."""
    device, dtype_name = torch.device(device), str(dtype).removeprefix("torch.")
    key = f"{device.type}|{dtype_name}"
    run = os.environ.get("WORKSHOP_RUN_ID")
    path = reports_dir() / MACHINE_FILE
    stored = json.loads(path.read_text()) if run and path.is_file() else {}
    if key not in _CEILINGS and stored.get("run") == run and key in stored.get("ceilings", {}):
        _CEILINGS[key] = Ceilings(**{k: tuple(v) if isinstance(v, list) else v
                                     for k, v in stored["ceilings"][key].items()})
    if key not in _CEILINGS:
        big = device.type == "cuda"
        bandwidth = copy_bandwidth_rates(device, 1024 if big else 256, repeats)
        matmul = matmul_rates(device, dtype, 8192 if big else 1024, repeats)
        load = os.getloadavg()[0] / (os.cpu_count() or 1) if hasattr(os, "getloadavg") else None
        _CEILINGS[key] = Ceilings(device_description(), dtype_name, repeats, bandwidth[0], bandwidth[1:],
                                  matmul[0], matmul[1:], load, datetime.now(timezone.utc).isoformat(timespec="seconds"))
        if run:
            ceilings = stored.get("ceilings", {}) if stored.get("run") == run else {}
            write_json_atomic(path, {"run": run, "ceilings": ceilings | {key: asdict(_CEILINGS[key])}})
    return _CEILINGS[key]

