"""Fingerprint a Decathlon data set with unet-med's fingerprint and with MONAI's Auto3DSeg ``DataAnalyzer``.

Each runs in a fresh process (with its worker processes); the parent samples the memory (PSS) of the whole
process tree every 0.1 s. Prints the CPU, a table of wall time and peak memory, and whether the two agree on
the median spacing and the foreground intensity percentiles of channel 0.

    python benchmarks/bench_fingerprint.py /data/Task04_Hippocampus
    python benchmarks/bench_fingerprint.py data_samples --workers 2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import cpu_description


def tree_pss_mib(root: int) -> float:
    """Proportional set size of ``root`` and all its descendants, MiB (from /proc).

    PSS shares each page among the processes that map it, so forked workers do not count their parent's
    pages (torch, MONAI) again, as summing resident sizes would.
    """
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            parents[int(entry)] = int(stat[stat.rindex(")") + 2 :].split()[1])
        except (OSError, ValueError, IndexError):
            continue
    tree, frontier = {root}, [root]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, ppid in parents.items() if ppid == parent and pid not in tree]
        tree.update(children)
        frontier += children
    total_kib = 0
    for pid in tree:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total_kib += int(line.split()[1])
        except (OSError, ValueError):
            continue
    return total_kib / 1024


def run_ours(dataset: str, workers: int) -> dict:
    import numpy as np

    from unet_med.bundle.fingerprint import compute_fingerprint

    fingerprint = compute_fingerprint(dataset, workers=workers, progress=False)
    stats = fingerprint.intensity[0]
    per_case = [np.percentile(case.foreground_samples[0], [0.5, 99.5]) for case in fingerprint.cases]
    return {
        "case_mean_p00_5": float(np.mean([p[0] for p in per_case])),
        "case_mean_p99_5": float(np.mean([p[1] for p in per_case])),
        "median_spacing": fingerprint.median_spacing().tolist(),
        "p00_5": stats["percentile_00_5"],
        "p99_5": stats["percentile_99_5"],
        "mean": stats["mean"],
    }


def run_data_analyzer(dataset: str, workers: int) -> dict:
    from monai.apps.auto3dseg import DataAnalyzer

    from unet_med.bundle.datalists import decathlon_datalist

    datalist = {"training": decathlon_datalist(dataset)}
    with tempfile.TemporaryDirectory() as folder:
        output = str(Path(folder) / "datastats.yaml")
        summary = DataAnalyzer(datalist, "", output_path=output, device="cpu", worker=workers).get_all_case_stats()
    summary = summary["stats_summary"]
    spacing = summary["image_stats"]["spacing"]["median"]
    intensity = summary["image_foreground_stats"]["intensity"]
    return {
        "median_spacing": [float(s) for s in spacing],
        "p00_5": float(intensity["percentile_00_5"][0]) if isinstance(intensity["percentile_00_5"], list)
        else float(intensity["percentile_00_5"]),
        "p99_5": float(intensity["percentile_99_5"][0]) if isinstance(intensity["percentile_99_5"], list)
        else float(intensity["percentile_99_5"]),
        "mean": float(intensity["mean"][0]) if isinstance(intensity["mean"], list) else float(intensity["mean"]),
    }


def measure(tool: str, dataset: str, workers: int) -> dict:
    """Run one tool in a child process; its result with ``seconds`` and ``peak_mib``."""
    root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    with tempfile.NamedTemporaryFile(suffix=".json") as out, tempfile.TemporaryFile("w+") as log:
        command = [sys.executable, __file__, dataset, "--child", tool, "--workers", str(workers), "--out", out.name]
        start = time.perf_counter()
        child = subprocess.Popen(command, stdout=log, stderr=log, text=True, env=env)
        peak = 0.0
        while child.poll() is None:
            peak = max(peak, tree_pss_mib(child.pid))
            time.sleep(0.1)
        seconds = time.perf_counter() - start
        load = os.getloadavg()[0]
        if child.returncode != 0:
            log.seek(0)
            raise RuntimeError(f"{tool} failed:\n{log.read()[-3000:]}")
        return {**json.loads(Path(out.name).read_text()), "seconds": seconds, "peak_mib": peak, "load": load}



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", help="Decathlon folder")
    parser.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)), help="processes (default: CPUs)")
    parser.add_argument("--child", choices=("ours", "DataAnalyzer"), help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        run = run_ours if args.child == "ours" else run_data_analyzer
        Path(args.out).write_text(json.dumps(run(args.dataset, args.workers)))
        return
    print(cpu_description())
    print(f"{args.dataset}, {args.workers} worker processes, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n")
    results = {tool: measure(tool, args.dataset, args.workers) for tool in ("ours", "DataAnalyzer")}
    print("| tool | time (s) | peak memory (MiB) | load after | median spacing (mm) | fg p0.5 | fg p99.5 | fg mean |")
    print("|---|---|---|---|---|---|---|---|")
    for tool, result in results.items():
        spacing = " x ".join(f"{s:g}" for s in result["median_spacing"])
        print(
            f"| {tool} | {result['seconds']:.1f} | {result['peak_mib']:.0f} | {result['load']:.1f} | {spacing} | "
            f"{result['p00_5']:.4g} | "
            f"{result['p99_5']:.4g} | {result['mean']:.4g} |"
        )
    ours, theirs = results["ours"], results["DataAnalyzer"]
    same_spacing = all(abs(a - b) < 1e-3 for a, b in zip(ours["median_spacing"], theirs["median_spacing"]))
    print(f"\nmedian spacing agrees: {same_spacing}")
    print("foreground intensity of channel 0, relative difference to DataAnalyzer:")
    print(f"  mean: {abs(ours['mean'] - theirs['mean']) / max(abs(theirs['mean']), 1e-9):.2%}")
    for key in ("p00_5", "p99_5"):
        pooled = abs(ours[key] - theirs[key]) / max(abs(theirs[key]), 1e-9)
        averaged = abs(ours[f"case_mean_{key}"] - theirs[key]) / max(abs(theirs[key]), 1e-9)
        print(
            f"  {key}: ours pooled over the data set {ours[key]:.4g} ({pooled:.2%}); ours averaged over cases as "
            f"DataAnalyzer does {ours[f'case_mean_{key}']:.4g} ({averaged:.2%})"
        )


if __name__ == "__main__":
    main()
