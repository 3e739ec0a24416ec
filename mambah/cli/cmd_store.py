"""``mambah store summary|list|delete|export --db URL``: look after an event store."""

from __future__ import annotations

import json
import sys

DB_HELP = ("database URL or file: duckdb:///FILE.duckdb, sqlite:///FILE.sqlite, "
           "postgresql+psycopg://USER@HOST:PORT/DB (default: databases/mambah.duckdb)")


def add_db_argument(p) -> None:
    p.add_argument("--db", metavar="URL", default=None, help=DB_HELP)


def register(sub) -> None:
    p = sub.add_parser("store", help="summarise, list, delete or export the batches of an event store",
                       description="Look after an event store: summary, list of batches, delete batches, "
                                   "export tables to Parquet or ROOT.")
    cmds = p.add_subparsers(dest="store_command", metavar="ACTION", required=True)

    s = cmds.add_parser("summary", help="batches, events, rows per table, productions, model versions")
    add_db_argument(s)
    s.add_argument("--json", action="store_true", help="print the summary as JSON")
    s.set_defaults(func=_summary)

    s = cmds.add_parser("list", help="one line per batch (provenance and row counts)")
    add_db_argument(s)
    s.add_argument("--production", default=None, help="only batches of this production")
    s.set_defaults(func=_list)

    s = cmds.add_parser("delete", help="delete batches (all their rows, in one transaction)")
    add_db_argument(s)
    g = s.add_mutually_exclusive_group(required=True)
    g.add_argument("--batch", type=int, nargs="+", metavar="N", help="batch ids to delete")
    g.add_argument("--all", action="store_true", help="delete every batch (needs --yes)")
    s.add_argument("--yes", action="store_true", help="confirm --all")
    s.add_argument("--missing-ok", action="store_true", help="ignore batch ids that are not in the store")
    s.set_defaults(func=_delete)

    s = cmds.add_parser("export", help="tables to Parquet (a directory) or ROOT (one TTree per table)")
    add_db_argument(s)
    s.add_argument("--out", required=True, metavar="PATH",
                   help="FILE.root (one TTree per table) or a directory (one Parquet file per table)")
    s.add_argument("--table", nargs="+", metavar="T", default=None,
                   help="tables to export (default: batches, events, mc_vertices, mc_particles, particles, vertices, models)")
    s.add_argument("--batch", type=int, nargs="+", metavar="N", default=None, help="only these batches")
    s.add_argument("--dataset", action="store_true", help="Parquet: one file per batch under DIR/<table>/")
    s.set_defaults(func=_export)


def _open(args):
    from mambah.store import Store

    return Store(args.db, create=False)


def _summary(args) -> int:
    with _open(args) as store:
        s = store.summary()
    if args.json:
        print(json.dumps(s, indent=2))
        return 0
    print(f"store        {s['url']} ({s['backend']}, schema version {s['schema_version']})")
    print(f"batches      {s['n_batches']}")
    print(f"events       {s['n_events']}")
    print("rows         " + ", ".join(f"{k} {v}" for k, v in s["rows"].items()))
    prods = ", ".join(f"{k or '(unnamed)'} ({v} batches)" for k, v in s["productions"].items())
    print(f"productions  {prods or '(none)'}")
    print(f"code         {', '.join(s['code_versions']) or '(none)'}")
    models = ", ".join(f"{k} {'/'.join(v)}" for k, v in s["model_versions"].items())
    print(f"models used  {models or '(none)'}")
    return 0


def _list(args) -> int:
    with _open(args) as store:
        df = store.list_batches()
    if args.production is not None:
        df = df[df["production"] == args.production]
    if df.empty:
        print("no batches")
        return 0
    print(df.to_string(index=False))
    return 0


def _delete(args) -> int:
    from mambah.errors import ConfigurationError

    with _open(args) as store:
        if args.all:
            if not args.yes:
                raise ConfigurationError(f"--all deletes every batch of {store.url}: add --yes to confirm")
            ids = store.batch_ids()
        else:
            ids = args.batch
        done = store.delete_batches(ids, missing_ok=args.missing_ok)
        print(f"deleted {len(done)} batch(es) from {store.url}" + (f": {done}" if 0 < len(done) <= 20 else ""))
    return 0


def _export(args) -> int:
    with _open(args) as store:
        if args.out.lower().endswith(".root"):
            if args.dataset:
                print("mambah store export: --dataset applies to Parquet only; ignored", file=sys.stderr)
            path = store.export_root(args.out, tables=args.table, batches=args.batch)
            print(f"wrote {path}")
        else:
            paths = store.export_parquet(args.out, tables=args.table, batches=args.batch, dataset=args.dataset)
            print(f"wrote {len(paths)} table(s) to {args.out}")
    return 0
