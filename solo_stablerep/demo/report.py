"""The demo's results: per-method statistics over seeds, StableRep's margins, a Markdown table, a
plot of accuracy minus the random floor's, and the files that hold them."""

from __future__ import annotations

import json
from pathlib import Path
from statistics import mean, stdev

from solo_stablerep.demo.digits import ACCURACIES
from solo_stablerep.demo.runs import CEILING, LOSS_COLUMNS, RANDOM_FLOOR
from solo_stablerep.storage import atomic_output

SUBJECT = "stablerep"  # the method whose margins the verdict reports


def summarise(rows: list, methods: list) -> list:
    """Per method: mean, spread (sample std over seeds; 0 with one seed) and minimum of each
    measure."""

    summary = []
    for method in methods:
        mine = [row for row in rows if row["method"] == method]
        if not mine:
            continue
        entry = {"method": method, "seeds": [row["seed"] for row in mine]}
        for key in (*(key for key, _ in ACCURACIES), "train_seconds", "images_seen"):
            values = [row[key] for row in mine]
            entry[key] = mean(values)
            entry[f"{key}_std"] = stdev(values) if len(values) > 1 else 0.0
            entry[f"{key}_min"] = min(values)
        summary.append(entry)
    return summary


def margins(rows: list, subject: str = SUBJECT, opponents=(RANDOM_FLOOR, "simclr")) -> dict:
    """``{opponent: {probe key: {"per_seed": {seed: subject - opponent}, "wins", "seeds", "min",
    "mean"}}}`` over the seeds where both ran (the floor of a seed is that seed's
    initialisation)."""

    by = {(row["method"], row["seed"]): row for row in rows}
    seeds = sorted(seed for method, seed in by if method == subject)
    result = {}
    for opponent in opponents:
        common = [seed for seed in seeds if (opponent, seed) in by]
        if not common:
            continue
        result[opponent] = {}
        for key, _ in ACCURACIES:
            diffs = {seed: by[subject, seed][key] - by[opponent, seed][key] for seed in common}
            result[opponent][key] = {
                "per_seed": diffs,
                "wins": sum(d > 0 for d in diffs.values()),
                "seeds": len(diffs),
                "min": min(diffs.values()),
                "mean": mean(diffs.values()),
            }
    return result


def method_label(method: str) -> str:
    return f"{method} (supervised ceiling)" if method == CEILING else method


def markdown_table(summary: list) -> str:
    """One row per method: each accuracy as mean ± std (min over seeds) with several seeds."""

    def accuracy(entry, key):
        if len(entry["seeds"]) == 1:
            return f"{entry[key]:.3f}"
        return f"{entry[key]:.3f} ± {entry[key + '_std']:.3f} (min {entry[key + '_min']:.3f})"

    lines = [
        "| method | "
        + " | ".join(f"{name} acc" for _, name in ACCURACIES)
        + " | train time (s) | images seen |",
        "|---" * (len(ACCURACIES) + 3) + "|",
    ]
    for entry in summary:
        time_text = "-" if entry["method"] == RANDOM_FLOOR else f"{entry['train_seconds']:.0f}"
        seen = "-" if entry["method"] == RANDOM_FLOOR else f"{entry['images_seen']:,.0f}"
        accuracies = " | ".join(accuracy(entry, key) for key, _ in ACCURACIES)
        lines.append(f"| {method_label(entry['method'])} | {accuracies} | {time_text} | {seen} |")
    return "\n".join(lines)


def margins_table(margins_: dict, subject: str = SUBJECT) -> str:
    """StableRep minus each opponent, per probe: seeds won, smallest and mean margin."""

    lines = [
        f"| {subject} minus | " + " | ".join(name for _, name in ACCURACIES) + " |",
        "|---" * (len(ACCURACIES) + 1) + "|",
    ]
    for opponent, per_key in margins_.items():
        cells = [
            f"ahead at {m['wins']}/{m['seeds']} seeds, min {m['min']:+.3f}, mean {m['mean']:+.3f}"
            for m in (per_key[key] for key, _ in ACCURACIES)
        ]
        lines.append(f"| {opponent} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def accuracy_text(row: dict) -> str:
    """One run's accuracies on one line, for the progress log."""

    return " ".join(f"{name} {row[key]:.3f}" for key, name in ACCURACIES)


def plot(rows: list, curves: dict, path: Path) -> None:
    """Top: per probe, each trained method's accuracy minus the random floor's of the same seed,
    one dot per seed and a bar at the mean. Bottom: each method's loss curves."""

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    floor = {row["seed"]: row for row in rows if row["method"] == RANDOM_FLOOR}
    methods = list(dict.fromkeys(row["method"] for row in rows if row["method"] != RANDOM_FLOOR))
    trained = [m for m in curves if curves[m]]
    columns = max(len(ACCURACIES), len(trained), 1)
    fig, axes = plt.subplots(2, columns, figsize=(4.2 * columns, 7.5), squeeze=False)
    for ax, (key, name) in zip(axes[0], ACCURACIES, strict=False):
        for x, method in enumerate(methods):
            diffs = [
                row[key] - floor[row["seed"]][key]
                for row in rows
                if row["method"] == method and row["seed"] in floor
            ]
            if not diffs:
                continue
            offsets = [0.25 * (i / max(1, len(diffs) - 1) - 0.5) for i in range(len(diffs))]
            ax.scatter([x + o for o in offsets], diffs, s=18, zorder=3)
            ax.hlines(mean(diffs), x - 0.3, x + 0.3, colors="black", zorder=4)
        ax.axhline(0, color="gray", linestyle="--", linewidth=1)
        ax.set_xticks(range(len(methods)), [method_label(m).replace(" (", "\n(") for m in methods])
        ax.set_title(f"{name}: accuracy minus random init")
        ax.set_ylabel("accuracy - random init's (same seed)")
    for ax in axes[0][len(ACCURACIES) :]:
        ax.axis("off")
    for ax, method in zip(axes[1], trained, strict=False):
        for curve in curves[method].values():
            ax.plot([s for s, _ in curve], [v for _, v in curve], alpha=0.6, linewidth=1)
        ax.set_title(f"{method}: {LOSS_COLUMNS[method].removesuffix('_step')} (one line per seed)")
        ax.set_xlabel("step")
    for ax in axes[1][len(trained) :]:
        ax.axis("off")
    fig.tight_layout()
    with atomic_output(path) as f:
        fig.savefig(f, format="png", dpi=100)
    plt.close(fig)


def _write_text(path: Path, text: str) -> None:
    with atomic_output(path, "w", encoding="utf-8") as f:
        f.write(text)


def write_report(output: Path, results: dict, curves: dict) -> None:
    """``results.json`` (``results`` as is), ``results.md`` (the tables) and ``results.png``
    (:func:`plot`); each replaced whole, so a run stopped between seeds leaves the seeds so far."""

    _write_text(output / "results.json", json.dumps(results, indent=2))
    seeds_text = ", ".join(map(str, results["seeds_done"]))
    text = (
        f"# StableRep demo results\n\nProbes on real handwritten digits: {results['probe']}. "
        f"Seeds {seeds_text} (mean ± sample std (min) over seeds).\n\n"
        f"{markdown_table(results['summary'])}\n"
    )
    if results["margins"]:
        text += f"\n{margins_table(results['margins'])}\n"
    _write_text(output / "results.md", text)
    plot(results["runs"], curves, output / "results.png")
