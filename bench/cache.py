#!/usr/bin/env python3
"""Benchmark 8, the result cache: a batch of N cached `command` tasks (each `sleep S; echo i`,
one declared input file) run cold (empty cache) and then warm (nothing changed: every task a
hit), wall time of the whole `dispatch_runner run` (start-up, validation, lookups, trace). Target
(issue 15): warm under 5% of cold. `bench/run` includes it (`--only 8`); run alone it prints one
JSON document.

usage: bench/cache.py [--bin PATH] [--tasks 200] [--workers 8] [--sleep 0.1] [--repeat 3]
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time


def run(binary, cwd, batch_file):
    start = time.perf_counter()
    out = subprocess.run([binary, "run", "-q", "-f", batch_file], cwd=cwd,
                         capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if out.returncode != 0:
        sys.exit(f"run failed ({out.returncode}): {out.stderr[-2000:]}")
    doc = json.loads(out.stdout)
    cached = sum(1 for r in doc["results"] if r.get("cached"))
    return elapsed, cached


def measure(binary, tasks, workers, sleep, repeat):
    """Medians (cold, warm) of `repeat` rounds, and every round's figures."""
    colds, warms = [], []
    with tempfile.TemporaryDirectory(prefix="dispatch-bench-cache-") as ws:
        os.makedirs(os.path.join(ws, "src"))
        with open(os.path.join(ws, "src", "input.txt"), "w") as f:
            f.write("unchanged\n")
        batch = {
            "tasks": [
                {"task_id": f"t{i}", "agent": "command",
                 "input_data": {"argv": ["sh", "-c", f"sleep {sleep}; echo {i}"]},
                 "cache": {"inputs": ["src/*.txt"]}}
                for i in range(tasks)
            ],
            "config": {"max_workers": workers},
        }
        batch_file = os.path.join(ws, "batch.json")
        with open(batch_file, "w") as f:
            json.dump(batch, f)
        for _ in range(repeat):
            shutil.rmtree(os.path.join(ws, "traces"), ignore_errors=True)
            cold, hits = run(binary, ws, batch_file)
            assert hits == 0, hits
            warm, hits = run(binary, ws, batch_file)
            assert hits == tasks, hits
            colds.append(cold)
            warms.append(warm)
    return statistics.median(colds), statistics.median(warms), colds, warms


def bench_cache(args, table, work):
    """bench.py's benchmark 8: 200 cached tasks, nothing changed, against the same batch cold."""
    tasks = args.scale(200, 20)
    repeat = min(args.repeat, 3)
    cold, warm, _, _ = measure(args.binary, tasks, 8, 0.1, repeat)
    table.add(8, f"{tasks} cached `sleep 0.1` tasks, 8 workers, nothing changed: wall time, warm (every task a cache hit)",
              warm, "same batch, cold (empty cache)", cold, "s", "< 5% of cold (0.05x)", warm / cold < 0.05)


def main():
    p = argparse.ArgumentParser()
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    p.add_argument("--bin", default=os.path.join(root, "target/release/dispatch_runner"))
    p.add_argument("--tasks", type=int, default=200)
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--sleep", type=float, default=0.1)
    p.add_argument("--repeat", type=int, default=3)
    a = p.parse_args()
    cold, warm, colds, warms = measure(a.bin, a.tasks, a.workers, a.sleep, a.repeat)
    print(json.dumps({
        "tasks": a.tasks, "workers": a.workers, "sleep_seconds": a.sleep,
        "cold_seconds": round(cold, 3), "warm_seconds": round(warm, 3),
        "warm_over_cold": round(warm / cold, 4), "target": 0.05,
        "cold_runs": [round(x, 3) for x in colds], "warm_runs": [round(x, 3) for x in warms],
    }, indent=2))


if __name__ == "__main__":
    main()
