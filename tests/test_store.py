"""The event store on all three backends: round trips, atomicity, validation, navigation, errors."""

from __future__ import annotations

import json
import time

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from mambah.batch import empty_table
from mambah.errors import BatchExistsError, ConfigurationError, SchemaVersionError, StoreError
from mambah.store import BatchValidationError, Store, normalise_url
from mambah.store import schema as S
from mambah.store.testing import REFERENCE_TREE, pg_schema, synthetic_batch

BACKENDS = ["duckdb", "sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


@pytest.fixture(params=BACKENDS)
def url(request, tmp_path):
    backend = request.param
    if backend == "duckdb":
        yield f"duckdb:///{tmp_path}/store.duckdb"
    elif backend == "sqlite":
        yield f"sqlite:///{tmp_path}/store.sqlite"
    else:
        with pg_schema(request.getfixturevalue("postgres_url")) as u:
            yield u


@pytest.fixture
def store(url):
    with Store(url) as s:
        yield s


def _frames_equal(got: pd.DataFrame, want: pd.DataFrame) -> None:
    pd.testing.assert_frame_equal(got.reset_index(drop=True), want.reset_index(drop=True), check_exact=True)


# ---------------------------------------------------------------------------------------------
def test_schema_matches_columns():
    """The ORM tables and the in-memory contract agree column for column."""
    for table, cols in S.COLUMNS.items():
        t = S.Base.metadata.tables[table]
        assert [c.name for c in t.columns] == list(cols), table


def test_round_trip_every_table(store):
    b = synthetic_batch(7, 300, seed=3)
    assert store.write_batch(b) is True
    for name, df in b.tables.items():
        got = store.read(name)
        assert list(got.columns) == list(S.COLUMNS[name])
        assert dict(got.dtypes.astype(str)) == S.COLUMNS[name]
        _frames_equal(got, df)
    info = store.batch_info(7)
    assert info["seed"] == 3 and info["n_events"] == 300 and info["production"] == "synthetic"
    assert info["config"]["decay_tree"] == REFERENCE_TREE
    assert "timings" not in info["config"] and "models" not in info["config"]
    assert info["models"] == b.info["models"] and info["timings"] == b.info["timings"]


def test_nan_and_extreme_values_survive(store):
    b = synthetic_batch(1, 50)
    p = b.tables["particles"]
    p.loc[p.index[:5], "pid_k"] = np.nan
    p.loc[p.index[5], "px"] = np.float32(3.4e38)
    p.loc[p.index[6], "mc_particle"] = -1
    store.write_batch(b)
    _frames_equal(store.read("particles"), p)


def test_duplicate_batch_raises_or_skips(store):
    b = synthetic_batch(3, 40)
    assert store.write_batch(b)
    with pytest.raises(BatchExistsError, match=r"batch 3 is already in the store .*(duckdb|sqlite|postgresql)"):
        store.write_batch(b)
    assert store.write_batch(b, if_exists="skip") is False
    assert store.count("mc_particles") == len(b.tables["mc_particles"])
    assert store.batch_ids() == [3]
    with pytest.raises(ConfigurationError, match="if_exists"):
        store.write_batch(b, if_exists="replace")


def test_exception_mid_write_leaves_nothing(store, monkeypatch):
    good = synthetic_batch(0, 30)
    store.write_batch(good)
    before = {t: store.count(t) for t in S.DATA_TABLES}
    calls = []
    original = type(store.backend).insert

    def failing(self, driver, table, df):
        calls.append(table.name)
        if table.name == "particles":  # after events, mc_vertices, mc_particles went in
            raise RuntimeError("disk on fire")
        return original(self, driver, table, df)

    monkeypatch.setattr(type(store.backend), "insert", failing)
    with pytest.raises(RuntimeError, match="disk on fire"):
        store.write_batch(synthetic_batch(1, 30))
    assert calls[:3] == ["events", "mc_vertices", "mc_particles"]
    monkeypatch.undo()
    assert store.batch_ids() == [0]
    assert {t: store.count(t) for t in S.DATA_TABLES} == before
    assert store.count("mc_particles", batches=1) == 0
    # the store is still usable and the batch can be written afterwards
    assert store.write_batch(synthetic_batch(1, 30))
    assert store.batch_ids() == [0, 1]


def _mut(table, fn):
    def mutate(b):
        b.tables[table] = fn(b.tables[table])
    return mutate


@pytest.mark.parametrize(
    "mutate, message",
    [
        (_mut("particles", lambda d: d.drop(columns=["pid_k"])),
         r"table 'particles' lacks column\(s\) pid_k; expected columns: batch, index"),
        (_mut("events", lambda d: d.assign(foo=1.0)),
         r"table 'events' has unexpected column\(s\) foo"),
        (_mut("mc_particles", lambda d: d.assign(px=d["px"].astype(str))),
         r"column mc_particles.px has dtype .*, expected float64"),
        (_mut("mc_particles", lambda d: d.assign(pid=d["pid"].astype("float64"))),
         r"column mc_particles.pid has dtype float64, expected int32"),
        (_mut("events", lambda d: d.assign(batch=np.int64(99))),
         r"table 'events' has rows with batch = \[99\]"),
        (_mut("mc_vertices", lambda d: d.assign(index=np.int32(4))),
         r"table 'mc_vertices' has duplicated index"),
        (lambda b: b.tables.__setitem__("scratch", pd.DataFrame({"a": [1]})),
         r"table\(s\) 'scratch' that the store does not know"),
        (_mut("mc_particles", lambda d: d.assign(index=np.arange(len(d), dtype=np.int64) + 2**40)),
         r"mc_particles.index \(int64\) holds values .* that do not fit int32"),
    ],
)
def test_bad_batches_are_refused_before_writing(tmp_path, mutate, message):
    with Store(f"duckdb:///{tmp_path}/s.duckdb") as store:
        b = synthetic_batch(5, 20)
        mutate(b)
        with pytest.raises(BatchValidationError, match=message):
            store.write_batch(b)
        assert store.batch_ids() == []
        assert all(store.count(t) == 0 for t in S.DATA_TABLES)


def test_compatible_dtypes_are_cast(store):
    b = synthetic_batch(2, 20)
    want = b.tables["mc_particles"].copy()
    b.tables["mc_particles"] = want.astype({"px": "float64", "event": "int64", "pid": "int16"})
    store.write_batch(b)
    _frames_equal(store.read("mc_particles"), want)


def test_missing_tables_are_written_empty(store):
    b = synthetic_batch(4, 10)
    del b.tables["particles"], b.tables["vertices"]
    assert store.write_batch(b)
    assert store.count("particles") == 0 and store.count("events") == 10


def test_selections(store):
    for i in range(3):
        store.write_batch(synthetic_batch(i, 100, seed=i))
    allp = store.read("particles")
    got = store.read("particles", columns=["event", "px", "pid_k"], batches=[0, 2], where={"pid": [211, -211]})
    want = allp[allp["batch"].isin([0, 2]) & allp["pid"].isin([211, -211])][["event", "px", "pid_k"]]
    _frames_equal(got, want)
    got = store.read("mc_particles", batches=1, where=[("pz", ">", 20000.0), ("event", "between", (10, 20))])
    mc = store.read("mc_particles")
    want = mc[(mc.batch == 1) & (mc.pz > 20000) & mc.event.between(10, 20)]
    assert len(want) > 0
    _frames_equal(got, want)
    got = store.read("events", where={"n_tracks": ("<", np.int32(115))}, columns=["n_tracks"])
    assert len(got) > 0 and (got["n_tracks"] < 115).all()
    assert store.read("events", batches=[]).empty


def test_unknown_table_or_column_lists_the_available(store):
    with pytest.raises(StoreError, match=r"no table 'particle' \(did you mean 'particles'.*tables: .*mc_particles"):
        store.read("particle")
    with pytest.raises(StoreError, match=r"table 'particles' has no column 'pidk'; columns: batch, index(.|\n)*did you mean 'pid_k'"):
        store.read("particles", columns=["pidk"])
    with pytest.raises(StoreError, match=r"no column 'nope'"):
        store.read("events", where={"nope": 1})
    with pytest.raises(ConfigurationError, match="unknown filter operator"):
        store.read("events", where=[("event", "~", 1)])


def test_navigation(store):
    b = synthetic_batch(0, 50)
    store.write_batch(b)
    n = 50
    ev = 7
    lb, lc, p, k, pi, mu, nu = (node * n + ev for node in range(7))
    assert store.mother(0, p)["index"].tolist() == [lc]
    assert store.mother(0, lc)["index"].tolist() == [lb]
    assert store.mother(0, lb).empty
    assert store.daughters(0, lb)["index"].tolist() == [lc, mu, nu]
    assert store.daughters(0, lc)["index"].tolist() == [p, k, pi]
    assert store.daughters(0, p).empty
    d = store.descendants(0, lb)
    assert d["index"].tolist() == [lc, mu, nu, p, k, pi]
    assert d["generation"].tolist() == [1, 1, 1, 2, 2, 2]
    leaf = store.descendants(0, p)
    assert leaf.empty and "generation" in leaf.columns
    assert store.descendants(0, lc)["index"].tolist() == [p, k, pi]
    tree = store.decay_tree(0, ev)
    assert tree["index"].tolist() == [lb, lc, p, k, pi, mu, nu]
    assert tree["depth"].tolist() == [0, 1, 2, 2, 2, 1, 1]
    # MC truth of every reconstructed particle of the event, and back
    reco = store.read("particles", batches=0, where={"event": ev})
    truth = store.mc_truth(0, reco["index"].tolist())
    assert truth["particle"].tolist() == reco["index"].tolist()
    assert (truth["index"].to_numpy() == reco["mc_particle"].to_numpy()).all()
    assert (truth["pid"].to_numpy() == reco["pid"].to_numpy()).all()
    one = store.mc_truth(0, int(reco["index"].iloc[0]))
    assert len(one) == 1 and one["index"].iloc[0] == reco["mc_particle"].iloc[0]
    back = store.reconstructed_as(0, int(reco["mc_particle"].iloc[0]))
    assert back["index"].tolist() == [reco["index"].iloc[0]]
    with pytest.raises(StoreError, match="no row with index 99999 in batch 0 of 'mc_particles'"):
        store.mother(0, 99999)
    with pytest.raises(StoreError, match="decay trees live in"):
        store.daughters(0, 1, table="events")


def test_list_summary_delete(store):
    for i in (4, 5, 6):
        b = synthetic_batch(i, 20 + i)
        b.info["production"] = "lb" if i < 6 else "other"
        store.write_batch(b)
    lst = store.list_batches()
    assert lst["batch"].tolist() == [4, 5, 6]
    assert lst["n_events"].tolist() == [24, 25, 26]
    assert lst["n_mc_particles"].tolist() == [7 * 24, 7 * 25, 7 * 26]
    s = store.summary()
    assert s["n_batches"] == 3 and s["n_events"] == 75
    assert s["rows"]["mc_particles"] == 7 * 75
    assert s["productions"] == {"lb": 2, "other": 1}
    assert s["model_versions"] == {"pid_p": ["1"]}
    with pytest.raises(StoreError, match=r"batch\(es\) \[9\] not in the store .*nothing deleted"):
        store.delete_batches([5, 9])
    assert store.batch_ids() == [4, 5, 6]
    assert store.delete_batches([5]) == [5]
    assert store.batch_ids() == [4, 6]
    assert store.count("particles", batches=5) == 0 and store.count("events") == 24 + 26
    assert store.delete_batches([4, 6, 9], missing_ok=True) == [4, 6]
    assert all(store.count(t) == 0 for t in S.DATA_TABLES)


def test_models_and_meta(store, tmp_path):
    from mambah.modeldir import save_model_dir

    card = {"name": "pid_p", "version": "2", "kind": "pid", "species": "p",
            "conditions": [{"name": "p", "unit": "MeV", "quantity": "p"}],
            "targets": [{"name": "pid_p", "unit": "", "quantity": "pid_p"}], "metrics": {"bdt_ks": 0.05}}
    path = save_model_dir(tmp_path / "pid_p", card, arrays={"a": np.arange(3)})
    store.register_model(path)
    store.register_model(path)  # same name and version: replaced, not duplicated
    m = store.read("models")
    assert m["name"].tolist() == ["pid_p"] and m["version"].tolist() == ["2"]
    assert json.loads(m["metrics"].iloc[0]) == {"bdt_ks": 0.05} and len(m["hash"].iloc[0]) == 16
    store.set_meta("note", {"a": 1})
    assert json.loads(store.get_meta("note")) == {"a": 1}
    assert store.get_meta("schema_version") == str(S.SCHEMA_VERSION)
    assert store.get_meta("absent", "x") == "x"
    with pytest.raises(StoreError, match="managed by mambah"):
        store.set_meta("schema_version", "9")


def test_reopen_keeps_data_and_checks_schema_version(url):
    with Store(url) as s:
        s.write_batch(synthetic_batch(0, 10))
    with Store(url) as s:
        assert s.batch_ids() == [0]
        meta = S.Meta.__table__
        with s._conn.begin():
            s._conn.execute(sa.update(meta).where(meta.c.key == "schema_version").values(value="999"))
    with pytest.raises(SchemaVersionError, match=rf"schema version 999, this mambah .* uses schema version {S.SCHEMA_VERSION}"):
        Store(url)


def test_default_url_is_duckdb_under_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with Store() as s:
        assert s.backend.name == "duckdb"
    assert (tmp_path / "databases" / "mambah.duckdb").is_file()


def test_urls():
    assert normalise_url("x.sqlite").drivername == "sqlite+pysqlite"
    assert normalise_url("a/b.duckdb").drivername == "duckdb"
    assert normalise_url("postgresql://u@h:1/d").drivername == "postgresql+psycopg"
    with pytest.raises(StoreError, match=r"unknown database URL scheme 'mysql'.*supported: duckdb"):
        Store("mysql://u@localhost/db")
    with pytest.raises(StoreError, match="neither a database URL nor"):
        Store("file.txt")
    with pytest.raises(StoreError, match="PostgreSQL driver 'psycopg2' is not supported"):
        Store("postgresql+psycopg2://u@h/d")


def test_unreachable_postgres_names_host_and_port():
    t0 = time.perf_counter()
    with pytest.raises(StoreError, match=r"cannot connect to the PostgreSQL server at 127\.0\.0\.1:1 \(database 'test'"):
        Store("postgresql+psycopg://postgres@127.0.0.1:1/test", connect_timeout=2)
    assert time.perf_counter() - t0 < 10


def test_not_a_mambah_database(tmp_path):
    eng = sa.create_engine(f"sqlite:///{tmp_path}/other.sqlite")
    with eng.begin() as c:
        c.execute(sa.text("CREATE TABLE batches (x INTEGER)"))
    eng.dispose()
    with pytest.raises(StoreError, match="no mambah_meta table: not a mambah store"):
        Store(f"sqlite:///{tmp_path}/other.sqlite")
    with pytest.raises(StoreError, match="no store at"):
        Store(f"sqlite:///{tmp_path}/absent.sqlite", create=False)


def test_closed_store_says_so(tmp_path):
    s = Store(f"sqlite:///{tmp_path}/a.sqlite")
    s.close()
    s.close()
    with pytest.raises(StoreError, match="is closed"):
        s.read("events")


def test_empty_table_batches_follow_contract(store):
    """A batch built from empty_table with only events (e.g. generation before reconstruction)."""
    from mambah.batch import Batch

    b = Batch(id=11, seed=1, n_events=3)
    ev = empty_table("events", 3)
    ev["batch"] = np.int64(11)
    ev["event"] = np.arange(3, dtype=np.int32)
    b.tables["events"] = ev
    store.write_batch(b)
    _frames_equal(store.read("events"), ev)
    assert store.batch_info(11)["config"] == {}


@pytest.mark.postgres
def test_postgres_concurrent_duplicate_is_detected(postgres_url):
    """Two connections writing the same batch id: exactly one wins, the other skips or raises."""
    with pg_schema(postgres_url) as u, Store(u) as a, Store(u) as b:
        batch = synthetic_batch(0, 50)
        assert a.write_batch(batch)
        assert b.write_batch(batch, if_exists="skip") is False
        with pytest.raises(BatchExistsError):
            b.write_batch(batch)
        assert b.count("events") == 50


def test_duckdb_file_held_by_another_process_is_explained(tmp_path):
    import subprocess
    import sys

    url = f"duckdb:///{tmp_path}/held.duckdb"
    code = f"from mambah.store import Store\nStore({url!r})"
    with Store(url):
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode != 0
    assert "StoreError" in r.stderr and "one process at a time" in r.stderr


@pytest.mark.postgres
def test_postgres_missing_database_or_schema_is_explained(postgres_url):
    from sqlalchemy.engine import make_url

    u = make_url(postgres_url)
    with pytest.raises(StoreError, match=r"database 'mambah_no_such_db'.*does not exist; create it first"):
        Store(u.set(database="mambah_no_such_db"))
    with pytest.raises(StoreError, match="cannot set up the mambah tables in .*no schema has been selected"):
        Store(u.update_query_dict({"options": "-csearch_path=mambah_no_such_schema"}))
