"""Benchmark of the event store: write and read ~10^6 particle rows on every backend.

Writes synthetic batches of the reference channel (Lambda_b0 -> (Lambda_c+ -> p+ K- pi+) mu- anti-nu_mu,
see :mod:`mambah.store.testing`) until ``--particles`` rows of ``particles`` are stored, together with
the matching ``events``, ``mc_particles`` and ``mc_vertices`` rows, then reads every table back into
pandas. Rates count the rows of all tables. The memory of a write is the peak resident-set growth
while writing the largest batch, divided by the in-memory size of that batch's tables.

Prints a table, then one JSON line with ``<backend>_write_rows_per_s``, ``<backend>_read_rows_per_s``
and ``peak_rss_mb``.

Usage::

    nice -n 10 python benchmarks/store.py [--particles 1000000] [--batch-events 25000] [--backends duckdb,sqlite,postgresql]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import tempfile
import threading
import time
import uuid

from mambah.store import Store
from mambah.store.schema import DATA_TABLES
from mambah.store.testing import synthetic_batch

PG_BASE = os.environ.get("MAMBAH_BENCH_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class _PeakRSS:
    """Samples the resident set size every millisecond in a thread."""

    def __enter__(self):
        self.base = _rss_mb()
        self.peak = self.base
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_mb())
            time.sleep(0.001)

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, _rss_mb())


def bench(url: str, n_particles: int, batch_events: int) -> dict:
    rows_written = 0
    particles = 0
    t_write = 0.0
    cpu_write = 0.0
    mem_ratio = 0.0
    with Store(url) as store:
        bid = 0
        while particles < n_particles:
            b = synthetic_batch(bid, batch_events, seed=1)
            nbytes = sum(df.memory_usage(index=False, deep=True).sum() for df in b.tables.values())
            with _PeakRSS() as m:
                t0, c0 = time.perf_counter(), time.process_time()
                store.write_batch(b)
                t_write += time.perf_counter() - t0
                cpu_write += time.process_time() - c0
            mem_ratio = max(mem_ratio, (m.peak - m.base) * 2**20 / nbytes)
            rows_written += sum(len(df) for df in b.tables.values())
            particles += len(b.tables["particles"])
            bid += 1
            del b
        t0, c0 = time.perf_counter(), time.process_time()
        rows_read = 0
        read_particles = 0.0
        for t in DATA_TABLES:
            t1 = time.perf_counter()
            df = store.read(t)
            if t == "particles":
                read_particles = time.perf_counter() - t1
            rows_read += len(df)
            del df
        t_read = time.perf_counter() - t0
        cpu_read = time.process_time() - c0
    return {
        "batches": bid,
        "rows": rows_written,
        "particles": particles,
        "write_s": t_write,
        "write_cpu_s": cpu_write,
        "read_cpu_s": cpu_read,
        "read_s": t_read,
        "write_rows_per_s": rows_written / t_write,
        "read_rows_per_s": rows_read / t_read,
        "read_particles_per_s": particles / read_particles if read_particles else float("nan"),
        "write_mem_ratio": mem_ratio,
        "rows_read": rows_read,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--particles", type=int, default=1_000_000)
    ap.add_argument("--batch-events", type=int, default=25_000)
    ap.add_argument("--backends", default="duckdb,sqlite,postgresql")
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="mambah-bench-")
    results = {}
    pg_schema = None
    try:
        for backend in args.backends.split(","):
            if backend == "duckdb":
                url = f"duckdb:///{tmp}/bench.duckdb"
            elif backend == "sqlite":
                url = f"sqlite:///{tmp}/bench.sqlite"
            elif backend == "postgresql":
                import psycopg

                pg_schema = f"mambah_bench_{uuid.uuid4().hex[:8]}"
                with psycopg.connect("host=127.0.0.1 port=5432 user=postgres dbname=test", autocommit=True) as c:
                    c.execute(f'CREATE SCHEMA "{pg_schema}"')
                url = f"{PG_BASE}?options=-csearch_path%3D{pg_schema}"
            else:
                raise SystemExit(f"unknown backend {backend!r}")
            results[backend] = bench(url, args.particles, args.batch_events)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if pg_schema:
            import psycopg

            with psycopg.connect("host=127.0.0.1 port=5432 user=postgres dbname=test", autocommit=True) as c:
                c.execute(f'DROP SCHEMA IF EXISTS "{pg_schema}" CASCADE')
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    hdr = (f"{'backend':<11}{'batches':>8}{'rows':>10}{'particles':>10}{'write s':>9}{'(cpu s)':>8}{'write rows/s':>14}"
           f"{'read s':>8}{'(cpu s)':>8}{'read rows/s':>13}{'read part./s':>14}{'write mem/batch':>16}")
    print(hdr)
    print("-" * len(hdr))
    for k, r in results.items():
        print(f"{k:<11}{r['batches']:>8}{r['rows']:>10}{r['particles']:>10}{r['write_s']:>9.2f}{r['write_cpu_s']:>8.2f}"
              f"{r['write_rows_per_s']:>14,.0f}{r['read_s']:>8.2f}{r['read_cpu_s']:>8.2f}{r['read_rows_per_s']:>13,.0f}"
              f"{r['read_particles_per_s']:>14,.0f}{r['write_mem_ratio']:>16.2f}")
    print(f"peak RSS {peak:.0f} MB; rates (wall clock) count the rows of all tables (events, mc_vertices, "
          f"mc_particles, particles); cpu s = this process only (not the PostgreSQL server); "
          f"load average at the end {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    out = {}
    for k in ("duckdb", "sqlite", "postgresql"):
        r = results.get(k)
        out[f"{k}_write_rows_per_s"] = round(r["write_rows_per_s"]) if r else None
        out[f"{k}_read_rows_per_s"] = round(r["read_rows_per_s"]) if r else None
    out["peak_rss_mb"] = round(peak, 1)
    # in-process engines: rows per CPU second of this process, a measure that a loaded machine does not distort
    for k in ("duckdb", "sqlite"):
        r = results.get(k)
        if r:
            out[f"{k}_write_rows_per_cpu_s"] = round(r["rows"] / r["write_cpu_s"])
            out[f"{k}_read_rows_per_cpu_s"] = round(r["rows_read"] / r["read_cpu_s"])
    out["load_average"] = round(os.getloadavg()[0], 1)
    out["write_memory_over_batch_size"] = {k: round(r["write_mem_ratio"], 2) for k, r in results.items()}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
