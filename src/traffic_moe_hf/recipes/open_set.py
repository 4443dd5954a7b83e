"""Open-set check: does the classifier know when a flow is none of its classes?

A closed-set classifier gives every flow one of its labels, also a flow of a protocol it never saw. The
usual first defence is the classifier's own confidence, its top class probability (the maximum softmax
probability of Hendrycks & Gimpel, 2017): ``traffic-moe evaluate --ood DIR`` measures how well it separates
the evaluated split (in-distribution) from traffic of other sources (``DIR``, prepared like the model's
data), and which threshold keeps 99 / 95 / 90 % of the in-distribution flows; ``traffic-moe predict
--reject-below P`` then labels flows below that threshold ``unknown``.

Written here rather than taken from a library: scikit-learn gives the ROC AUC (used), the rest is three
quantiles and a histogram.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

UNKNOWN = "unknown"
KEEP = (0.99, 0.95, 0.90)  # shares of in-distribution flows a threshold is chosen to keep


def top_probability(logits: np.ndarray) -> np.ndarray:
    """Each row's largest class probability (softmax of the logits; an ensemble's log-probabilities work alike)."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(-1, keepdims=True)
    p = np.exp(z)
    return (p / p.sum(-1, keepdims=True)).max(-1)


def energy(logits: np.ndarray) -> np.ndarray:
    """Each row's log-sum-exp of the logits (the negative free energy of Liu et al., 2020): a second
    in-distribution score, reported beside the top probability (not used for thresholds). Meaningless for an
    ensemble's averaged log-probabilities, whose log-sum-exp is 0."""
    z = np.asarray(logits, dtype=np.float64)
    top = z.max(-1)
    return top + np.log(np.exp(z - top[:, None]).sum(-1))


def auroc(inside: np.ndarray, outside: np.ndarray) -> float:
    """ROC AUC of a score that should be higher on the in-distribution flows."""
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(np.r_[np.ones(len(inside)), np.zeros(len(outside))], np.r_[inside, outside]))


def thresholds(inside: np.ndarray, correct: np.ndarray | None = None) -> list[dict]:
    """For each share in ``KEEP``: the top-probability threshold that keeps it of the in-distribution flows
    (``inside``), the share it really keeps (ties), and the accuracy on the kept flows where ``correct`` is given."""
    rows = []
    for keep in KEEP:
        threshold = float(np.quantile(inside, 1.0 - keep, method="lower")) if len(inside) else 1.0
        kept = inside >= threshold
        row = {"keep": keep, "threshold": threshold, "inside_kept": float(kept.mean()) if len(inside) else 0.0}
        if correct is not None and kept.any():
            row["accuracy_kept"] = float(np.asarray(correct)[kept].mean())
        rows.append(row)
    return rows


def report(inside: np.ndarray, outside: np.ndarray, table: list[dict]) -> dict:
    """How one out-of-distribution source (``outside``'s top probabilities) fares against the in-distribution
    flows (``inside``): ROC AUC of the top probability as an in-distribution score (1.0: every foreign flow
    is less confident than every own one; 0.5: no better than chance) and, at each threshold of ``table``,
    the share of foreign flows rejected."""
    out = {"samples": int(len(outside))}
    if len(outside) and len(inside):
        out["auroc"] = auroc(inside, outside)
        out["rejected"] = {f"{row['keep']:.2f}": float((outside < row["threshold"]).mean()) for row in table}
        out["top_probability_median"] = float(np.median(outside))
    return out


def plot(inside: np.ndarray, outside: dict[str, np.ndarray], table: list[dict], path: Path) -> Path:
    """Histograms of the top class probability: the evaluated split against each foreign source, with the
    thresholds that keep 99 / 95 / 90 % of the evaluated flows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # on a "nines" scale (0.9 -> 1, 0.99 -> 2, ...): a fine-tuned model puts most flows above 0.99, where a
    # linear axis would show one bar
    def nines(p):
        return -np.log10(np.clip(1.0 - np.asarray(p, dtype=np.float64), 1e-7, 1.0))

    bins = np.linspace(0.0, 7.0, 57)
    fig, ax = plt.subplots(figsize=(9.5, 4))
    ax.hist(nines(inside), bins=bins, density=True, alpha=0.55, label=f"evaluated split ({len(inside)} flows)")
    for name, values in outside.items():
        ax.hist(nines(values), bins=bins, density=True, histtype="step", linewidth=1.6,
                label=f"{Path(name).name} ({len(values)} flows)")
    # the thresholds lie close together (often within one bin): named in the legend, each in its own line style,
    # rather than by labels at the lines, which overlapped each other and the bars
    for row, style in zip(table, (":", "--", "-.", (0, (1, 3)))):
        ax.axvline(float(nines(row["threshold"])), color="dimgrey", linestyle=style, linewidth=1.2,
                   label=f"reject below {row['threshold']:.6f}: keeps {row['keep']:.0%} of own flows")
    ticks = np.arange(0, 8)
    ax.set_xticks(ticks, ["0"] + [f"{1 - 10.0 ** -t:.{t}f}" for t in ticks[1:]], fontsize=7)
    ax.set_xlabel("top class probability (a nines scale: 0.9, 0.99, 0.999, ...)")
    ax.set_ylabel("density")
    ax.set_title("open set: own traffic vs traffic of other sources")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def format_lines(result: dict) -> list[str]:
    """Lines for ``evaluate``'s printed summary."""
    lines = ["  open set (top class probability as the in-distribution score):"]
    for row in result["thresholds"]:
        accuracy = f", accuracy on them {row['accuracy_kept']:.3f}" if "accuracy_kept" in row else ""
        lines.append(f"    keep rate {row['keep']:.0%}: reject below {row['threshold']:.6f} (keeps {row['inside_kept']:.1%} of the "
                     f"evaluated flows{accuracy})")
    for name, source in result["sources"].items():
        if "auroc" not in source:
            lines.append(f"    {name}: no foreign flows to score ({source.get('excluded_known_label', 0)} have a label "
                         "the model knows)")
            continue
        rejected = ", ".join(f"{float(k):.0%}: {v:.1%}" for k, v in source["rejected"].items())
        excluded = source.get("excluded_known_label", 0)
        energy_auroc = f" (energy score {source['auroc_energy']:.3f})" if "auroc_energy" in source else ""
        lines.append(f"    {name}: {source['samples']} flows, AUROC {source['auroc']:.3f}{energy_auroc}, rejected at keep {rejected}"
                     + (f" ({excluded} flows with a label the model knows left out)" if excluded else ""))
    return lines
