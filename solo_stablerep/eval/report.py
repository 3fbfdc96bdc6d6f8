"""The comparison's outputs: ``results.json``, ``results.csv``, ``results.md`` and ``results.png``.

One result is one (model, data set, probe) score in [0, 1], with its details (the linear probe's
chosen weight decay and validation curve, the few-shot 95 % interval). The Markdown table and the
plot have a row (a group of bars) per model and a column per data set × probe, in percent; the
``random:`` models are the floor, drawn in grey. Every file is written atomically.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

from solo_stablerep.console import check_output_folder
from solo_stablerep.errors import EvalError
from solo_stablerep.storage import atomic_output

log = logging.getLogger(__name__)

REPORT_FILES = ("results.json", "results.csv", "results.md", "results.png")
CSV_FIELDS = ("model", "dataset", "probe", "metric", "score", "ci95", "weight_decay")


@dataclass
class Result:
    model: str
    dataset: str
    probe: str  # column name: "linear", "kNN", "5-way 1-shot", ...
    metric: str
    score: float
    ci95: float | None = None
    weight_decay: float | None = None
    details: dict = field(default_factory=dict)

    @property
    def column(self) -> str:
        return f"{self.dataset} {self.probe}"


def _columns(results: list[Result]) -> list[str]:
    return list(dict.fromkeys(r.column for r in results))


def _cell(result: Result | None) -> str:
    if result is None:
        return "n/a"
    text = f"{100 * result.score:.1f}"
    if result.ci95 is not None:
        text += f" ± {100 * result.ci95:.1f}"
    return text


def markdown_table(models: list[str], results: list[Result], skipped=()) -> str:
    """The table of ``results``, a row per model, and the lines of the probes ``skipped``."""
    columns = _columns(results)
    by_cell: dict[tuple, Result] = {(r.model, r.column): r for r in results}
    metrics = {r.column: r.metric for r in results}
    lines = [
        "| model | " + " | ".join(columns) + " |",
        "|---|" + "---:|" * len(columns),
    ]
    for model in models:
        lines.append(
            f"| {model} | " + " | ".join(_cell(by_cell.get((model, c))) for c in columns) + " |"
        )
    used = ", ".join(f"{c}: {metrics[c]}" for c in columns)
    lines += [
        "",
        f"Scores in percent (few-shot: mean ± 95 % interval over episodes). Metrics: {used}.",
    ]
    if skipped:
        lines.append(f"Skipped: {'; '.join(skipped)}.")
    return "\n".join(lines) + "\n"


def check_report_folder(output: Path, overwrite: bool = False) -> None:
    """Raises a one-line error unless the report can be written into ``output``: a folder (or one
    to make) that is writable and holds no earlier report, unless ``overwrite``. Called before
    any work."""
    check_output_folder(output)
    earlier = [name for name in REPORT_FILES if (output / name).exists()]
    if earlier and not overwrite:
        raise EvalError(
            f"--output {output} holds the results of an earlier run ({', '.join(earlier)}): "
            "pass --overwrite to replace them, or give another --output"
        )


def write_report(
    output: Path, summary: dict, models: list[str], results: list[Result]
) -> list[Path]:
    """Writes the four files into ``output``; returns their paths (the plot only if matplotlib is
    installed). ``summary["skipped"]``: the probes that could not run, listed under the table."""
    output.mkdir(parents=True, exist_ok=True)
    written = []
    document = dict(
        summary, models=summary.get("models", models), results=[asdict(r) for r in results]
    )
    path = output / "results.json"
    with atomic_output(path, "w", encoding="utf-8") as f:
        json.dump(document, f, indent=1)
    written.append(path)

    buffer = io.StringIO()
    table = csv.DictWriter(
        buffer, fieldnames=CSV_FIELDS, extrasaction="ignore", lineterminator="\n"
    )
    table.writeheader()
    for r in results:
        table.writerow(asdict(r))
    path = output / "results.csv"
    with atomic_output(path, "w", encoding="utf-8") as f:
        f.write(buffer.getvalue())
    written.append(path)

    path = output / "results.md"
    with atomic_output(path, "w", encoding="utf-8") as f:
        f.write(markdown_table(models, results, summary.get("skipped", ())))
    written.append(path)

    try:
        import matplotlib
    except ImportError:
        log.warning("matplotlib is not installed: no results.png (pip install matplotlib)")
        (output / "results.png").unlink(missing_ok=True)  # an earlier run's
        return written
    matplotlib.use("Agg")
    path = output / "results.png"
    with atomic_output(path) as f:
        plot(models, results, f)
    written.append(path)
    return written


def plot(models: list[str], results: list[Result], file) -> None:
    """Grouped bars: a panel per data set, a group per probe, a bar per model (random in grey)."""
    import matplotlib.pyplot as plt

    datasets = list(dict.fromkeys(r.dataset for r in results))
    by_cell = {(r.model, r.dataset, r.probe): r for r in results}
    most_probes = max(len(_probes(results, d)) for d in datasets)
    figure, axes = plt.subplots(
        1,
        len(datasets),
        figsize=(2.5 + 0.6 * most_probes * len(models) * len(datasets), 3.6),
        squeeze=False,
    )
    learned = [m for m in models if not m.startswith("random:")]
    # ten colours: an eleventh learned model is drawn in the default colour
    colours = dict(zip(learned, plt.get_cmap("tab10").colors, strict=False))
    width = 0.8 / max(len(models), 1)
    for axis, dataset in zip(axes[0], datasets, strict=True):
        probes = _probes(results, dataset)
        for m, model in enumerate(models):
            xs, heights, errors = [], [], []
            for p, probe in enumerate(probes):
                result = by_cell.get((model, dataset, probe))
                if result is not None:
                    xs.append(p + (m - (len(models) - 1) / 2) * width)
                    heights.append(100 * result.score)
                    errors.append(100 * (result.ci95 or 0))
            bars = axis.bar(
                xs,
                heights,
                width,
                yerr=errors if any(errors) else None,
                capsize=2,
                label=model,
                color=colours.get(model, "0.7"),
                edgecolor="0.3",
                linewidth=0.5,
            )
            axis.bar_label(bars, fmt="%.0f", fontsize=7, padding=2)
        axis.set_xticks(range(len(probes)))
        axis.set_xticklabels(probes, rotation=20, ha="right")
        axis.set_title(dataset)
        axis.set_ylim(0, 105)
        axis.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("score (%)")
    axes[0][-1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    figure.tight_layout()
    figure.savefig(file, format="png", dpi=120)
    plt.close(figure)


def _probes(results: list[Result], dataset: str) -> list[str]:
    return list(dict.fromkeys(r.probe for r in results if r.dataset == dataset))
