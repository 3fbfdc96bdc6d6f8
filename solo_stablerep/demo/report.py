"""The demo's results: mean and spread over seeds, a Markdown table, a plot, and the files that hold them."""

from __future__ import annotations

import json
from pathlib import Path
from statistics import mean, stdev

from solo_stablerep.demo.probes import ACCURACIES
from solo_stablerep.demo.runs import LOSS_COLUMNS, RANDOM_FLOOR


def summarise(rows: list, methods: list) -> list:
    """Per method: mean and spread (sample std over seeds; 0 with one seed) of each measure."""

    summary = []
    for method in methods:
        mine = [row for row in rows if row["method"] == method]
        entry = {"method": method, "seeds": [row["seed"] for row in mine]}
        for key in (*(key for key, _ in ACCURACIES), "train_seconds", "images_seen"):
            values = [row[key] for row in mine]
            entry[key] = mean(values)
            entry[f"{key}_std"] = stdev(values) if len(values) > 1 else 0.0
        summary.append(entry)
    return summary


def markdown_table(summary: list) -> str:
    def accuracy(entry, key):
        return f"{entry[key]:.3f} ± {entry[key + '_std']:.3f}" if len(entry["seeds"]) > 1 else f"{entry[key]:.3f}"

    lines = [
        "| method | " + " | ".join(f"{name} acc" for _, name in ACCURACIES) + " | train time (s) | images seen |",
        "|---" * (len(ACCURACIES) + 3) + "|",
    ]
    for entry in summary:
        time_text = "-" if entry["method"] == RANDOM_FLOOR else f"{entry['train_seconds']:.0f}"
        seen = "-" if entry["method"] == RANDOM_FLOOR else f"{entry['images_seen']:,.0f}"
        accuracies = " | ".join(accuracy(entry, key) for key, _ in ACCURACIES)
        lines.append(f"| {entry['method']} | {accuracies} | {time_text} | {seen} |")
    return "\n".join(lines)


def accuracy_text(row: dict) -> str:
    """One run's accuracies on one line, for the progress log."""

    return " ".join(f"{name} {row[key]:.3f}" for key, name in ACCURACIES)


def plot(summary: list, curves: dict, path: Path) -> None:
    """Probe accuracies per method (bars, spread over seeds) beside each method's loss curves."""

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    trained = [m for m in curves if curves[m]]
    fig, axes = plt.subplots(1, 1 + len(trained), figsize=(4.5 * (1 + len(trained)), 4), squeeze=False)
    bars = axes[0][0]
    names = [entry["method"] for entry in summary]
    x = range(len(names))
    width = 0.8 / len(ACCURACIES)
    for i, (key, label) in enumerate(ACCURACIES):
        offset = (i - (len(ACCURACIES) - 1) / 2) * width
        bars.bar([j + offset for j in x], [e[key] for e in summary], width,
                 yerr=[e[key + "_std"] for e in summary], capsize=3, label=label)
    bars.set_xticks(list(x), names, rotation=20)
    bars.set_ylim(0, 1)
    bars.set_ylabel("accuracy on real digits (sklearn)")
    bars.set_title("frozen-backbone probes")
    bars.legend(loc="lower right")
    for ax, method in zip(axes[0][1:], trained):
        for seed, curve in curves[method].items():
            ax.plot([s for s, _ in curve], [v for _, v in curve], label=f"seed {seed}", alpha=0.8)
        ax.set_title(f"{method}: {LOSS_COLUMNS[method].removesuffix('_step')}")
        ax.set_xlabel("step")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(output: Path, results: dict, curves: dict) -> None:
    """``results.json`` (``results`` as is), ``results.md`` (the table) and ``results.png`` (:func:`plot`)."""

    (output / "results.json").write_text(json.dumps(results, indent=2))
    seeds_text = ", ".join(map(str, results["seeds"]))
    (output / "results.md").write_text(
        f"# StableRep demo results\n\nProbes on real handwritten digits (sklearn), seeds {seeds_text} "
        f"(mean ± sample std over seeds).\n\n{markdown_table(results['summary'])}\n"
    )
    plot(results["summary"], curves, output / "results.png")
