"""Run every benchmark script and assemble `benchmarks/RESULTS.md`.

Each `bench_<topic>.py` writes `benchmarks/results/<topic>.md`; this script
runs them one after another (pass topics to run a subset, `--quick` for a
smoke run that writes nothing) and concatenates the sections.
"""

from __future__ import annotations

import argparse
import pathlib
import subprocess
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
ORDER = ["decomp", "exp", "logdet", "solvers", "gp", "pde"]

HEADER = """# Benchmark results

Every figure below was produced by the script named in its section
(`python benchmarks/bench_<topic>.py`, or `make bench` for all of them), on
the machine named there, in one run per section: matfree and its peers on the
same problems, same tolerances. Times are medians of several runs after a
warm-up; compile times are reported separately; "peak" memory is XLA's
compiled-memory estimate for JAX code unless a section says otherwise.
No GPU figures: no accelerator was available to the sessions that ran these.

"""


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("topics", nargs="*", default=None)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    scripts = {p.stem.removeprefix("bench_"): p for p in HERE.glob("bench_*.py")}
    topics = args.topics or sorted(
        scripts, key=lambda t: (t not in ORDER, ORDER.index(t) if t in ORDER else 0, t)
    )
    for topic in topics:
        t0 = time.perf_counter()
        cmd = [sys.executable, "-u", str(scripts[topic])] + (
            ["--quick"] if args.quick else []
        )
        print(f"== {topic}: {' '.join(cmd)}", flush=True)
        subprocess.run(cmd, check=True)
        print(f"== {topic} done in {time.perf_counter() - t0:.0f} s", flush=True)
    if not args.quick:
        assemble()


def assemble():
    sections = []
    for topic in sorted(
        (p.stem for p in (HERE / "results").glob("*.md") if not p.stem.endswith("_quick")),
        key=lambda t: (t not in ORDER, ORDER.index(t) if t in ORDER else 0, t),
    ):
        sections.append((HERE / "results" / f"{topic}.md").read_text().strip())
    (HERE / "RESULTS.md").write_text(HEADER + "\n\n".join(sections) + "\n")
    print("wrote", HERE / "RESULTS.md")


if __name__ == "__main__":
    main()
