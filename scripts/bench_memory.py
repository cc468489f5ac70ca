#!/usr/bin/env python3
"""Memory per memory: engram's server RSS against hnswlib's index, same vectors.

Run through scripts/bench_memory.sh (it prepares the Python environment and
the data set). For one fvecs data set with exact ground truth:

1. hnswlib, in a child process of its own: RSS after loading the vectors,
   RSS after building the index (M=16, ef_construction=100, 2 threads); the
   difference over N is its index's bytes per vector. Then the smallest ef
   from a sweep that reaches recall@10 >= 0.95, with single-query latency
   p50/p99 in process.
2. engram: `engram serve` on a fresh data directory; RSS once ready (empty),
   then every vector streamed over gRPC with the Python client, then RSS
   once every memory is indexed and the RSS has settled (freed memory goes
   back to the OS after a delay); (full - empty) / N is its bytes per
   memory.
   The server's own account by kind (describe's `memory`) is recorded too.
   Then recall@10 at the server's default settings over the queries, with
   the latency each recall took as the client saw it (gRPC round trip on
   loopback included: not comparable one to one with hnswlib's in-process
   figure, and said so in the result).

Prints a JSON object and writes it to --out.
"""
import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "clients" / "python" / "tests"))


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def settled_rss(pid: int, at_least_s: float = 15.0, at_most_s: float = 120.0) -> int:
    """Resident memory once it has settled: freed memory goes back to the OS
    after a delay (jemalloc's decay, 10 s by default), so the process is
    sampled every second for at least `at_least_s` and until two samples in
    a row differ by under 0.5%; after `at_most_s` it fails rather than
    report a number that never settled."""
    start, last = time.monotonic(), rss_bytes(pid)
    while True:
        time.sleep(1.0)
        now = rss_bytes(pid)
        waited = time.monotonic() - start
        if waited >= at_least_s and abs(now - last) <= 0.005 * last:
            return now
        if waited >= at_most_s:
            raise RuntimeError(f"the server's RSS did not settle in {at_most_s:.0f} s ({last} -> {now} bytes)")
        last = now


def read_vecs(path: Path, as_float: bool = True):
    import numpy as np

    raw = np.fromfile(path, dtype="<i4")
    d = int(raw[0])
    raw = raw.reshape(-1, d + 1)
    assert (raw[:, 0] == d).all(), f"{path}: not an fvecs/ivecs file"
    body = raw[:, 1:]
    return body.view("<f4") if as_float else body


#: Longest wait for the server to index everything (1M 768-d vectors on two
#: cores take minutes).
INDEX_TIMEOUT_S = 3600


def percentile(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


HNSWLIB_CHILD = r"""
import json, sys, time
import numpy as np, hnswlib
sys.path.insert(0, sys.argv[1])
from bench_memory import read_vecs, rss_bytes, percentile
import os
data, n, threads = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
base = np.ascontiguousarray(read_vecs(f"{data}/base.fvecs")[:n])
queries = read_vecs(f"{data}/query.fvecs")
gt = read_vecs(f"{data}/groundtruth.ivecs", as_float=False)[:, :10]
before = rss_bytes(os.getpid())
index = hnswlib.Index(space="ip", dim=base.shape[1])
index.init_index(max_elements=n, M=16, ef_construction=100, random_seed=100)
index.set_num_threads(threads)
t = time.perf_counter()
index.add_items(base, np.arange(n))
build_s = time.perf_counter() - t
after = rss_bytes(os.getpid())
index.set_num_threads(1)
chosen = None
sweep = []
for ef in [16, 24, 32, 48, 64, 96, 128, 192, 256]:
    index.set_ef(ef)
    lat, hits = [], 0
    for q, g in zip(queries, gt):
        t = time.perf_counter()
        labels, _ = index.knn_query(q, k=10)
        lat.append((time.perf_counter() - t) * 1e6)
        hits += len(set(labels[0].tolist()) & set(g.tolist()))
    r = {"ef": ef, "recall_at_10": hits / (10 * len(queries)),
         "latency_us_p50": percentile(lat, 50), "latency_us_p99": percentile(lat, 99)}
    sweep.append(r)
    if r["recall_at_10"] >= 0.95:
        chosen = r
        break
print(json.dumps({"rss_after_load": before, "rss_after_build": after,
                  "index_bytes": after - before, "bytes_per_vector": (after - before) / n,
                  "build_s": build_s, "first_ef_at_recall_0_95": chosen, "sweep": sweep}))
"""


def run_hnswlib(data: Path, n: int, threads: int) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", HNSWLIB_CHILD, str(Path(__file__).parent), str(data), str(n), str(threads)],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout)


async def run_engram(data: Path, n: int, workers: int) -> dict:
    import numpy as np
    import engram_grpc as eg
    from conftest import EngramServer

    base = read_vecs(data / "base.fvecs")[:n]
    queries = read_vecs(data / "query.fvecs")
    gt = read_vecs(data / "groundtruth.ivecs", as_float=False)[:, :10]
    with tempfile.TemporaryDirectory(prefix="engram-memory-") as tmp:
        args = ["--wal-sync", "none", "--snapshot-interval-secs", "0", "--queue-capacity", str(n + 1000)]
        if workers:
            args += ["--workers", str(workers)]
        server = EngramServer(Path(tmp), args).start()
        try:
            pid = server.proc.pid
            time.sleep(0.5)
            empty = rss_bytes(pid)
            t = time.perf_counter()
            async with eg.StreamingClient(server.target, space="mem") as client:
                await client.create_space(dimension=base.shape[1])
                accepted = 0
                async for ack in client.observe_many(
                    eg.Episode(id=f"m{i}", embedding=base[i], what="") for i in range(n)
                ):
                    accepted += bool(ack.accepted)
                assert accepted == n, f"{accepted} of {n} accepted"
                stream_s = time.perf_counter() - t
                deadline = time.monotonic() + INDEX_TIMEOUT_S
                while True:
                    info = await client.describe_space()
                    if info.indexed_count == n:
                        break
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"{info.indexed_count} of {n} indexed after {INDEX_TIMEOUT_S} s")
                    await asyncio.sleep(0.5)
                indexed_s = time.perf_counter() - t
                full = settled_rss(pid)
                lat, hits = [], 0
                for q, g in zip(queries, gt):
                    t0 = time.perf_counter()
                    r = await client.recall(eg.Cue(embedding=q, max_results=10))
                    lat.append((time.perf_counter() - t0) * 1e6)
                    got = {int(m.memory_id[1:]) for m in r.memories}
                    hits += len(got & set(g.tolist()))
                info = await client.describe_space()
        finally:
            server.stop() if hasattr(server, "stop") else server.kill()
    mem = info.memory
    return {
        "rss_empty": empty,
        "rss_full": full,
        "bytes_per_memory": (full - empty) / n,
        "server_account_by_kind_per_memory": {
            k: getattr(mem, k) / n for k in ["vectors", "codes", "graph", "episodes", "fresh"]
        },
        "stream_s": stream_s,
        "indexed_after_s": indexed_s,
        "recall_at_10_default_settings": hits / (10 * len(queries)),
        "recall_latency_us_p50_client_grpc": percentile(lat, 50),
        "recall_latency_us_p99_client_grpc": percentile(lat, 99),
    }


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, type=Path)
    ap.add_argument("--n", type=int, default=0, help="vectors to use (0: all)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workers", type=int, default=0, help="engram indexing workers (0: server default)")
    ap.add_argument("--out", required=True, type=Path)
    a = ap.parse_args()
    total = len(read_vecs(a.data / "base.fvecs"))
    n = a.n or total
    hnsw = run_hnswlib(a.data, n, a.threads)
    engram = asyncio.run(run_engram(a.data, n, a.workers))
    result = {
        "benchmark": "memory per memory: engram server RSS vs hnswlib index (scripts/bench_memory.sh)",
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "git": {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))},
        "machine": {"cores": os.cpu_count(), "platform": platform.platform()},
        "parameters": {"data": str(a.data), "n": n, "dim": int(read_vecs(a.data / "query.fvecs").shape[1]),
                       "hnswlib": "M=16 ef_construction=100", "engram": "default index settings, wal.sync none"},
        "engram": engram,
        "hnswlib": hnsw,
        "ratio_engram_over_hnswlib_bytes": engram["bytes_per_memory"] / hnsw["bytes_per_vector"],
        "notes": "engram's latency is a gRPC round trip from a Python client on loopback; hnswlib's is an in-process call.",
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
