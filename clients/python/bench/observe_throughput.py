#!/usr/bin/env python3
"""Observe throughput of the Python client: accepted observations/s at
384 dimensions from one Python process, against a server this program
starts itself (``--wal-sync always`` by default, a fresh data dir).

    ENGRAM_BIN=target/ci/engram python clients/python/bench/observe_throughput.py

Runs pipelined ``observe_many`` over 1 stream, then over several streams
(one StreamingClient each, all on one event loop), ``--repeats`` times
each, and reports the median; once with the server's default indexing
workers (one per core) and once with ``--workers 1`` (on a small machine
the indexer competes with client and server for the same cores). Before
each run it waits until earlier runs are fully indexed. Writes ``bench-results/python-client-DATE.json``
(machine, git commit, parameters, every run). With ``--profile`` (or when
the 1-stream median misses ``--target``) it also profiles one 1-stream run
with cProfile and records where the client's time goes.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import datetime as dt
import io
import json
import os
import platform
import pstats
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[2]
sys.path.insert(0, str(HERE.parent / "tests"))

import engram_grpc as eg  # noqa: E402
from conftest import EngramServer  # noqa: E402  (the test suite's server runner)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def git_commit() -> Dict[str, Any]:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, check=False).stdout.strip()

    return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}


async def run_streams(target: str, space: str, vectors: np.ndarray, streams: int, max_in_flight: int) -> Dict[str, Any]:
    """Sends every vector once, split over ``streams`` clients; returns timings."""
    parts = np.array_split(np.arange(len(vectors)), streams)
    clients = [eg.StreamingClient(target, space=space, max_in_flight=max_in_flight) for _ in range(streams)]
    for c in clients:
        await c.connect()
    # Open every session before the clock starts.
    for c in clients:
        await c.observe({"embedding": vectors[0]})
    accepted = [0] * streams

    async def one(k: int) -> None:
        async for answer in clients[k].observe_many(eg.Episode(embedding=vectors[i]) for i in parts[k]):
            if answer.accepted:
                accepted[k] += 1

    start = time.perf_counter()
    await asyncio.gather(*(one(k) for k in range(streams)))
    elapsed = time.perf_counter() - start
    for c in clients:
        await c.close()
    total = sum(accepted)
    return {"streams": streams, "observations": len(vectors), "accepted": total, "seconds": round(elapsed, 4),
            "accepted_per_s": round(total / elapsed, 1)}


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def own_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def categorize(stats: pstats.Stats) -> Dict[str, float]:
    """Profiled time (tottime) by who spends it."""
    totals: Dict[str, float] = {}
    for (file, _line, func), (_cc, _nc, tt, _ct, _) in stats.stats.items():  # type: ignore[attr-defined]
        if "/grpc/" in file:
            key = "grpc.aio (Python + Cython core calls)"
        elif "/engram_grpc/" in file:
            key = "engram_grpc (this client)"
        elif "/asyncio/" in file or "selectors" in file or "epoll" in func or "_contextvars" in func:
            key = "asyncio event loop"
        elif "/protobuf/" in file or "protobuf" in func:
            key = "protobuf"
        elif "observe_throughput" in file:
            key = "benchmark driver"
        else:
            key = "other"
        totals[key] = totals.get(key, 0.0) + tt
    all_time = sum(totals.values()) or 1.0
    return {k: round(v / all_time, 3) for k, v in sorted(totals.items(), key=lambda kv: -kv[1])}


async def wait_indexed(target: str, timeout: float = 600.0) -> float:
    """Waits until the server's indexing queue is empty (earlier runs fully
    indexed), so every run starts from the same idle server; returns the wait."""
    start = time.perf_counter()
    async with eg.StreamingClient(target) as client:
        while True:
            spaces = await client.list_spaces()
            if all(s.queue_depth == 0 for s in spaces):
                return time.perf_counter() - start
            if time.perf_counter() - start > timeout:
                raise RuntimeError(f"the index did not catch up within {timeout:g} s")
            await asyncio.sleep(0.2)


async def profile_one(target: str, space: str, vectors: np.ndarray, max_in_flight: int) -> Dict[str, Any]:
    await wait_indexed(target)
    profiler = cProfile.Profile()
    profiler.enable()
    result = await run_streams(target, space, vectors, 1, max_in_flight)
    profiler.disable()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("tottime").print_stats(25)
    top = []
    for (file, line, func), (cc, nc, tt, ct, _) in sorted(stats.stats.items(), key=lambda kv: -kv[1][2])[:25]:  # type: ignore[attr-defined]
        top.append({"function": f"{Path(file).name}:{line}({func})", "calls": nc, "tottime_s": round(tt, 4), "cumtime_s": round(ct, 4)})
    return {"run": result, "share_of_time": categorize(stats), "top_by_tottime": top, "text": out.getvalue()}


async def measure(args: argparse.Namespace, vectors: np.ndarray) -> Dict[str, Any]:
    """Every run, on one event loop: one server per worker setting."""
    runs: List[Dict[str, Any]] = []
    profile: Optional[Dict[str, Any]] = None
    medians: Dict[str, Dict[str, float]] = {}
    for workers in args.workers:
        data_dir = Path(tempfile.mkdtemp(prefix="engram-bench-"))
        server = EngramServer(data_dir, ["--wal-sync", args.wal_sync, "--workers", str(workers)]).start()
        try:
            for streams in args.streams:
                for r in range(args.repeats):
                    waited = await wait_indexed(server.target)
                    assert server.proc is not None
                    server_cpu, client_cpu = process_cpu_s(server.proc.pid), own_cpu_s()
                    result = await run_streams(server.target, f"bench-{streams}-{r}", vectors, streams, args.max_in_flight)
                    result["client_cpu_s"] = round(own_cpu_s() - client_cpu, 2)
                    result["server_cpu_s"] = round(process_cpu_s(server.proc.pid) - server_cpu, 2)
                    result["server_workers"] = workers
                    result["waited_for_index_s"] = round(waited, 2)
                    print(
                        f"workers={workers} streams={streams} run={r}: {result['accepted_per_s']:,.0f} accepted/s "
                        f"(client cpu {result['client_cpu_s']} s, server cpu {result['server_cpu_s']} s, "
                        f"wall {result['seconds']} s)",
                        flush=True,
                    )
                    runs.append(result)
            medians[f"workers={workers}"] = {
                str(n): statistics.median(
                    x["accepted_per_s"] for x in runs if x["streams"] == n and x["server_workers"] == workers
                )
                for n in args.streams
            }
            one_stream = medians[f"workers={workers}"].get("1", 0.0)
            if profile is None and (args.profile or one_stream < args.target):
                profile = await profile_one(server.target, "bench-profile", vectors, args.max_in_flight)
                profile["server_workers"] = workers
                print(profile["text"][:3000])
        finally:
            server.stop()
            shutil.rmtree(data_dir, ignore_errors=True)
    return {"runs": runs, "medians": medians, "profile": profile}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=20_000, help="observations per run (default %(default)s)")
    parser.add_argument("--dimension", type=int, default=384)
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 2, 4], help="stream counts to run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-in-flight", type=int, default=1024)
    parser.add_argument("--wal-sync", default="always", choices=["always", "interval", "none"])
    parser.add_argument(
        "--workers", type=int, nargs="+", default=[0, 1],
        help="server indexing workers, one server per value (0: the default, one per core; default %(default)s)",
    )
    parser.add_argument("--target", type=float, default=5000.0, help="observations/s goal (default %(default)s)")
    parser.add_argument("--profile", action="store_true", help="always profile one 1-stream run")
    parser.add_argument("--note", default="", help="a note stored in the result file")
    parser.add_argument("--engram-bin", default=os.environ.get("ENGRAM_BIN", str(REPO_ROOT / "target/ci/engram")))
    parser.add_argument("--out", type=Path, default=None, help="result file (default bench-results/python-client-DATE.json)")
    args = parser.parse_args()

    os.environ["ENGRAM_BIN"] = args.engram_bin
    load_before = os.getloadavg()
    rng = np.random.default_rng(42)
    vectors = rng.standard_normal((args.count, args.dimension), dtype=np.float32)
    measured = asyncio.run(measure(args, vectors))
    runs, medians, profile = measured["runs"], measured["medians"], measured["profile"]
    best = max(v for m in medians.values() for v in m.values())

    today = dt.date.today().isoformat()
    out = args.out or REPO_ROOT / "bench-results" / f"python-client-{today}.json"
    import google.protobuf
    import grpc

    doc: Dict[str, Any] = {
        "benchmark": "python-client observe throughput (clients/python/bench/observe_throughput.py)",
        "date": today,
        "machine": {"cores": os.cpu_count(), "cpu_model": cpu_model(), "platform": platform.platform(),
                    "note": "client and server share these cores",
                    "loadavg_1_5_15_before": [round(x, 2) for x in load_before],
                    "loadavg_1_5_15_after": [round(x, 2) for x in os.getloadavg()]},
        "git": git_commit(),
        "software": {"python": platform.python_version(), "grpcio": grpc.__version__,
                     "protobuf": google.protobuf.__version__,
                     "protobuf_backend": _protobuf_backend(), "engram_grpc": eg.__version__},
        "parameters": {"observations_per_run": args.count, "dimension": args.dimension, "streams": args.streams,
                       "repeats": args.repeats, "max_in_flight": args.max_in_flight, "wal_sync": args.wal_sync,
                       "server_workers": args.workers,
                       "embedding_input": "numpy float32 rows (converted by the client)",
                       "between_runs": "wait until the indexing queue is empty"},
        "target_accepted_per_s": args.target,
        "median_accepted_per_s": medians,
        "best_median_accepted_per_s": best,
        "target_met": best >= args.target,
        "runs": runs,
    }
    if profile is not None:
        doc["profile_1_stream"] = {
            "server_workers": profile["server_workers"],
            "run": profile["run"],
            "share_of_time": profile["share_of_time"],
            "top_by_tottime": profile["top_by_tottime"],
        }
    per_obs = [x for x in runs if x["streams"] == 1]
    if per_obs:
        client_us = statistics.median(x["client_cpu_s"] / x["observations"] * 1e6 for x in per_obs)
        server_us = statistics.median(x["server_cpu_s"] / x["observations"] * 1e6 for x in per_obs)
        doc["cpu_per_observation_us_1_stream"] = {"client": round(client_us, 1), "server": round(server_us, 1)}
    if args.note:
        doc["notes"] = args.note
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"median accepted/s: {medians}; target {args.target:,.0f}: {'met' if doc['target_met'] else 'NOT met'}")
    print(f"wrote {out}")
    return 0


def _protobuf_backend() -> str:
    try:
        from google.protobuf.internal import api_implementation

        return str(api_implementation.Type())
    except Exception:
        return "unknown"


if __name__ == "__main__":
    sys.exit(main())
