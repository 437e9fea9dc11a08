"""Figures drawn for the slides: results re-plotted so they read on a projector, and concept diagrams.

`draw(name, results)` returns a PNG (bytes) sized for a 16:9 slide. Plots of measurements take their
numbers from `results` (a reports folder's results.json, read by common.slides), never from typed
values; concept diagrams (the 2:4 pattern, GPTQ's column update, ...) draw made-up weights and say so.
A missing row raises KeyError, which the slides report as an unfilled placeholder.
"""
import io
import re

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch, Rectangle

WIDE, TALL = (12.0, 4.6), (12.0, 5.2)   # inches at 150 dpi: 1800 px wide, shown at a slide's width
TYPE = {"font.size": 13, "axes.titlesize": 15, "axes.labelsize": 13, "legend.fontsize": 11}  # read from the back of a room


def _rows(results: dict, lab: str) -> dict:
    if lab not in results:
        raise KeyError(f"lab {lab}: not in results.json")
    return {row["what"]: row for row in results[lab]["rows"]}


def _value(rows: dict, lab: str, what: str) -> float:
    if what not in rows:
        raise KeyError(f"{lab} | {what}: no such row (a slide figure needs it)")
    return rows[what]["value"]


def _card(results: dict, lab: str) -> str:
    return str(results[lab].get("device", "?")).split(" (")[0]


# --- measurements, re-plotted -----------------------------------------------------------------

PTQ = "02_post_training_quantization"
PTQ_METHODS = ["baseline (bfloat16)", "RTN W4 per channel", "GPTQ W4 per channel", "RTN W4 g64", "AWQ W4 g64",
               "NF4 W4 block 64", "RTN W3 g64", "GPTQ W3 g64", "W8A8 INT8, no smoothing", "SmoothQuant W8A8 INT8",
               "FP8 E4M3 W8A8", "modelopt FP8_DEFAULT_CFG", "modelopt INT8_SMOOTHQUANT_CFG", "modelopt INT4_AWQ_CFG",
               "modelopt W4A8_AWQ_BETA_CFG", "modelopt NVFP4_DEFAULT_CFG"]
OFF_CHART = ["RTN W2 g64", "GPTQ W2 g64"]


def _megabytes(row: dict) -> float:
    """The stored size lab 02 writes first in each row's note ("116.4 MB, 1.6 s")."""
    found = re.match(r"\s*([\d.]+) MB", str(row["note"]))
    if not found:
        raise KeyError(f"{PTQ} | {row['what']}: its note does not start with the stored size in MB")
    return float(found[1])


def ptq_size(results: dict):
    """Lab 02: perplexity against stored size on both texts, the y axis clipped to the 3- to 16-bit
    methods; the 2-bit results, off that scale, written in a box."""
    rows = _rows(results, PTQ)
    fig, axes = plt.subplots(1, 2, figsize=TALL, sharex=True)
    markers = "osD^vP*Xhp<>"
    for ax, text in zip(axes, ("wiki", "python-docs")):
        points = [(m, _megabytes(rows[f"PPL {text}, {m}"]), _value(rows, PTQ, f"PPL {text}, {m}")) for m in PTQ_METHODS
                  if f"PPL {text}, {m}" in rows]
        for k, (method, size, ppl) in enumerate(points):
            ours = not method.startswith("modelopt")
            ax.scatter(size, ppl, s=90, marker=markers[k % len(markers)], label=method.replace("modelopt ", "modelopt: "),
                       facecolors=f"C{k % 10}" if ours else "none", edgecolors=f"C{k % 10}", linewidths=2)
        top = max(p for _, _, p in points)
        ax.set_ylim(0.9 * min(p for _, _, p in points), 1.12 * top)
        ax.set_title(f"{text}" + (" (calibration text's domain)" if text == "wiki" else " (held out)"))
        ax.grid(alpha=0.3)
        off = [f"{m}: {_value(rows, PTQ, f'PPL {text}, {m}'):,.0f}" for m in OFF_CHART if f"PPL {text}, {m}" in rows]
        if off:
            ax.text(0.97, 0.97, "2 bits, off the chart:\n" + "\n".join(off), transform=ax.transAxes, va="top", ha="right",
                    fontsize=11, bbox=dict(boxstyle="round", fc="#fff4e0", ec="#d08000"))
    axes[0].set_ylabel("perplexity (lower is better)")
    fig.supxlabel("stored MB (packed weights, scales, 16-bit layers)", x=0.37, fontsize=13)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center right", fontsize=10, frameon=False, title="filled: ours, hollow: modelopt")
    fig.tight_layout(rect=(0, 0, 0.74, 1))
    return fig


KD = "04_knowledge_distillation"
KD_SETTINGS = [("T=1", "sweep PPL on wiki, T=1"), ("T=2 (α=0.2)", "sweep PPL on wiki, T=2"),
               ("T=4", "sweep PPL on wiki, T=4"), ("α=0 (KL only)", "sweep PPL on wiki, alpha=0"),
               ("α=0.6", "sweep PPL on wiki, alpha=0.6"), ("T=2 + hidden-state MSE", "sweep PPL on wiki, T=2 + hidden MSE"),
               ("curriculum, T 1→2", "PPL on wiki, curriculum + T 1->2"),
               ("sequence-level KD", "PPL on wiki, sequence-level KD"),
               ("modelopt's KD (T=2, α=0.2)", "PPL on wiki, modelopt KD (same budget)")]


def kd_settings(results: dict):
    """Lab 04: the settings sweep as dots on an axis that starts near the best value, so differences of
    a few percent are visible (bars from zero hid them)."""
    rows = _rows(results, KD)
    names = [n for n, _ in KD_SETTINGS]
    values = [_value(rows, KD, what) for _, what in KD_SETTINGS]
    reference = values[1]
    fig, ax = plt.subplots(figsize=WIDE)
    y = np.arange(len(names))[::-1]
    ax.hlines(y, min(values) * 0.97, values, color="#bbb")
    ax.scatter(values, y, s=120, color=["C2" if v < reference else "C3" if v > reference else "C0" for v in values], zorder=3)
    for yy, v in zip(y, values):
        ax.text(v, yy + 0.28, f"{v:.2f}", ha="center", fontsize=11)
    ax.axvline(reference, color="C0", ls=":", lw=1.5)
    ax.set_yticks(y, names)
    ax.set_xlim(min(values) * 0.97, max(values) * 1.03)
    ax.set_ylim(-0.7, len(names) - 0.3)
    ax.set_xlabel("perplexity on wiki after 75 steps (lower is better); dotted: the lab's T=2, α=0.2")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return fig


KERNELS = "06_hardware_and_kernels"


def roofline(results: dict):
    """Lab 06: the measured ceilings as a roofline, with Llama-3-8B's gate/up product (14336 x 4096)
    at several batch sizes M, in bf16 and with INT4 g128 weights."""
    rows = _rows(results, KERNELS)
    bandwidth = _value(rows, KERNELS, "memory bandwidth (copy)") * 1e9       # bytes/s
    rate = _value(rows, KERNELS, "matmul rate (bfloat16)") * 1e12            # FLOP/s
    n, k = 14336, 4096
    intensity = np.logspace(-0.5, 4, 300)
    fig, ax = plt.subplots(figsize=WIDE)
    ax.loglog(intensity, np.minimum(rate, bandwidth * intensity) / 1e12, color="k", lw=2.5)
    ridge = rate / bandwidth
    ax.axvline(ridge, color="#999", ls=":")
    ax.text(ridge * 1.08, rate / 1e12 * 0.2, f"ridge: {ridge:,.0f} FLOP/byte", fontsize=11)
    for weight_bytes, label, color in ((2.0, "bf16 weights", "C0"), (0.5 + 2 / 128, "INT4 g128 weights", "C3")):
        for m in (1, 16, 64, 256, 4096):
            flops = 2 * m * n * k
            moved = n * k * weight_bytes + 2 * m * (n + k)
            x = flops / moved
            ax.scatter(x, min(rate, bandwidth * x) / 1e12, color=color, s=70, zorder=3,
                       label=label if m == 1 else None)
            ax.annotate(f"M={m}", (x, min(rate, bandwidth * x) / 1e12), textcoords="offset points",
                        xytext=(6, -14 if color == "C0" else 6), fontsize=10, color=color)
    ax.set_xlabel("arithmetic intensity (FLOP per byte moved)")
    ax.set_ylabel("attainable TFLOP/s")
    ax.set_title(f"Roofline from this GPU's measured ceilings ({_card(results, KERNELS)}): "
                 f"{bandwidth / 1e9:,.0f} GB/s, {rate / 1e12:,.0f} TFLOP/s bf16", fontsize=13)
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    return fig


# --- concept diagrams (made-up numbers, said on the figure) -------------------------------------

def temperature(results: dict):
    """Softmax of one made-up logit vector at T = 1, 2, 4, on a log axis so the tail is visible."""
    logits = np.array([9.0, 8.2, 7.1, 6.5, 5.8, 5.0, 4.6, 4.1, 3.5, 3.0, 2.4, 2.0])
    fig, ax = plt.subplots(figsize=WIDE)
    width = 0.27
    for j, t in enumerate((1, 2, 4)):
        p = np.exp(logits / t) / np.exp(logits / t).sum()
        ax.bar(np.arange(len(logits)) + (j - 1) * width, p, width, label=f"T = {t}", color=f"C{j}")
    ax.set_yscale("log")
    ax.set_xticks(range(len(logits)), [f"token {i + 1}" for i in range(len(logits))], rotation=0, fontsize=10)
    ax.set_ylabel("probability (log scale)")
    ax.set_title("One made-up set of logits, softened: a higher T lifts the tail the student learns from")
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def _matrix(ax, values, x0, y0, cell=1.0, colors=None, fmt="{:.1f}", fontsize=11):
    for i, row in enumerate(values):
        for j, v in enumerate(row):
            face = colors[i][j] if colors is not None else "white"
            ax.add_patch(Rectangle((x0 + j * cell, y0 - (i + 1) * cell), cell, cell, fc=face, ec="#444"))
            if v is not None:
                ax.text(x0 + (j + 0.5) * cell, y0 - (i + 0.5) * cell, fmt.format(v) if not isinstance(v, str) else v,
                        ha="center", va="center", fontsize=fontsize)


def _canvas(size=WIDE, xlim=(0, 24), ylim=(0, 9)):
    fig, ax = plt.subplots(figsize=size)
    ax.set_xlim(*xlim)
    ax.set_ylim(*ylim)
    ax.set_aspect("equal")
    ax.axis("off")
    return fig, ax


def two_four(results: dict):
    """The 2:4 pattern: in every group of 4 weights along a row, the 2 of largest score are kept; the
    kept values are stored densely with a 2-bit index each."""
    rng = np.random.default_rng(4)
    w = np.round(rng.normal(0, 1, (4, 8)), 1)
    keep = np.zeros_like(w, dtype=bool)
    for i in range(4):
        for g in range(2):
            block = np.abs(w[i, 4 * g:4 * g + 4])
            keep[i, 4 * g + np.argsort(-block)[:2]] = True
    fig, ax = _canvas(xlim=(0, 21))
    ax.text(0.3, 8.4, "weights (made up), groups of 4", fontsize=13)
    _matrix(ax, w, 0.3, 7.8, colors=[["#9fd49f" if k else "#eee" for k in r] for r in keep])
    for g in (4,):
        ax.plot([0.3 + g, 0.3 + g], [3.8, 7.8], color="k", lw=3)
    ax.text(0.3, 3.2, "green: the 2 largest |w| of each group (magnitude;\nWanda and SparseGPT use other scores)", fontsize=11, va="top")
    ax.add_patch(FancyArrowPatch((8.8, 5.8), (10.2, 5.8), arrowstyle="-|>", mutation_scale=25, lw=2))
    kept = [[w[i, j] for j in range(8) if keep[i, j]] for i in range(4)]
    index = [[str(j % 4) for j in range(8) if keep[i, j]] for i in range(4)]
    ax.text(10.6, 8.4, "values kept", fontsize=13)
    _matrix(ax, kept, 10.6, 7.8, colors=[["#9fd49f"] * 4] * 4)
    ax.text(15.6, 8.4, "2-bit index in the group", fontsize=13)
    _matrix(ax, index, 15.6, 7.8, colors=[["#dde8f8"] * 4] * 4, fmt="{}")
    ax.text(10.6, 3.2, "Sparse tensor cores (sm_80 and later) read both and skip\nthe zeros: up to 2x the math rate on "
            "compute-bound products;\nthe bytes shrink by less than 2x (values + indices).", fontsize=11, va="top")
    return fig


def gptq(results: dict):
    """GPTQ's column step: quantize column j, then spread its error over the columns not yet quantized,
    weighted by the inverse Hessian of the layer's inputs."""
    fig, ax = _canvas()
    cols, rows_, x0, y0, cell = 10, 5, 1.0, 7.6, 1.0
    done, current = 3, 3
    colors = [["#c9c9f0" if j < done else "#f6c28b" if j == current else "#fff" for j in range(cols)] for _ in range(rows_)]
    _matrix(ax, [[None] * cols] * rows_, x0, y0, cell, colors=colors)
    ax.text(x0, y0 + 0.5, "W (rows: outputs, columns: inputs)", fontsize=13)
    ax.text(x0 + 1.5, y0 - rows_ - 0.6, "quantized", ha="center", fontsize=11)
    ax.text(x0 + current + 0.5, y0 - rows_ - 1.2, "column j", ha="center", fontsize=11, color="#b05a00")
    ax.text(x0 + 7, y0 - rows_ - 0.6, "not yet quantized: updated", ha="center", fontsize=11)
    ax.add_patch(FancyArrowPatch((x0 + current + 0.5, y0 + 0.1), (x0 + 7.5, y0 + 0.1), connectionstyle="arc3,rad=-0.35",
                                 arrowstyle="-|>", mutation_scale=20, lw=2, color="#b05a00"))
    steps = ["1.  q = quantize(W[:, j])  (round to the grid)",
             "2.  e = (W[:, j] − q) / [H⁻¹]jj",
             "3.  W[:, j+1:] −= e · [H⁻¹]j, j+1:",
             "    H = 2XXᵀ from calibration inputs X:",
             "    the columns left absorb the error, so",
             "    the layer's output X·W changes least",
             "4.  j ← j + 1; blocks of 128 columns,",
             "    updates applied lazily (the speed trick)"]
    for k, line in enumerate(steps):
        ax.text(12.5, 8.0 - 0.85 * k, line, fontsize=12, family="monospace" if k < 3 else None, va="top")
    return fig


def smoothquant(results: dict):
    """SmoothQuant / AWQ's scale migration: divide an activation channel by s, multiply the matching
    weight row by s; the product is unchanged and the activation's outlier channel is tamed."""
    rng = np.random.default_rng(0)
    act = np.abs(rng.normal(1, 0.3, 12))
    act[[3, 8]] = [14, 9]                       # outlier channels (made up)
    wmax = np.abs(rng.normal(1, 0.25, 12))
    s = np.sqrt(act / wmax)                      # alpha = 0.5
    fig, axes = plt.subplots(1, 2, figsize=WIDE, sharey=True)
    x = np.arange(12)
    axes[0].bar(x - 0.2, act, 0.4, label="max |X| per input channel", color="C3")
    axes[0].bar(x + 0.2, wmax, 0.4, label="max |W| per input channel", color="C0")
    axes[0].set_title("before: activations carry outlier channels")
    axes[1].bar(x - 0.2, act / s, 0.4, label="max |X / s|", color="C3")
    axes[1].bar(x + 0.2, wmax * s, 0.4, label="max |s · W|", color="C0")
    axes[1].set_title("after: s = √(max|X| / max|W|)  (α = 0.5)")
    for ax in axes:
        ax.set_xlabel("input channel (made-up values)")
        ax.legend(loc="upper right")
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("range a quantizer must cover")
    fig.suptitle("Y = (X diag(s)⁻¹)(diag(s) W): the same product, an easier pair to quantize "
                 "(AWQ searches s for the weights alone)", fontsize=13)
    fig.tight_layout()
    return fig


def nvfp4(results: dict):
    """NVFP4's two levels of scale: E2M1 codes, one FP8 E4M3 scale per 16 values, one FP32 scale per tensor."""
    fig, ax = _canvas(ylim=(0, 8))
    codes = [0.5, -1, 6, 2, -0.5, 1.5, -3, 0, 4, -2, 1, 3, -6, 0.5, -1.5, 2]
    _matrix(ax, [codes], 0.5, 6.8, 0.9, colors=[["#dde8f8"] * 16], fmt="{:g}", fontsize=10)
    ax.text(0.5, 7.2, "16 weights as FP4 E2M1 codes (4 bits each): ±{0, 0.5, 1, 1.5, 2, 3, 4, 6}", fontsize=12)
    _matrix(ax, [["s₁₆"]], 15.5, 6.8, 0.9, colors=[["#f6c28b"]], fmt="{}")
    ax.text(16.6, 6.35, "one FP8 E4M3 scale per 16 values\n(8 bits / 16 = 0.5 bit per weight)", fontsize=11, va="center")
    _matrix(ax, [["S"]], 15.5, 4.6, 0.9, colors=[["#f0b0b0"]], fmt="{}")
    ax.text(16.6, 4.15, "one FP32 scale per tensor\n(keeps s₁₆ inside E4M3's range)", fontsize=11, va="center")
    ax.text(0.5, 4.8, "w ≈ code × s₁₆ × S", fontsize=18)
    ax.text(0.5, 3.6, "= 4.5 bits per weight. MXFP4 (OCP): blocks of 32 and a power-of-two (E8M0) scale,\n"
            "4.25 bits, coarser. Tensor cores run NVFP4 on sm_100 (Blackwell); earlier GPUs only emulate it\n"
            "(modelopt's NVFP4 on a Hopper simulates it, and quantizes the activations too).", fontsize=12, va="top")
    return fig


def qdq(results: dict):
    """What lab 07's ONNX graphs hold in front of each MatMul: INT4 weights with DequantizeLinear, and for
    W8A8 a QuantizeLinear/DequantizeLinear pair on the activation too."""
    fig, ax = _canvas(ylim=(0, 8))

    def box(x, y, text, color, w=4.6):
        ax.add_patch(FancyBboxPatch((x, y), w, 1.1, boxstyle="round,pad=0.1", fc=color, ec="#333"))
        ax.text(x + w / 2, y + 0.55, text, ha="center", va="center", fontsize=11)

    def arrow(a, b):
        ax.add_patch(FancyArrowPatch(a, b, arrowstyle="-|>", mutation_scale=18, lw=1.8))

    box(0.3, 5.8, "INT4 weight codes\n(initializer)", "#dde8f8")
    box(5.8, 5.8, "DequantizeLinear\n(a scale per 64 weights)", "#f6c28b")
    box(0.3, 2.6, "activation\n(float)", "#eee")
    box(5.8, 2.6, "QuantizeLinear\n(W8A8 only)", "#f0b0b0")
    box(11.3, 2.6, "DequantizeLinear\n(W8A8 only)", "#f6c28b")
    box(17.0, 4.2, "MatMul", "#9fd49f", w=3.5)
    arrow((5.0, 6.35), (5.7, 6.35))
    arrow((10.5, 6.35), (16.9, 4.95))
    arrow((5.0, 3.15), (5.7, 3.15))
    arrow((10.5, 3.15), (11.2, 3.15))
    arrow((16.0, 3.15), (16.9, 4.5))
    ax.text(0.3, 1.4, "TensorRT takes symmetric Q/DQ only (zero point 0); INT4 weights as DequantizeLinear with a\n"
            "block_size (opset 21 or later). It fuses Q/DQ + MatMul into one low-precision kernel when it builds the engine.",
            fontsize=11, va="top")
    return fig


def decision_flow(results: dict):
    """The production decision, as a flow: what the deployment is bound by, which GPU, whether it can train."""
    fig, ax = _canvas(size=TALL, xlim=(-0.4, 24.4), ylim=(0, 10))

    def box(x, y, text, color, w=7.6, h=1.3):
        ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.12", fc=color, ec="#333"))
        ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=10.5)

    def arrow(a, b, label=""):
        ax.add_patch(FancyArrowPatch(a, b, arrowstyle="-|>", mutation_scale=16, lw=1.6))
        if label:
            ax.text((a[0] + b[0]) / 2, (a[1] + b[1]) / 2 + 0.15, label, fontsize=10.5, ha="center", color="#333")

    q, answer, method = "#fff4d6", "#dde8f8", "#d8f0d8"
    box(8.2, 8.4, "What bounds the deployment?", q)
    box(0.0, 5.9, "decode at small batch:\nmemory-bound", answer)
    box(8.2, 5.9, "prefill / large batch:\ncompute-bound", answer)
    box(16.4, 5.9, "long context or many\nsequences: KV-cache memory", answer)
    arrow((10.5, 8.4), (3.8, 7.3), "bytes")
    arrow((12.0, 8.4), (12.0, 7.3), "FLOPs")
    arrow((13.5, 8.4), (20.2, 7.3), "KV cache")
    box(0.0, 3.4, "fewer weight bytes:\nW4A16 (AWQ, GPTQ), sm_80+", method)
    box(8.2, 3.4, "fewer FLOP cycles: FP8 (sm_89+),\nINT8 W8A8 or 2:4 (sm_80+)", method)
    box(16.4, 3.4, "FP8 or INT8 KV cache\n(4 bits: K per channel, KIVI)", method)
    arrow((3.8, 5.9), (3.8, 4.8))
    arrow((12.0, 5.9), (12.0, 4.8))
    arrow((20.2, 5.9), (20.2, 4.8))
    box(0.0, 0.9, "on Blackwell (sm_100): NVFP4\nweights and activations", answer)
    box(8.2, 0.9, "can you train? yes: prune, distill,\nquantize last, or QAT / QAD", q)
    box(16.4, 0.9, "no training: PTQ, calibrated\non text like production's", q)
    arrow((3.8, 3.4), (3.8, 2.3))
    arrow((12.0, 3.4), (12.0, 2.3))
    arrow((15.8, 3.4), (17.4, 2.3))
    arrow((7.6, 3.9), (8.3, 1.9))
    return fig


FIGURES = {f.__name__: f for f in (ptq_size, kd_settings, roofline, temperature, two_four, gptq, smoothquant, nvfp4,
                                   qdq, decision_flow)}


def draw(name: str, results: dict) -> bytes:
    """The figure `name` (a key of FIGURES) as PNG bytes."""
    if name not in FIGURES:
        raise KeyError(f"plot {name}: no such slide figure (there are {', '.join(FIGURES)})")
    buffer = io.BytesIO()
    with plt.rc_context(TYPE):   # for these figures only: a notebook that draws afterwards keeps its settings
        fig = FIGURES[name](results)
        fig.savefig(buffer, format="png", dpi=150, bbox_inches="tight", pad_inches=0.1)  # no empty margins
    plt.close(fig)
    return buffer.getvalue()
