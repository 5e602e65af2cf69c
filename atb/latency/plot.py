"""Predicted vs measured latency, predictor and linear baseline side by side (PNG)."""

from __future__ import annotations

from pathlib import Path

from atb.latency.evaluation import FitResult


def plot_fit(result: FitResult, path: str | Path, title: str = "") -> Path | None:
    """None (and a printed note) when matplotlib is not installed: the plot is a convenience."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: skipping the predicted-vs-measured plot")
        return None
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.6), sharex=True, sharey=True)
    measured = result.measured
    lo, hi = measured.min() * 0.8, measured.max() * 1.25
    for ax, which in zip(axes, ("predictor", "linear")):
        metrics = result.metrics["test"][which]
        for idx, label, style in ((result.train, "train", dict(color="0.65", s=12)),
                                  (result.test, "held out", dict(color="tab:red", s=22))):
            ax.scatter(measured[idx], result.predicted(which, idx), label=label, **style)
        ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
        ax.fill_between([lo, hi], [lo * 0.95, hi * 0.95], [lo * 1.05, hi * 1.05], color="tab:green", alpha=0.12,
                        label="±5 %")
        ax.set(xscale="log", yscale="log", xlim=(lo, hi), ylim=(lo, hi), xlabel="measured ms",
               title=f"{which}: held-out MAPE {metrics['mape']:.1%}, τ {metrics['kendall_tau']:.3f}")
        ax.legend(loc="upper left", fontsize=8)
    axes[0].set_ylabel("predicted ms")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

