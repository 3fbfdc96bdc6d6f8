"""Runs every ``bench/*.py`` script and prints all their ratios in one table.

A benchmark reports each result as a line ``RATIO <name> <value> (goal <op> <target>)``. Every
script is run in its own process from the repository root; one that exits non-zero, times out or
prints no RATIO line is listed as such (with the last line of its output), never dropped. Scripts
named ``gpu_*.py`` are listed as skipped when no CUDA device is visible.

    python bench/run_all.py [--only bench_loss bench_step] [--timeout 1800]
                            [--output bench/results.json]

Exit status: 0 if every script that ran succeeded, 1 otherwise (goals missed do not fail the run).
"""

import argparse
import json
import operator
import re
import subprocess
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
RATIO_LINE = re.compile(r"^RATIO\s+(?P<name>\S+)\s+(?P<value>\S+)(?:\s+\((?P<goal>[^)]*)\))?\s*$")
GOAL = re.compile(r"goal\s*(?P<op><=|>=|<|>|==)\s*(?P<target>[-+0-9.eE]+)")
COMPARE = {
    "<=": operator.le,
    ">=": operator.ge,
    "<": operator.lt,
    ">": operator.gt,
    "==": operator.eq,
}


def discover(only=None) -> list:
    scripts = sorted(p for p in BENCH_DIR.glob("*.py") if p.name != Path(__file__).name)
    if only:
        scripts = [p for p in scripts if p.stem in only or p.name in only]
    return scripts


def goal_met(value: float, goal: str):
    """True/False for a goal like ``goal <= 1.02``; None when the goal cannot be read."""
    match = GOAL.search(goal or "")
    if match is None:
        return None
    return COMPARE[match["op"]](value, float(match["target"]))


def parse_ratios(output: str) -> list:
    ratios = []
    for line in output.splitlines():
        match = RATIO_LINE.match(line.strip())
        if match is None:
            continue
        try:
            value = float(match["value"])
        except ValueError:
            value = float("nan")
        goal = match["goal"] or ""
        ratios.append(
            {"name": match["name"], "value": value, "goal": goal, "met": goal_met(value, goal)}
        )
    return ratios


def cuda_visible() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def run_script(script: Path, timeout: float) -> dict:
    """Runs one benchmark; returns its status, ratios, time and (on failure) last output line."""
    started = time.perf_counter()
    try:
        proc = subprocess.run(
            [sys.executable, str(script)], cwd=REPO, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired as expired:
        output = (
            (expired.stdout or b"").decode()
            if isinstance(expired.stdout, bytes)
            else (expired.stdout or "")
        )
        return {
            "script": script.name,
            "status": f"timed out after {timeout:.0f} s",
            "ratios": parse_ratios(output),
            "seconds": time.perf_counter() - started,
            "detail": "",
        }
    seconds = time.perf_counter() - started
    ratios = parse_ratios(proc.stdout)
    lines = [line for line in (proc.stderr + "\n" + proc.stdout).splitlines() if line.strip()]
    last_error = next((line for line in reversed(proc.stderr.splitlines()) if line.strip()), "")
    if proc.returncode != 0:
        status, detail = (
            f"failed (exit {proc.returncode})",
            last_error or (lines[-1] if lines else ""),
        )
    elif not ratios:
        status, detail = "no RATIO line", lines[-1] if lines else ""
    else:
        status, detail = "ok", ""
    return {
        "script": script.name,
        "status": status,
        "ratios": ratios,
        "seconds": seconds,
        "detail": detail.strip(),
    }


def table(results: list) -> str:
    rows = [("script", "ratio", "value", "goal", "met", "status", "time (s)")]
    for result in results:
        seconds = f"{result['seconds']:.0f}" if result["seconds"] is not None else "-"
        status = result["status"] + (f": {result['detail'][:100]}" if result["detail"] else "")
        if not result["ratios"]:
            rows.append((result["script"], "-", "-", "-", "-", status, seconds))
        for ratio in result["ratios"]:
            met = {True: "yes", False: "NO", None: "?"}[ratio["met"]]
            rows.append(
                (
                    result["script"],
                    ratio["name"],
                    f"{ratio['value']:.3f}",
                    ratio["goal"],
                    met,
                    status,
                    seconds,
                )
            )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--only", nargs="+", metavar="NAME", help="run only these scripts (stem or file name)"
    )
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per script")
    parser.add_argument("--output", type=Path, help="also write the results as JSON here")
    args = parser.parse_args(argv)

    scripts = discover(args.only)
    if not scripts:
        print(f"run_all: error: no benchmark scripts matched in {BENCH_DIR}", file=sys.stderr)
        return 2
    has_gpu = cuda_visible()
    results = []
    for script in scripts:
        if script.name.startswith("gpu_") and not has_gpu:
            results.append(
                {
                    "script": script.name,
                    "status": "skipped (needs a GPU)",
                    "ratios": [],
                    "seconds": None,
                    "detail": "",
                }
            )
            print(f"[bench] {script.name}: skipped, no GPU", flush=True)
            continue
        print(f"[bench] {script.name} ...", flush=True)
        result = run_script(script, args.timeout)
        results.append(result)
        print(
            f"[bench] {script.name}: {result['status']} in {result['seconds']:.0f} s, "
            f"{len(result['ratios'])} ratio(s)",
            flush=True,
        )

    print()
    print(table(results))
    if args.output:
        args.output.write_text(json.dumps(results, indent=2))
    ran = [r for r in results if not r["status"].startswith("skipped")]
    return 0 if all(r["status"] == "ok" for r in ran) else 1


if __name__ == "__main__":
    sys.exit(main())
