"""Reading the captions file for generation at scale: one process of many vs a single process.

``stablerep-generate`` run as process i of n (``--num-parts n --part-index i``, or torchrun/SLURM)
reads the whole captions file (de-duplication and caption indices are global) but keeps
:class:`~data_gen.captions.Caption` objects for its own captions only. A cc12m-like TSV
(``url<TAB>caption``, some duplicates) of ``--captions`` lines is written to a temporary folder,
then each case runs in a fresh process, which reports its time, then (loading again under
``tracemalloc``) the memory its allocations hold after loading and at their peak.

    python bench/bench_captions.py [--captions 1000000 --processes 64]

Prints ``RATIO captions_held_one_of_n_vs_single`` (memory held after loading by one of n processes /
by a single process; goal <= 1.5 / n + 0.05) and ``RATIO captions_peak_one_of_n_vs_single``.
"""

import argparse
import json
import random
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

MEASURE = """
import gc, json, sys, time, tracemalloc
sys.path.insert(0, sys.argv[1])
from data_gen.captions import load_captions
start = time.perf_counter()
captions = load_captions(sys.argv[2], caption_column="2", part=(0, int(sys.argv[3])))
seconds = time.perf_counter() - start
del captions
gc.collect()
tracemalloc.start()  # traced again, for the allocations alone (slower)
captions = load_captions(sys.argv[2], caption_column="2", part=(0, int(sys.argv[3])))
gc.collect()
held, peak = tracemalloc.get_traced_memory()
print(json.dumps({"seconds": seconds, "objects": len(captions.captions),
                  "total": captions.num_captions, "held": held, "peak": peak}))
"""


def write_tsv(path: Path, captions: int) -> None:
    rng = random.Random(0)
    words = "dog cat red blue small large tree house car street person beach mountain sky".split()
    with open(path, "w", encoding="utf-8") as f:
        for i in range(captions):
            n = i if rng.random() > 0.03 else rng.randrange(i + 1)  # ~3 % repeat an earlier caption
            text = (
                f"a photo number {n} of a {words[n % 14]} {words[n // 14 % 14]} "
                f"near the {words[n // 196 % 14]}"
            )
            f.write(f"https://example.com/images/{i}.jpg\t{text}\n")


def measure(path: Path, processes: int) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", MEASURE, str(REPO), str(path), str(processes)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--captions", type=int, default=1_000_000)
    parser.add_argument(
        "--processes", type=int, default=64, help="generation processes sharing the file"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "captions.tsv"
        write_tsv(path, args.captions)
        results = {n: measure(path, n) for n in (1, args.processes)}
    for n, r in results.items():
        print(
            f"1 of {n} process(es): {r['seconds']:.1f} s, "
            f"{r['objects']} Caption objects of {r['total']}, held {r['held'] / 1e6:.0f} MB "
            f"({r['held'] / r['total']:.0f} B per caption of the file), "
            f"peak {r['peak'] / 1e6:.0f} MB"
        )
    one, single = results[args.processes], results[1]
    print(
        f"RATIO captions_held_one_of_n_vs_single {one['held'] / single['held']:.3f} "
        f"(goal <= {1.5 / args.processes + 0.05:.3f})"
    )
    print(
        f"RATIO captions_peak_one_of_n_vs_single {one['peak'] / single['peak']:.3f} (information)"
    )


if __name__ == "__main__":
    main()
