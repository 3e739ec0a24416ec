"""Productions: a pipeline mapped over batch seeds, into a store, in-process or on Dask.

A production is identified by its name inside a store. Its record (in the store's
``mambah_meta`` table, key ``production/<name>``) holds everything that defines its content:
production seed, number of events, batch size, the pipeline configuration and the model
versions, and the global id ``first_batch`` of its batch 0. Batch ``i`` of the production has the
id ``first_batch + i`` and the seed ``batch_seed(seed, i)`` (the one definition is
:func:`mambah.pipeline.production_batch`), so it can be computed in any order, on any worker, and
a stored batch is regenerated bit for bit from its id alone (:func:`regenerate_batch`).

Resuming (``resume=True``) reads the record, refuses when the configuration differs (and shows
the difference), and runs only the batches that are not in the store yet. Because every batch
is written in one transaction and writing is idempotent (``if_exists="skip"``), a killed run,
a Ctrl-C or a dead Dask worker never leaves a partial or duplicated batch.

On Dask, the workers write into PostgreSQL themselves. A DuckDB or SQLite file has one writer,
the client: the workers write each batch as Parquet files into a spool directory beside the
store (``<db>.spool/<production>/``, see :mod:`mambah.store.spool`) and return a summary, and
the client commits each batch from its files in one transaction and deletes them. A spooled
batch left by a killed run is committed by the next run (``resume=True``) instead of being
computed again. Workers that do not see the client's spool directory (another machine without a
shared file system) send their batches back to the client instead.

A full disk (the store's or the spool's) fails the batch whole, with a
:class:`~mambah.errors.StoreError` that says so ("disk full while writing batch 17 to /path/db
... free space and rerun with --resume").
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import tempfile
import threading
import time
import uuid
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from mambah import extras
from mambah.batch import Batch
from mambah.errors import (ConfigurationError, OutOfRangeWarning, OutOfSupportWarning, StoreError,
                           UncalibratedWarning)
from mambah.pipeline import Pipeline, batch_sizes, production_batch

__all__ = ["ProductionResult", "run_production", "regenerate_batch", "production_record", "production_records",
           "out_of_range_counts", "uncalibrated_counts", "unsupported_counts", "config_diff", "local_cluster",
           "WORKER_ENV"]

log = logging.getLogger(__name__)

_META_PREFIX = "production/"


@dataclasses.dataclass
class ProductionResult:
    """What a production run did."""

    production: str
    n_batches: int  #: batches of the whole production
    written: int  #: batches written by this run
    skipped: int  #: batches already in the store (resume)
    n_events: int  #: events written by this run
    seconds: float
    stage_seconds: dict[str, float]
    interrupted: bool = False
    failed: list[int] = dataclasses.field(default_factory=list)

    @property
    def events_per_s(self) -> float:
        return self.n_events / self.seconds if self.seconds > 0 else float("nan")

    def stage_share(self) -> dict[str, float]:
        total = sum(self.stage_seconds.values())
        return {k: v / total for k, v in self.stage_seconds.items()} if total > 0 else {}


def _normalise(obj: Any) -> Any:
    """JSON round trip, so that a record read back compares equal to a freshly built one."""
    return json.loads(json.dumps(obj, sort_keys=True, default=str))


def production_record(pipeline: Pipeline, *, n_events: int, batch_size: int, seed: int) -> dict[str, Any]:
    return _normalise(
        {
            "seed": int(seed),
            "n_events": int(n_events),
            "batch_size": int(batch_size),
            "config": pipeline.config(),
            "models": pipeline.model_versions(),
        }
    )


def config_diff(old: Any, new: Any, path: str = "") -> list[str]:
    """Human-readable differences between two JSON-like records (``path: old -> new``)."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in sorted(set(old) | set(new)):
            p = f"{path}.{k}" if path else str(k)
            if k not in old:
                out.append(f"{p}: (absent) -> {new[k]!r}")
            elif k not in new:
                out.append(f"{p}: {old[k]!r} -> (absent)")
            else:
                out.extend(config_diff(old[k], new[k], p))
        return out
    return [] if old == new else [f"{path}: {old!r} -> {new!r}"]


def _register_models(store, pipeline, versions: dict) -> None:
    """Record each model of the pipeline in the store's ``models`` table, the store's conditions
    database of model versions (kind, species, conditions, targets, metrics, path, hash); a model
    already there with the same name, version and hash is left as it is. ``versions``: the
    production record's ``{name: {version, hash}}`` (hashes computed once, the same as the batches')."""
    dirs = pipeline.model_dirs() if hasattr(pipeline, "model_dirs") else {}
    if not dirs:
        return
    from mambah.modeldir import load_card, model_hash

    known = store.read("models", columns=["name", "version", "hash"], ordered=False)
    have = {(str(n), str(v)): str(h) for n, v, h in zip(known["name"], known["version"], known["hash"])}
    for name, path in dirs.items():
        card = load_card(path)
        key = (str(card.get("name", name)), str(card.get("version", "1")))
        digest = str(versions.get(name, {}).get("hash") or model_hash(path))
        if have.get(key) == digest:
            continue
        if key in have:
            log.warning("model %s version %s in the store has hash %s, this production's has %s (%s): the "
                        "models table now describes the new one; each batch's provenance keeps its own hash",
                        key[0], key[1], have[key], digest, path)
        store.register_model({**card, "hash": digest}, path)


def _prepare(store, name: str, record: dict, resume: bool) -> int:
    """Register the production (or check it on resume); return its first global batch id."""
    key = _META_PREFIX + name
    raw = store.get_meta(key)
    if raw is None:
        ids = store.batch_ids()
        first = (max(ids) + 1) if len(ids) else 0
        store.set_meta(key, json.dumps({**record, "first_batch": first}, sort_keys=True))
        return first
    old = json.loads(raw)
    first = int(old.pop("first_batch"))
    if not resume:
        raise ConfigurationError(
            f"the store already holds a production named {name!r}; pass resume=True (CLI: --resume) to "
            "continue it, choose another production name (--production NAME), or delete its batches first"
        )
    diff = config_diff(old, record)
    if diff:
        raise ConfigurationError(
            f"cannot resume production {name!r}: its configuration in the store differs from this run's:\n  "
            + "\n  ".join(diff)
        )
    return first


class _StopFlag:
    """First Ctrl-C: finish the batch in flight, then stop. Second Ctrl-C: stop at once."""

    def __init__(self):
        self.stop = False
        self._old = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGINT, self._handler)
        return self

    def _handler(self, signum, frame):
        if self.stop:
            raise KeyboardInterrupt
        self.stop = True
        log.warning("interrupt: stopping after the batch in flight (Ctrl-C again to abort it; it will not be written)")

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)
        return False


def production_records(store) -> dict[str, dict[str, Any]]:
    """``{production name: record}`` of every production in ``store`` (see :func:`production_record`;
    each record also holds ``first_batch``, the global id of the production's batch 0)."""
    meta = store.read("mambah_meta", ordered=False)
    out = {}
    for key, value in zip(meta["key"], meta["value"]):
        if str(key).startswith(_META_PREFIX):
            try:
                out[str(key)[len(_META_PREFIX):]] = json.loads(value)
            except (TypeError, ValueError) as e:
                raise StoreError(f"the record of production {str(key)[len(_META_PREFIX):]!r} in {store.url} "
                                 f"is not valid JSON ({e}); the store is damaged") from None
    return out


def _production_of(store, batch_id: int) -> tuple[str, dict[str, Any]]:
    """(name, record) of the production that batch ``batch_id`` belongs to."""
    records = production_records(store)
    if store.has_batch(batch_id):
        name = str(store.read("batches", columns=["production"], where={"batch": int(batch_id)})["production"].iloc[0])
        if name not in records:
            raise StoreError(f"batch {batch_id} of {store.url} belongs to production {name!r}, whose record is not in "
                             "the store (a batch written outside run_production cannot be regenerated from its id)")
        return name, records[name]
    for name, rec in records.items():
        first = int(rec["first_batch"])
        if first <= batch_id < first + len(batch_sizes(rec["n_events"], rec["batch_size"])):
            return name, rec
    ranges = ", ".join(f"{n!r}: {int(r['first_batch'])}..{int(r['first_batch']) + len(batch_sizes(r['n_events'], r['batch_size'])) - 1}"
                       for n, r in sorted(records.items(), key=lambda kv: int(kv[1]["first_batch"])))
    raise StoreError(f"batch {batch_id} belongs to no production of {store.url}; batch ids of its productions: "
                     f"{ranges or '(none)'}")


def regenerate_batch(pipeline: Pipeline, store, batch_id: int) -> Batch:
    """Rebuild batch ``batch_id`` of a production in ``store`` and run ``pipeline`` on it.

    Only the production's record in the store is read (name, seed, first batch id, number of
    events and batch size), never the batch's rows: the result equals, table by table, what the
    production wrote (:func:`mambah.store.store.prepare_tables` of it gives the stored rows). The
    batch need not be in the store any more (e.g. deleted), as long as its production's record is.

    Args:
        pipeline: the production's pipeline (same configuration and model versions).
        store: the :class:`~mambah.store.Store` holding the production's record.
        batch_id: the global id of the batch.

    Returns:
        The processed batch (not written).

    Warns:
        OutOfRangeWarning: one per model that evaluated inputs of this batch outside its training
            range (the counts of the batch's provenance, :func:`out_of_range_counts`), every call:
            the stages themselves warn only the first time in a process.
        UncalibratedWarning: one per calibrated PID model that left rows of this batch without a
            quantile map (:func:`uncalibrated_counts`), every call.
        OutOfSupportWarning: one per PID model with rows of this batch outside its data support
            (:func:`unsupported_counts`), every call.

    Raises:
        StoreError: no production of the store covers ``batch_id``.
        ConfigurationError: ``pipeline``'s configuration or model versions differ from the
            production's (the differences are listed): it would not reproduce the batch.
    """
    batch_id = int(batch_id)
    name, rec = _production_of(store, batch_id)
    first = int(rec["first_batch"])
    sizes = batch_sizes(rec["n_events"], rec["batch_size"])
    index = batch_id - first
    mine = production_record(pipeline, n_events=rec["n_events"], batch_size=rec["batch_size"], seed=rec["seed"])
    diff = config_diff({k: v for k, v in rec.items() if k != "first_batch"}, mine)
    if diff:
        raise ConfigurationError(f"cannot regenerate batch {batch_id} of production {name!r}: the pipeline differs "
                                 "from the production's (store -> this pipeline):\n  " + "\n  ".join(diff))
    batch = pipeline.process(production_batch(index, rec["seed"], sizes[index], first_batch=first, production=name))
    for stage, models in out_of_range_counts(batch.info).items():
        for model, (bad, n) in models.items():
            if bad:
                warnings.warn(OutOfRangeWarning(
                    f"regenerated batch {batch_id} of production {name!r}: {bad} of {n} inputs of model {model!r} "
                    f"({stage} stage) lie outside its training range; they are evaluated at the range edges, as "
                    "in the production", model=model, count=bad, n=n, action="evaluated at the range edges"),
                    stacklevel=2)
    # the PID stage's other counts, each with its warning class, what the rows are and what was done
    for counts, category, where, action in (
            (uncalibrated_counts, UncalibratedWarning, "where its quantile calibration has no map",
             "kept the network's uncalibrated output"),
            (unsupported_counts, OutOfSupportWarning, "in (P, ETA) cells outside the support of the data it was "
                                                      "fitted on", "generated by extrapolation")):
        for model, (bad, n) in counts(batch.info).items():
            if bad:
                warnings.warn(category(
                    f"regenerated batch {batch_id} of production {name!r}: {bad} of {n} rows of PID model {model!r} "
                    f"lie {where} ({action}, as in the production)", model=model, count=bad, n=n,
                    action=action), stacklevel=2)
    return batch


def unsupported_counts(info: Mapping[str, Any]) -> dict[str, tuple[int, int]]:
    """``{model: (rows in (P, ETA) cells outside its data support, rows evaluated)}`` of one batch's
    PID models with a support table, from its provenance (``reconstruction.pid.unsupported``,
    :mod:`mambah.pid.stage`); entries that do not have this shape are skipped."""
    return _stage_counts(info, "unsupported").get("pid", {})


def uncalibrated_counts(info: Mapping[str, Any]) -> dict[str, tuple[int, int]]:
    """``{model: (rows left without a quantile map, rows evaluated)}`` of one batch's calibrated PID
    models, from its provenance (``reconstruction.pid.uncalibrated``, :mod:`mambah.pid.stage`);
    entries that do not have this shape are skipped."""
    return _stage_counts(info, "uncalibrated").get("pid", {})


def out_of_range_counts(info: Mapping[str, Any]) -> dict[str, dict[str, tuple[int, int]]]:
    """``{stage: {model: (inputs outside the training range, inputs)}}`` of one batch, from its
    provenance (``batch.info``, or the decoded ``config`` column of its ``batches`` row), where the
    stages record them as ``reconstruction.<stage>.out_of_range = {model: [outside, inputs]}``.
    Entries that do not have this shape are skipped."""
    return _stage_counts(info, "out_of_range")


def _stage_counts(info: Mapping[str, Any], key: str) -> dict[str, dict[str, tuple[int, int]]]:
    """``{stage: {model: (count, n)}}`` from the provenance's ``reconstruction.<stage>.<key> = {model:
    [count, n]}``; entries that do not have this shape are skipped."""
    out: dict[str, dict[str, tuple[int, int]]] = {}
    reco = info.get("reconstruction") if isinstance(info, Mapping) else None
    for stage, entry in (reco.items() if isinstance(reco, Mapping) else ()):
        counts = entry.get(key) if isinstance(entry, Mapping) else None
        for model, value in (counts.items() if isinstance(counts, Mapping) else ()):
            try:
                bad, n = (int(v) for v in value)
            except (TypeError, ValueError):
                continue
            out.setdefault(str(stage), {})[str(model)] = (bad, n)
    return out


def _batch_of(spec: tuple) -> Batch:
    """The batch of a task spec ``(first_batch, index, production_seed, n_events, production)``."""
    first, index, seed, n_events, production = spec
    return production_batch(index, seed, n_events, first_batch=first, production=production)


def _process_spool(pipeline: Pipeline, spec: tuple, spool_dir: str, marker: str, digest: str) -> Any:
    """Run one batch on a worker and write it into the client's spool directory; return the
    summary (:func:`mambah.store.spool.write_spool`). A worker that does not see the client's
    marker file (no shared file system) returns the batch itself, for the client to write."""
    batch = pipeline.process(_batch_of(spec))
    if not os.path.exists(os.path.join(spool_dir, marker)):
        return batch
    from mambah.store.spool import write_spool

    t0 = time.perf_counter()
    summary = write_spool(batch, spool_dir, digest=digest)
    summary["timings"]["spool"] = time.perf_counter() - t0
    return summary


def _process(pipeline: Pipeline, spec: tuple, store_url: str | None) -> Any:
    """Run one batch. With ``store_url`` (a multi-writer store) write it here and return a summary;
    without, return the batch for the caller to write."""
    batch = pipeline.process(_batch_of(spec))
    if store_url is None:
        return batch
    from mambah.store import Store

    with Store(store_url) as st:
        t0 = time.perf_counter()
        written = st.write_batch(batch, if_exists="skip")
        batch.info["timings"]["store"] = time.perf_counter() - t0
    return {"id": batch.id, "n_events": batch.n_events, "timings": batch.info["timings"], "written": written}


def run_production(
    pipeline: Pipeline,
    *,
    n_events: int,
    batch_size: int,
    seed: int,
    store,
    production: str = "default",
    resume: bool = False,
    workers: int | None = None,
    scheduler: str | None = None,
    progress: bool = False,
    max_in_flight: int | None = None,
) -> ProductionResult:
    """Run ``pipeline`` over ``ceil(n_events / batch_size)`` batches into ``store``.

    Args:
        pipeline: the stages.
        n_events: events of the whole production.
        batch_size: events per batch (sets the memory, not the production size).
        seed: production seed; batch ``i`` is seeded with ``batch_seed(seed, i)``.
        store: a :class:`mambah.store.Store`.
        production: the production's name in the store.
        resume: continue a production already in the store (configuration must match).
        workers: run on a Dask ``LocalCluster`` with this many single-threaded worker processes
            (:func:`local_cluster`).
        scheduler: address of an existing Dask scheduler (``tcp://host:port``). Into a DuckDB or
            SQLite store the workers spool their batches beside the store file, so they should
            share its file system (those that do not send their batches to the client instead).
        progress: show a progress bar (events/s).
        max_in_flight: batches submitted to Dask at a time (default twice the workers).

    Raises:
        StoreError: a batch could not be written (a full disk says so; the batches written
            before it stay, and ``resume=True`` continues).
        ConfigurationError: a non-positive ``n_events`` or ``batch_size``; both ``workers`` and
            ``scheduler``; a production of this name already in the store without ``resume``, or
            with another configuration (the differences are listed).
        OptionalDependencyError: ``workers`` or ``scheduler`` without Dask installed (the message
            gives ``pip install 'mambah[dask]'``).
    """
    if workers is not None and scheduler is not None:
        raise ConfigurationError("give either workers (a LocalCluster) or scheduler (an existing cluster), not both")
    if workers is not None or scheduler is not None:
        extras.dask_distributed()  # before the production is registered in the store
    sizes = batch_sizes(n_events, batch_size)
    record = production_record(pipeline, n_events=n_events, batch_size=batch_size, seed=seed)
    first = _prepare(store, production, record, resume)
    _register_models(store, pipeline, record.get("models", {}))
    done = set(store.batch_ids())
    todo = [i for i in range(len(sizes)) if first + i not in done]
    skipped = len(sizes) - len(todo)
    if skipped:
        log.info("production %r: %d of %d batches already in the store", production, skipped, len(sizes))
    spool = _Spool.of(store, production, _spool_digest(record, first, production))
    if hasattr(pipeline, "provenance"):
        pipeline.provenance()  # computed once here, pickled with the pipeline to the workers
    result = ProductionResult(production, len(sizes), 0, skipped, 0, 0.0, {})

    from mambah.progress import progress as _progress

    bar = _progress(total=sum(sizes), initial=sum(sizes) - sum(sizes[i] for i in todo), enabled=progress,
                    unit="ev", unit_scale=True, desc=f"simulate {production}", smoothing=0.1)
    t0 = time.perf_counter()
    complete = False
    try:
        with _StopFlag() as flag:
            # spooled batches of an earlier (killed) run of this production: commit, not recompute
            recovered = [] if spool is None else spool.recover(store, {first + i for i in todo})
            ids = {r[0] for r in recovered}
            specs = [(first, i, seed, sizes[i], production) for i in todo if first + i not in ids]
            if workers is None and scheduler is None:
                it = _run_local(pipeline, specs, store, flag)
            else:
                it = _run_dask(pipeline, specs, store, flag, workers, scheduler, max_in_flight, spool)
            for n_ev, timings in _chain(((n, t) for _, n, t in recovered), it):
                result.written += 1
                result.n_events += n_ev
                for k, v in timings.items():
                    result.stage_seconds[k] = result.stage_seconds.get(k, 0.0) + v
                bar.update(n_ev)
            result.interrupted = flag.stop and result.written + skipped < len(sizes)
            complete = not result.interrupted
    finally:
        bar.close()
        if spool is not None:
            spool.close(complete)
        result.seconds = time.perf_counter() - t0
    return result


def _chain(*its):
    for it in its:
        yield from it


def _spool_digest(record: dict, first: int, production: str) -> str:
    from mambah.store.spool import production_digest

    return production_digest(record, first, production)


class _Spool:
    """The spool directory of one production in a single-writer store (client side)."""

    def __init__(self, directory: Path | None, digest: str, temporary: bool = False):
        self.dir = directory
        self.digest = digest
        self.temporary = temporary  #: a temporary directory (in-memory store): removed at the end
        self.marker: str | None = None

    @classmethod
    def of(cls, store, production: str, digest: str) -> _Spool | None:
        from mambah.store.spool import production_dir, spool_root

        if store.backend.name == "postgresql":
            return None
        root = spool_root(store)
        if root is None:  # an in-memory store: a temporary spool (seen by local workers only), made by start()
            return cls(None, digest, temporary=True)
        return cls(production_dir(root, production), digest)

    def recover(self, store, wanted: set[int]) -> list[tuple[int, int, dict]]:
        """Commit the complete spooled batches of this production that the store lacks; delete
        every other entry (half-written directories, other productions', stale markers)."""
        from mambah.store.spool import SpoolError, read_spool, remove, scan

        if self.dir is None:
            return []
        batches, other = scan(self.dir)
        out = []
        for p in batches:
            try:
                sp = read_spool(p, digest=self.digest)
            except SpoolError as e:
                log.info("discarding %s", e)
                remove(p)
                continue
            if sp.batch in wanted:
                t0 = time.perf_counter()
                if store.write_spooled(p, if_exists="skip"):
                    timings = {**sp.timings, "store": time.perf_counter() - t0}
                    out.append((sp.batch, sp.n_events, timings))
                    wanted.discard(sp.batch)
                    log.info("batch %d: committed from the spool of an earlier run (%s)", sp.batch, p)
            remove(p)
        for p in other:
            remove(p)
        return out

    def start(self) -> str:
        """Create the directory and the client's marker; returns the marker's name."""
        if self.dir is None:
            self.dir = Path(tempfile.mkdtemp(prefix="mambah-spool-"))
        self.dir.mkdir(parents=True, exist_ok=True)
        self.marker = f".client-{uuid.uuid4().hex[:12]}"
        (self.dir / self.marker).touch()
        return self.marker

    def close(self, complete: bool) -> None:
        """Remove the marker; after a complete production, the whole directory (and an empty root)."""
        from mambah.store.spool import remove

        if self.marker is not None:
            remove(self.dir / self.marker)
            self.marker = None
        if self.dir is not None and (complete or self.temporary) and self.dir.exists():
            remove(self.dir)
            if not self.temporary:
                try:
                    self.dir.parent.rmdir()  # <db>.spool, if no other production left files there
                except OSError:
                    pass


def _run_local(pipeline, specs, store, flag) -> Iterator[tuple[int, dict]]:
    """The batches in this process, in order: batch ``i + 1`` is simulated in a helper thread while
    batch ``i`` is written here (numpy, TensorFlow and the database drivers release the GIL, so on
    two cores the store's time is mostly hidden). The store is used from this thread only, one
    batch at a time, in order; a batch is yielded once it is committed. After an interrupt (the
    stop flag) no batch is started and the one being simulated is still written; after an error,
    the batch being simulated is finished and dropped, and the written ones stay."""
    from concurrent.futures import ThreadPoolExecutor

    specs = iter(specs)
    with ThreadPoolExecutor(1, thread_name_prefix="mambah-batch") as ex:
        spec = next(specs, None)
        nxt = None if spec is None or flag.stop else ex.submit(_process, pipeline, spec, None)
        try:
            while nxt is not None:
                batch = nxt.result()
                spec = next(specs, None)
                nxt = None if spec is None or flag.stop else ex.submit(_process, pipeline, spec, None)
                t0 = time.perf_counter()
                store.write_batch(batch, if_exists="skip")
                batch.info["timings"]["store"] = time.perf_counter() - t0
                n_ev, timings = batch.n_events, batch.info["timings"]
                del batch  # only two batches in memory: the one written and the one simulated
                yield n_ev, timings
        finally:
            if nxt is not None:
                nxt.cancel()


def _connect(workers, scheduler):
    distributed = extras.dask_distributed()
    if scheduler is not None:
        try:
            return distributed.Client(scheduler, timeout="10s"), None
        except (OSError, TimeoutError) as e:
            raise ConfigurationError(f"no Dask scheduler answers at {scheduler!r} ({e})") from None
    cluster = local_cluster(workers)
    return distributed.Client(cluster), cluster


#: Environment of the worker processes of :func:`local_cluster`: one thread each for numpy and
#: TensorFlow (the workers are the parallelism).
WORKER_ENV = {"OMP_NUM_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1", "TF_NUM_INTRAOP_THREADS": "1",
              "TF_CPP_MIN_LOG_LEVEL": "2"}


def local_cluster(workers: int):
    """A Dask ``LocalCluster`` as ``run_production(workers=N)`` starts it (to reuse one for several
    productions, pass ``scheduler=cluster.scheduler_address``).

    ``workers`` single-threaded worker processes with :data:`WORKER_ENV`, and without Dask's
    ``MALLOC_TRIM_THRESHOLD_=65536``: with it, glibc hands every freed array back to the system at
    once and a batch page-faults its ~100 MB of arrays in again each time — measured 0.25 s of
    system CPU per 50k-event batch of the reference channel, +45% on the 0.56 CPU s of the batch
    in a plain process. A batch's arrays are reused by the next batch of the same size, so keeping
    them costs no memory growth.

    Raises:
        ConfigurationError: ``workers`` < 1.
        OptionalDependencyError: Dask is not installed (``pip install 'mambah[dask]'``).
    """
    dask = extras.dask()
    distributed = extras.dask_distributed()
    if workers < 1:
        raise ConfigurationError(f"workers must be >= 1, got {workers}")
    with dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}):
        return distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                            env=dict(WORKER_ENV))


def _run_dask(pipeline, specs, store, flag, workers, scheduler, max_in_flight, spool) -> Iterator[tuple[int, dict]]:
    from mambah.store.spool import remove

    client, cluster = _connect(workers, scheduler)
    as_completed = extras.dask_distributed().as_completed
    # Multi-writer backends: workers write themselves. Single-writer files (DuckDB, SQLite): the
    # workers spool their batches to Parquet files that the client commits. Either way the write
    # is idempotent (skip), so a task that Dask re-runs after a worker died cannot duplicate a batch.
    direct = spool is None
    url = store.engine.url.render_as_string(hide_password=False) if direct else None
    if not direct:
        marker = spool.start()
        spool_dir = str(spool.dir)
    tag = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"

    def submit(spec):
        key = f"mambah-batch-{spec[0] + spec[1]}-{tag}"
        if direct:
            return client.submit(_process, pipeline, spec, url, key=key, pure=False)
        return client.submit(_process_spool, pipeline, spec, spool_dir, marker, spool.digest, key=key, pure=False)

    try:
        n_workers = max(1, len(client.scheduler_info().get("workers", {})) or (workers or 1))
        limit = max_in_flight or 2 * n_workers
        pending = iter(specs)
        ac = as_completed(loop=client.loop)  # our client's loop, not the default client's (a user may have one)
        for spec in pending:
            ac.add(submit(spec))
            if ac.count() >= limit:
                break
        for fut in ac:
            res = fut.result()
            fut.release()
            if direct:
                n_ev, timings = res["n_events"], res["timings"]
            elif isinstance(res, dict):  # spooled: commit the files, then delete them
                t0 = time.perf_counter()
                store.write_spooled(res["spool"], if_exists="skip")
                remove(res["spool"])
                n_ev, timings = res["n_events"], {**res["timings"], "store": time.perf_counter() - t0}
            else:  # a worker without the client's file system sent the batch itself
                t0 = time.perf_counter()
                store.write_batch(res, if_exists="skip")
                res.info["timings"]["store"] = time.perf_counter() - t0
                n_ev, timings = res.n_events, res.info["timings"]
            yield n_ev, timings
            if not flag.stop:
                nxt = next(pending, None)
                if nxt is not None:
                    ac.add(submit(nxt))
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
