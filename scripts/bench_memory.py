#!/usr/bin/env python3
"""Memory per memory: engram's server RSS against hnswlib's index, same vectors,
for each vector storage (memory, compact) and each data set size, in one run.

Run through scripts/bench_memory.sh (it prepares the Python environment and
the data sets). For each fvecs data set with exact ground truth:

1. hnswlib, in a child process of its own: RSS after loading the vectors,
   RSS after building the index (M=16, ef_construction=100, 2 threads); the
   difference over N is its index's bytes per vector. Then the smallest ef
   from a sweep that reaches recall@10 >= 0.95, with single-query latency
   p50/p99 in process.
2. engram, once per vector storage: `engram serve` on a fresh data
   directory; RSS once ready (empty); a space created over REST with that
   storage; every vector streamed over gRPC with the Python client; RSS once
   every memory is indexed and the RSS has settled (freed memory goes back
   to the OS after a delay); (full - empty) / N is its bytes per memory.
   The server's own account by kind (describe's `memory`) is recorded too.
   Then 200 warm-up recalls (the compact mode's vector file is then in the
   page cache, as on a server that has been answering) and recall@10 over
   the queries at the server's default settings, with the latency each
   recall took as the client saw it (gRPC round trip on loopback included:
   not comparable one to one with hnswlib's in-process figure). Where the
   default breadth does not reach recall@10 0.95 (large spaces need a wider
   search: hnswlib's too), the smallest per-recall `ef_search` of a sweep
   that does, with its latency.
3. For data sets up to --in-process-max vectors: engram's index alone,
   in process (`engram-bench index`, default ef), in each storage: the same
   search latency without the transport, so the compact mode's cost per
   recall is not hidden by the round trip.

The targets (issue 15) are checked and recorded under "targets": memory
mode within 1.3x of hnswlib's bytes, compact mode under 1,300 B per memory,
recall@10 >= 0.95 for both, compact recall p99 within 2x of memory mode.

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
for ef in [16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024]:
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


def put_json(url: str, body: dict) -> dict:
    import urllib.request

    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), method="PUT", headers={"content-type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read() or b"null")


async def run_engram(data: Path, n: int, workers: int, storage: str) -> dict:
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
            created = put_json(
                f"http://{server.http_addr}/v1/spaces/mem", {"dimension": int(base.shape[1]), "vector_storage": storage}
            )
            assert created["vector_storage"] == storage, created
            t = time.perf_counter()
            async with eg.StreamingClient(server.target, space="mem") as client:
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
                for q in queries[:200]:
                    await client.recall(eg.Cue(embedding=q, max_results=10))

                async def measure(ef: int):
                    lat, hits = [], 0
                    for q, g in zip(queries, gt):
                        t0 = time.perf_counter()
                        r = await client.recall(eg.Cue(embedding=q, max_results=10, ef_search=ef))
                        lat.append((time.perf_counter() - t0) * 1e6)
                        got = {int(m.memory_id[1:]) for m in r.memories}
                        hits += len(got & set(g.tolist()))
                    return {
                        "ef_search": ef or "server default",
                        "recall_at_10": hits / (10 * len(queries)),
                        "latency_us_p50": percentile(lat, 50),
                        "latency_us_p99": percentile(lat, 99),
                    }

                default = await measure(0)
                # Where the default breadth does not reach 0.95 (large
                # spaces need a wider search, hnswlib's too), the
                # per-recall ef_search that does, so that memory is
                # compared at the recall the target names.
                sweep, at_095 = [], (default if default["recall_at_10"] >= 0.95 else None)
                if at_095 is None:
                    for ef in [64, 96, 128, 192, 256, 384, 512, 768, 1024]:
                        row = await measure(ef)
                        sweep.append(row)
                        if row["recall_at_10"] >= 0.95:
                            at_095 = row
                            break
                info = await client.describe_space()
        finally:
            server.stop() if hasattr(server, "stop") else server.kill()
    mem = info.memory
    return {
        "vector_storage": info.vector_storage,
        "rss_empty": empty,
        "rss_full": full,
        "bytes_per_memory": (full - empty) / n,
        "server_account_by_kind_per_memory": {
            k: getattr(mem, k) / n for k in ["vectors", "codes", "graph", "episodes", "fresh"]
        },
        "vectors_on_disk_per_memory": mem.vectors_on_disk / n,
        "stream_s": stream_s,
        "indexed_after_s": indexed_s,
        "recall_at_10_default_settings": default["recall_at_10"],
        "recall_latency_us_p50_client_grpc": default["latency_us_p50"],
        "recall_latency_us_p99_client_grpc": default["latency_us_p99"],
        "ef_search_sweep": sweep,
        "first_at_recall_0_95": at_095,
    }


def run_index_in_process(data: Path, storage: str) -> dict:
    """`engram-bench index` at the default ef, in the given storage."""
    bench = os.environ.get("ENGRAM_BENCH_BIN", str(ROOT / "target" / "ci" / "engram-bench"))
    with tempfile.TemporaryDirectory(prefix="engram-vectors-") as tmp:
        cmd = [bench, "index", "--data", str(data), "--threads", "2", "--ef", "40"]
        if storage == "compact":
            cmd += ["--vectors-on-disk", tmp]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    return {
        "vector_storage": r["vector_storage"],
        "build_s": r["build_s"],
        "default_ef_search": r["default_ef_search"],
        "recall_at_10": r["default_search"]["recall_at_10"],
        "latency_us_p50": r["default_search"]["p50_us"],
        "latency_us_p99": r["default_search"]["p99_us"],
        "index_memory_bytes_per_vector": r["memory_bytes"] / r["n"],
    }


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()


def targets(size: dict) -> dict:
    hn = size["hnswlib"]["bytes_per_vector"]
    mem, com = size["engram"].get("memory"), size["engram"].get("compact")
    t = {}
    if mem:
        t["memory_within_1_3x_of_hnswlib"] = mem["bytes_per_memory"] <= 1.3 * hn
        t["memory_recall_at_10_at_least_0_95_default_ef"] = mem["recall_at_10_default_settings"] >= 0.95
        t["memory_recall_at_10_at_least_0_95_reachable"] = mem["first_at_recall_0_95"] is not None
    if com:
        t["compact_under_1300_bytes"] = com["bytes_per_memory"] < 1300
        t["compact_recall_at_10_at_least_0_95_default_ef"] = com["recall_at_10_default_settings"] >= 0.95
        t["compact_recall_at_10_at_least_0_95_reachable"] = com["first_at_recall_0_95"] is not None
    if mem and com:
        t["compact_p99_within_2x_of_memory_client"] = (
            com["recall_latency_us_p99_client_grpc"] <= 2 * mem["recall_latency_us_p99_client_grpc"]
        )
        if mem["first_at_recall_0_95"] and com["first_at_recall_0_95"]:
            t["compact_p99_within_2x_of_memory_client_at_recall_0_95"] = (
                com["first_at_recall_0_95"]["latency_us_p99"] <= 2 * mem["first_at_recall_0_95"]["latency_us_p99"]
            )
    ip = size.get("in_process")
    if ip and "memory" in ip and "compact" in ip:
        t["compact_p99_within_2x_of_memory_in_process"] = (
            ip["compact"]["latency_us_p99"] <= 2 * ip["memory"]["latency_us_p99"]
        )
    return t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, type=Path, action="append", help="a data set directory (repeatable)")
    ap.add_argument("--storage", default="memory,compact", help="engram vector storages to measure")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workers", type=int, default=0, help="engram indexing workers (0: server default)")
    ap.add_argument("--in-process-max", type=int, default=100000, help="largest set also measured in process")
    ap.add_argument("--out", required=True, type=Path)
    a = ap.parse_args()
    storages = [x for x in a.storage.split(",") if x]
    sizes = []
    for data in a.data:
        n = len(read_vecs(data / "base.fvecs"))
        dim = int(read_vecs(data / "query.fvecs").shape[1])
        print(f"== {data}: {n} x {dim}: hnswlib", file=sys.stderr, flush=True)
        size = {"data": str(data), "n": n, "dim": dim, "hnswlib": run_hnswlib(data, n, a.threads), "engram": {}}
        for storage in storages:
            print(f"== {data}: engram, {storage}", file=sys.stderr, flush=True)
            e = asyncio.run(run_engram(data, n, a.workers, storage))
            e["ratio_over_hnswlib_bytes"] = e["bytes_per_memory"] / size["hnswlib"]["bytes_per_vector"]
            size["engram"][storage] = e
        if n <= a.in_process_max:
            size["in_process"] = {}
            for storage in storages:
                print(f"== {data}: engram index in process, {storage}", file=sys.stderr, flush=True)
                size["in_process"][storage] = run_index_in_process(data, storage)
        size["targets"] = targets(size)
        sizes.append(size)
    result = {
        "benchmark": "memory per memory: engram server RSS vs hnswlib index, per vector storage (scripts/bench_memory.sh)",
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "git": {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))},
        "machine": {"cores": os.cpu_count(), "platform": platform.platform()},
        "parameters": {"hnswlib": "M=16 ef_construction=100", "engram": "default index settings, wal.sync none"},
        "sizes": sizes,
        # The targets: memory bytes and compact bytes at every size,
        # recall@10 >= 0.95 (at the default ef where it gets there, else at
        # the per-recall ef_search recorded), compact p99 within 2x.
        "all_targets_met": all(
            v for s in sizes for k, v in s["targets"].items() if not k.endswith("_default_ef")
        ),
        "notes": "engram's client latency is a gRPC round trip from a Python client on loopback; hnswlib's and "
        "engram's in-process figures are single-threaded calls into the index.",
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
