#!/usr/bin/env python3
"""The streaming benchmarks: each starts `engram serve` on a fresh data
directory with the settings it measures, drives it with `engram bench` over
gRPC, and writes one result file under bench-results/ (machine, commit,
parameters, the `engram bench` reports, the figure and its target).

Run through scripts/bench_streaming.sh, which builds, prepares the Python
environment and the 100K x 768 clustered set. Benchmarks (--only picks):

ingest   sustained indexed ingest: the 100K x 768 set streamed open loop by
         4 clients (queue large enough to admit it all), indexed throughput
         = N / (first send to everything indexed), with `perf record` on
         the server for the first 10 s; hnswlib's 2-thread build of the
         same file (`hnsw_baseline.py run`) and engram's index alone in
         process (`engram-bench index`) in the same run.
         Target: >= 1.2x hnswlib's build rate.
burst    accepted observations/s: 300,000 generated 768-d vectors streamed
         open loop by 4 clients with wal.sync=always (indexing running, as
         it would), with `perf record` on the server meanwhile; the hottest
         functions go into the result. Target: >= 100,000/s.
recall   recall latency while streaming: the 100K set streamed at half the
         sustained indexed rate with 50 recalls/s (k=10) meanwhile; recall
         p50/p99 during the stream, recall@10 afterwards. Target: p99 <= 5 ms
         at recall@10 >= 0.95.
sync     ack latency p50/p99/p99.9 per wal.sync mode (always, interval,
         none) at half the sustained indexed rate.
sweep    indexed throughput and indexing lag by indexing workers (1, 2) and
         batch size (16, 64, 256: engine.min_batch = engine.max_batch, so
         every batch has that size; adaptive batching below 0.5 queue
         pressure would otherwise take min_batch = 1 throughout), 50,000
         generated vectors open loop.

The sustained rate that `recall` and `sync` take half of is read from the
ingest result of this run, or from --sustained-rate.
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "clients" / "python" / "tests"))

ENGRAM = os.environ.get("ENGRAM_BIN", str(ROOT / "target" / "ci" / "engram"))
DATE = time.strftime("%Y-%m-%d", time.gmtime())


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()


def header(name: str, what: str, command: str) -> dict:
    return {
        "benchmark": name,
        "what": what,
        "command": command,
        "date": DATE,
        "git": {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))},
        "machine": {"cores": os.cpu_count(), "platform": platform.platform()},
    }


def write(name: str, result: dict) -> None:
    out = ROOT / "bench-results" / f"{name}-{DATE}.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out.relative_to(ROOT)}", file=sys.stderr, flush=True)


class Server:
    """`engram serve` on free ports with a fresh data directory."""

    def __init__(self, args: list, toml: str = "") -> None:
        from conftest import EngramServer

        self.tmp = tempfile.TemporaryDirectory(prefix="engram-bench-")
        extra = list(args)
        if toml:
            cfg = Path(self.tmp.name) / "engram.toml"
            cfg.write_text(toml)
            extra += ["--config", str(cfg)]
        self.server = EngramServer(Path(self.tmp.name) / "data", extra).start()

    def __enter__(self) -> "Server":
        return self

    def __exit__(self, *exc) -> None:
        s = self.server
        s.stop() if hasattr(s, "stop") else s.kill()
        self.tmp.cleanup()

    @property
    def pid(self) -> int:
        return self.server.proc.pid

    def bench(self, *args: str) -> dict:
        """One `engram bench` run against this server; its JSON report."""
        with tempfile.NamedTemporaryFile(suffix=".json") as f:
            cmd = [
                ENGRAM, "bench",
                "--grpc", f"http://{self.server.grpc_addr}",
                "--http", f"http://{self.server.http_addr}",
                "--json", f.name,
                *args,
            ]
            print("   $ " + " ".join(cmd[1:]), file=sys.stderr, flush=True)
            subprocess.run(cmd, check=True, stdout=sys.stderr)
            return json.loads(Path(f.name).read_text())


def brief(r: dict) -> dict:
    """The figures of an `engram bench` report that the results compare."""
    return {
        "accepted": r["accepted"],
        "rejected": r["rejected"],
        "accepted_per_second": r["accepted_per_second"],
        "indexed_per_second": r["indexed_per_second"],
        "indexing_lag_seconds": r["indexing_lag_seconds"],
        "ack_latency_ms": r["ack_latency_ms"],
        "recall_during_stream_ms": r["recall_during_stream_ms"],
        "recall_queries_ms": r["recall_queries_ms"],
        "recall_at_10": r["recall_at_10"],
        "server": r["server"],
    }


def ingest(a) -> float:
    n = 100_000
    with tempfile.TemporaryDirectory(prefix="engram-perf-") as tmp, Server(["--queue-capacity", str(2 * n)]) as s:
        prof: dict = {}
        t = threading.Thread(target=lambda: prof.update(perf_top(s.pid, 10.0, Path(tmp))))
        t.start()
        r = s.bench("--data", str(a.data), "--clients", "4", "--rate", "0", "--recall-rate", "0", "--queries", "200")
        t.join()
    hn = subprocess.run(
        [sys.executable, a.baseline, "run", "--data", str(a.data), "--threads", "2", "--ef", "32"],
        check=True, capture_output=True, text=True,
    )
    h = json.loads(hn.stdout.strip().splitlines()[-1])
    hn_rate = h.get("build_vectors_per_s") or h["n"] / h["build_s"]
    # The index alone, in process, on the same file: separates the index's
    # own speed from what intake (transport, WAL, acks) takes of the cores.
    bench = os.environ.get("ENGRAM_BENCH_BIN", str(ROOT / "target" / "ci" / "engram-bench"))
    ip = subprocess.run([bench, "index", "--data", str(a.data), "--threads", "2", "--ef", "40"],
                        check=True, capture_output=True, text=True)
    ip = json.loads(ip.stdout.strip().splitlines()[-1])
    rate = r["indexed_per_second"]
    write("ingest", {
        **header("ingest", "sustained indexed ingest over gRPC (4 clients, open loop, 100K x 768) vs hnswlib's 2-thread build of the same file; "
                 "engram's index alone in process on the same file; perf profile of the server during the first 10 s of the stream",
                 "scripts/bench_streaming.sh --only ingest"),
        "engram": brief(r),
        "engram_params": r["params"],
        "hnswlib": h,
        "engram_indexed_per_second": rate,
        "hnswlib_build_vectors_per_second": hn_rate,
        "ratio": rate / hn_rate,
        "engram_in_process_build_vectors_per_second": ip["build_vectors_per_s"],
        "ratio_in_process": ip["build_vectors_per_s"] / hn_rate,
        "target": "ratio >= 1.2",
        "target_met": rate / hn_rate >= 1.2,
        "indexing_share_percent": sum(
            x["percent"] for x in prof.get("by_thread", []) if x["thread"].startswith("engram-index")
        ),
        "server_profile": prof,
    })
    return rate


def perf_top(pid: int, secs: float, out_dir: Path) -> dict:
    """`perf record -g` on `pid` for `secs`; the functions with the most
    self time, from `perf report`."""
    data = out_dir / "perf.data"
    rec = subprocess.run(
        ["perf", "record", "-F", "499", "-g", "-p", str(pid), "-o", str(data), "--", "sleep", str(secs)],
        capture_output=True, text=True,
    )
    if rec.returncode != 0:
        return {"error": rec.stderr.strip()[-500:]}

    def report(sort: str, limit: str) -> list:
        """`perf report` rows: (percent, name), largest first."""
        out = subprocess.run(
            ["perf", "report", "-i", str(data), "--no-children", "--stdio", "--sort", sort,
             "--percent-limit", limit, "-g", "none"],
            capture_output=True, text=True,
        ).stdout
        rows = []
        for line in out.splitlines():
            line = line.strip()
            if line and line[0].isdigit() and "%" in line:
                pct, _, rest = line.partition("%")
                rows.append((float(pct), rest.strip()))
        return rows

    rows = [{"self_percent": p, "symbol": name} for p, name in report("sym", "1.5")]
    by_thread = [{"percent": p, "thread": name} for p, name in report("comm", "0")]
    return {"seconds": secs, "top_self": rows[:25], "by_thread": by_thread[:15]}


def burst(a) -> None:
    n = 300_000
    with tempfile.TemporaryDirectory(prefix="engram-perf-") as tmp, Server(
        ["--wal-sync", "always", "--queue-capacity", str(2 * n)]
    ) as s:
        prof: dict = {}
        t = threading.Thread(target=lambda: prof.update(perf_top(s.pid, 8.0, Path(tmp))))
        t.start()
        r = s.bench("--generate", str(n), "--dim", "768", "--clients", "4", "--rate", "0",
                    "--recall-rate", "0", "--queries", "0", "--wait-indexed", "false")
        t.join()
    rate = r["accepted_per_second"]
    write("burst", {
        **header("burst", "accepted observations/s, 4 gRPC clients open loop, 768-d, wal.sync=always, indexing running; perf profile of the server during the stream",
                 "scripts/bench_streaming.sh --only burst"),
        "engram": brief(r),
        "engram_params": r["params"],
        "accepted_per_second": rate,
        "target": "accepted_per_second >= 100000",
        "target_met": rate >= 100_000,
        "server_profile": prof,
    })


def recall(a, sustained: float) -> None:
    with Server(["--queue-capacity", "200000"]) as s:
        r = s.bench("--data", str(a.data), "--clients", "4", "--rate", f"{sustained / 2:.0f}",
                    "--recall-rate", "50", "--queries", "1000")
    p99 = r["recall_during_stream_ms"]["p99"]
    ok = p99 is not None and p99 <= 5.0 and (r["recall_at_10"] or 0) >= 0.95
    write("recall-under-streaming", {
        **header("recall-under-streaming", "recall (k=10, 50/s, gRPC) while the 100K x 768 set streams in at half the sustained indexed rate; recall@10 over 1,000 queries afterwards",
                 "scripts/bench_streaming.sh --only recall"),
        "sustained_indexed_per_second": sustained,
        "stream_rate": sustained / 2,
        "engram": brief(r),
        "engram_params": r["params"],
        "recall_p50_ms_during_stream": r["recall_during_stream_ms"]["p50"],
        "recall_p99_ms_during_stream": p99,
        "recall_at_10": r["recall_at_10"],
        "target": "recall p99 <= 5 ms at recall@10 >= 0.95",
        "target_met": ok,
    })


def sync(a, sustained: float) -> None:
    modes = {}
    for mode in ["always", "interval", "none"]:
        with Server(["--wal-sync", mode, "--queue-capacity", "200000"]) as s:
            r = s.bench("--generate", "40000", "--dim", "768", "--clients", "4", "--rate", f"{sustained / 2:.0f}",
                        "--recall-rate", "0", "--queries", "0", "--wait-indexed", "false")
        modes[mode] = {"ack_latency_ms": r["ack_latency_ms"], "accepted_per_second": r["accepted_per_second"],
                       "rejected": r["rejected"], "engram_params": r["params"]}
    write("ack-latency-by-sync", {
        **header("ack-latency-by-sync", "ack latency per wal.sync mode at half the sustained indexed rate (40,000 generated 768-d, 4 gRPC clients)",
                 "scripts/bench_streaming.sh --only sync"),
        "sustained_indexed_per_second": sustained,
        "rate": sustained / 2,
        "modes": modes,
    })


def sweep(a) -> None:
    rows = []
    for workers in [1, 2]:
        for max_batch in [16, 64, 256]:
            toml = f"[engine]\nworkers = {workers}\nmin_batch = {max_batch}\nmax_batch = {max_batch}\n"
            with Server(["--queue-capacity", "100000"], toml) as s:
                r = s.bench("--generate", "50000", "--dim", "768", "--clients", "4", "--rate", "0",
                            "--recall-rate", "10", "--queries", "200")
            rows.append({"workers": workers, "max_batch": max_batch, **brief(r)})
    write("sweep", {
        **header("sweep", "indexed throughput, indexing lag, ack and recall latency by engine.workers and batch size (engine.min_batch = engine.max_batch; 50,000 generated 768-d, 4 gRPC clients open loop, 10 recalls/s)",
                 "scripts/bench_streaming.sh --only sweep"),
        "rows": rows,
    })


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, type=Path, help="the 100K x 768 set (base, query, groundtruth)")
    ap.add_argument("--baseline", required=True, help="hnsw_baseline.py")
    ap.add_argument("--only", default="ingest,burst,recall,sync,sweep")
    ap.add_argument("--sustained-rate", type=float, default=0.0, help="when ingest is not run")
    a = ap.parse_args()
    only = a.only.split(",")
    sustained = a.sustained_rate
    if "ingest" in only:
        print("== ingest", file=sys.stderr, flush=True)
        sustained = ingest(a)
    if "burst" in only:
        print("== burst", file=sys.stderr, flush=True)
        burst(a)
    if ("recall" in only or "sync" in only) and not sustained:
        sys.exit("recall and sync need the sustained rate: run ingest too, or pass --sustained-rate")
    if "recall" in only:
        print("== recall", file=sys.stderr, flush=True)
        recall(a, sustained)
    if "sync" in only:
        print("== sync", file=sys.stderr, flush=True)
        sync(a, sustained)
    if "sweep" in only:
        print("== sweep", file=sys.stderr, flush=True)
        sweep(a)


if __name__ == "__main__":
    main()
