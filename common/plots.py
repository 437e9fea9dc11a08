"""Plots the labs share. Each returns the matplotlib figure so notebooks can show or save it."""
import matplotlib.pyplot as plt


def plot_breakdown(breakdown: dict, title: str, unit: str = "parameters"):
    """Horizontal bars of a {kind: amount} dict (the 'total' key is left out)."""
    items = [(k, v) for k, v in breakdown.items() if k != "total"]
    fig, ax = plt.subplots(figsize=(6, 2.5))
    ax.barh([k for k, _ in items], [v for _, v in items], color="tab:blue")
    for i, (_, v) in enumerate(items):
        ax.text(v, i, f" {v / breakdown['total']:.0%}", va="center")
    ax.set_xlabel(unit)
    ax.set_title(title)
    fig.tight_layout()
    return fig


def plot_decode_roofline(batch_sizes, measured, bandwidth_bound, compute_bound, device: str):
    """Decode tokens/s against batch size: measured, and the bandwidth and compute ceilings."""
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.loglog(batch_sizes, bandwidth_bound, "--", label="memory-bandwidth bound (weights read once per step)")
    ax.loglog(batch_sizes, [compute_bound] * len(batch_sizes), ":", label="compute bound (2 FLOPs per weight per token)")
    ax.loglog(batch_sizes, measured, "o-", label="measured (transformers, eager)")
    ax.set_xlabel("batch size (sequences decoded together)")
    ax.set_ylabel("tokens / s")
    ax.set_title(f"Decode speed on {device}")
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    return fig
