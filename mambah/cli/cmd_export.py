"""``mambah export --db URL --out FILE.root|FILE.parquet``: the flat candidate ntuple."""

from __future__ import annotations

from mambah.cli.cmd_store import add_db_argument


def register(sub) -> None:
    p = sub.add_parser(
        "export", help="write the flat per-candidate ntuple (LHCb-style branches) to ROOT or Parquet",
        description="Write one row per event (the candidate is the decay-tree head) with a group of "
                    "LHCb-style branches per decay-tree node: truth (X_TRUEID, X_TRUEP_X, ...), "
                    "reconstructed kinematics (X_P, X_PT, X_ETA, X_M), PID (X_PIDK, X_PIDp, X_isMuon, ...) "
                    "and nTracks. Readable by uproot and ROOT.")
    add_db_argument(p)
    p.add_argument("--out", required=True, metavar="FILE", help="FILE.root (or FILE.root:TREE) or FILE.parquet")
    p.add_argument("--decay-tree", "--tree", dest="tree", default=None, metavar="NAME",
                   help="name of the TTree in the ROOT file (default DecayTree)")
    p.add_argument("--production", default=None, help="only batches of this production")
    p.add_argument("--batch", type=int, nargs="+", metavar="N", default=None, help="only these batches")
    p.add_argument("--channel", type=int, nargs="+", metavar="N", default=None,
                   help="of a background cocktail, only these channels (by index); channels of one shape share the "
                        "ntuple, whose 'channel' branch gives each candidate's channel")
    p.add_argument("--prefix", nargs="+", metavar="NODE=PREFIX", default=None,
                   help="override branch prefixes, by particle name or node number (e.g. Lambda_b0=Lb 2=proton)")
    p.set_defaults(func=_run)


def _run(args) -> int:
    from mambah.errors import ConfigurationError
    from mambah.store import Store

    prefixes = {}
    for item in args.prefix or []:
        node, sep, prefix = item.partition("=")
        if not sep or not node or not prefix:
            raise ConfigurationError(f"--prefix takes NODE=PREFIX (e.g. Lambda_b0=Lb), not {item!r}")
        prefixes[int(node) if node.isdigit() else node] = prefix
    with Store(args.db, create=False) as store:
        path = store.export_ntuple(args.out, tree=args.tree, batches=args.batch, production=args.production,
                                   prefixes=prefixes or None, channels=args.channel)
    print(f"wrote {path}")
    return 0
