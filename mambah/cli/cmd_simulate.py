"""``mambah simulate "DESCRIPTOR" --events N ...``: a production into the event store."""

from __future__ import annotations

import argparse
import sys


def register(sub) -> None:
    p = sub.add_parser(
        "simulate",
        help="simulate events of a decay into the event store",
        description=(
            "Simulate a decay batch by batch (gun -> decay -> occupancy -> efficiency -> resolution -> "
            "composites [-> vertexing] -> PID) into the event store. Every batch is written in one transaction and is "
            "reproducible from (seed, batch index). Every charged final-state particle of the descriptor "
            "becomes a track: its species must be one the models cover (e, mu, pi, K, p for the shipped "
            "ones), which is checked before anything is simulated. Events are unweighted (unit weight, "
            "accept-reject on the phase-space weight times the decay models' weights; the efficiency is in "
            "each batch's provenance) unless --weighted is given. Decay models go after the daughters of a "
            "decay, EvtGen style: \"B+ -> (J/psi(1S) -> mu+ mu- VLL) K+ SVS\"."
        ),
        epilog='example: mambah simulate "Lambda_b0 -> (Lambda_c+ -> p+ K- pi+) mu- anti-nu_mu Lb2LclnuLQCD" '
               "--events 100000 (unweighted events; add --weighted to keep weighted ones)",
    )
    p.add_argument("descriptor", nargs="+",
                   help='decay descriptor, e.g. "B+ -> (J/psi(1S) -> mu+ mu-) K+"; [...]CC for both charges. Several '
                        "descriptors make a background cocktail: one production whose events are split among these "
                        "channels by --rates (channel 0 is the first descriptor)")
    p.add_argument("--rates", default=None, metavar="R0,R1,...|dec",
                   help="relative rates of the cocktail's channels, one per descriptor, comma-separated (normalised; "
                        "non-negative, not all zero), or 'dec' for the branching fractions of --dec-file (production "
                        "fractions of different heads not included); default: equal rates")
    p.add_argument("--dec-file", default=None, metavar="FILE",
                   help="the .dec file of --rates dec (default: DecayLanguage's DECAY_LHCB.DEC)")
    p.add_argument("--events", "-n", type=int, required=True, help="number of events")
    p.add_argument("--batch-size", type=int, default=50_000, help="events per batch (sets memory use; default 50000)")
    p.add_argument("--seed", type=int, default=1, help="production seed (default 1)")
    p.add_argument("--db", default=None, help="store URL (default: DuckDB file databases/mambah.duckdb)")
    p.add_argument("--models", default=None, metavar="DIR", help="directory of trained models (default: the shipped models/)")
    p.add_argument("--production", default=None, help="production name in the store (default: derived from the descriptor and seed)")
    p.add_argument("--resume", action="store_true", help="continue a production already in the store (same configuration)")
    p.add_argument("--level", choices=["reco", "truth"], default="reco", help="'truth' stops after the generator (default: reco)")
    p.add_argument("--acceptance", action="store_true", help="require all charged final-state particles in 2 < eta < 5")
    p.add_argument("--reconstruct-as", action="append", default=None, metavar="SWAP", dest="reconstruct_as",
                   help="reconstruct a final-state track under another mass hypothesis (repeat for several): "
                        "\"B0 -> ^K+ pi- : pi+\" (the descriptor with the track marked by ^, ':', the hypothesis) or "
                        "\"K+=pi+\" (when the name occurs once among the final-state particles). The composites get "
                        "the swapped four-momenta and masses (M; the true-hypothesis mass is kept as M_TRUEHYP), "
                        "the PID stays that of the true species; checked before anything runs. In a cocktail each swap "
                        "names its channel: \"1:pi+=K+\" (channel index, ':', the swap) or the marked form of that "
                        "channel's descriptor")
    p.add_argument("--invisible", action="append", default=None, metavar="NAME[,NAME...]",
                   help="neutral final-state particles to leave invisible on purpose (e.g. gamma or gamma,pi0; "
                        "repeatable). No stage reconstructs photons, undecayed pi0, K_L0 or neutrons yet, so a "
                        "descriptor with one in its final state is refused unless it is listed here; the candidates "
                        "above it then have a partial mass, marked by X_NINVISIBLE > 0 in the ntuple (neutrinos are "
                        "always invisible and always counted there)")
    p.add_argument("--neutrals", choices=("reference", "model"), default=None,
                   help="reconstruct final-state photons: 'reference' with the reference calorimeter, 'model' with the "
                        "shipped photon networks (models/photon-ref-v1, learned from it): they become particles and the "
                        "candidates above them include them; a pi0 -> gamma gamma as two resolved photons or, at high pT, "
                        "one merged pi0 (a particles row with the PDG pi0 mass; ntuple pi0_Type 1 merged, 2 resolved)")
    p.add_argument("--vertexing", action="store_true",
                   help="add the Vertexing stage after the composites (opt-in): the tracks' states closest to the "
                        "beam with covariance, chi2 and ghost probability (from --trackstates), PVs fitted from tracks, "
                        "decay-vertex fits and the variables a selection cuts on (IPCHI2_OWNPV, FDCHI2_OWNPV, "
                        "DIRA_OWNPV, ENDVERTEX_CHI2/NDOF, TAU, MCORR, TRACK_Type ...); without it those columns stay "
                        "NaN and the ntuple has no such branches")
    p.add_argument("--trackstates", default=None, metavar="reference|model|MODEL",
                   help="with --vertexing: where the track states come from: 'model' (default) the shipped track-state "
                        "network (models/trackstate-ref-v1, learned from the reference detector), 'reference' the "
                        "reference detector itself, or a track-state model's name or directory")
    p.add_argument("--track-types", default=None, metavar="TYPES",
                   help="track types that become tracks, comma-separated among long, upstream, downstream (default "
                        "long: LHCb's standard tracks); e.g. long,downstream for K0S and Lambda daughters decaying "
                        "after the VELO (the 4-class efficiency model draws every track's type, ntuple X_TRACK_Type)")
    p.add_argument("--pileup", type=float, default=None, metavar="MU",
                   help="with --vertexing: mean number of extra visible pp collisions per event (Poisson), whose PVs "
                        "are fitted from their tracks with the signal's (OWNPV = the candidate's best PV, MINIPCHI2 "
                        "over all PVs); default 5.5, LHCb Upgrade I (Run 3) conditions; 0 for the signal collision only")
    p.add_argument("--brem", choices=("reference", "model"), default=None,
                   help="electrons radiate: bremsstrahlung before the magnet lowers the electron tracks' momenta and "
                        "brem recovery adds part of it back ('reference': the reference detector; 'model': the shipped "
                        "brem networks, models/brem-e-ref-v1, learned from it); B+ -> K+ e+ e- gets its radiative "
                        "tail; ntuple X_HASBREMADDED")
    p.add_argument("--weighted", action="store_true",
                   help="keep every generated event with its generator weight (phase space x decay models) instead of "
                        "unweighting by accept-reject: faster, but the events are then WEIGHTED and every histogram "
                        "must be filled with the 'weight' column of the events table (the 'weight' branch of the "
                        "ntuple); without it the distributions are wrong")
    p.add_argument("--unknown-models", choices=("error", "phsp"), default="error",
                   help="a decay model mambah does not have (an EvtGen name such as BTOSLLBALL after the daughters): "
                        "'error' (default) refuses the descriptor and lists the known models; 'phsp' generates that "
                        "decay with phase space and says so in a warning")
    pid = p.add_mutually_exclusive_group()
    pid.add_argument("--no-pid", dest="pid", action="store_false",
                     help="leave out the PID stage (the PID columns stay NaN); by default the chained PID models "
                          "pid-<species>-{flags,muon,rich,global} from --models simulate the PID of every track (see "
                          "their cards for their closure scores)")
    pid.add_argument("--pid", dest="pid", action="store_true",
                     help="simulate the PID (the default; kept for compatibility)")
    p.add_argument("--probnn", action="store_true",
                   help="also draw ProbNNe, ProbNNmu, ProbNNpi, ProbNNk, ProbNNp, ProbNNghost with the PID chains' ProbNN "
                        "step (store particles.probnn_*, ntuple X_ProbNNk ...); off by default: it about doubles the "
                        "PID's cost")
    p.add_argument("--pid-variations", action="store_true",
                   help="also draw every track's PID variables once per ensemble member of its PID chain (steps "
                        "trained with 'mambah train pid --ensemble K'), with the nominal's noise, into the store's "
                        "pid_variations table (ntuple branches <X>_<PID>_var1..K); the nominal PID is unchanged. "
                        "Refused before anything runs when no step of the chains has members")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--workers", type=int, default=None, help="run on a local Dask cluster with this many worker processes")
    g.add_argument("--scheduler", default=None, metavar="ADDRESS", help="run on an existing Dask cluster (tcp://host:port)")
    p.set_defaults(func=run, pid=True)


def default_production_name(descriptor, seed: int, reconstruct_as=None, invisible=None,
                            neutrals: str | None = None, rates=None, vertexing: bool | str = False,
                            brem: str | None = None, pileup: float | None = None) -> str:
    """``<hash>-seed<seed>``: the hash of the descriptor (whitespace-normalised) and, when given,
    of the mass-hypothesis swaps, the particles left invisible, the neutrals' reconstruction, the
    Vertexing stage and the brem (so that another choice is another production; without them the
    name is what it always was);
    for a cocktail (a list of descriptors), of every descriptor and the rates."""
    import hashlib

    if isinstance(descriptor, str):
        text = " ".join(descriptor.split())
    else:
        text = "cocktail " + " | ".join(" ".join(d.split()) for d in descriptor) + f" | rates {rates}"
    if reconstruct_as:
        text += " | reconstruct-as " + " ; ".join(" ".join(s.split()) for s in reconstruct_as)
    if invisible:
        from mambah.reconstruction.visibility import invisible_pids

        text += " | invisible " + ",".join(map(str, invisible_pids(invisible)))
    if neutrals:
        text += f" | neutrals {neutrals}"
    if vertexing:
        # the reference mode keeps the name it always had; a network is part of the name
        text += f" | vertexing {'model' if vertexing is True else vertexing}"
    if brem:
        text += f" | brem {brem}"
    if pileup is not None:
        text += f" | pileup {float(pileup):g}"
    return f"{hashlib.sha256(text.encode()).hexdigest()[:8]}-seed{seed}"


class _Collector:
    """A ``warnings.showwarning`` that keeps the models' :class:`~mambah.errors.OutOfRangeWarning` warnings
    (recognised by class; their fields are read, never their text) for the summary table at the
    end, holds back the :class:`~mambah.errors.UncalibratedWarning` and
    :class:`~mambah.errors.OutOfSupportWarning` warnings (the summary's lines on the uncalibrated and
    the unsupported PID outputs report them, from the batches' provenance), and shows every other
    warning as usual, at once."""

    def __init__(self):
        from mambah.errors import OutOfRangeWarning, OutOfSupportWarning, UncalibratedWarning

        self.category = OutOfRangeWarning
        self.held = (UncalibratedWarning, OutOfSupportWarning)
        self.caught: list = []
        self._show = None

    def __enter__(self):
        import warnings

        self._cm = warnings.catch_warnings()
        self._cm.__enter__()
        warnings.simplefilter("always", self.category)  # each model's warning counts, not only the first
        self._show = warnings.showwarning
        warnings.showwarning = self.showwarning
        return self

    def __exit__(self, *exc):
        return self._cm.__exit__(*exc)

    def showwarning(self, message, category, filename, lineno, file=None, line=None):
        if issubclass(category, self.category) and isinstance(message, self.category):
            self.caught.append(message)
        elif issubclass(category, self.held):
            return  # (the summary reports them, from the provenance)
        else:
            self._show(message, category, filename, lineno, file, line)


def _batch_infos(store, production: str, what: str):
    """The provenance (``batches.config``, decoded) of each batch of ``production``; a batch whose
    provenance is not JSON is logged (its ``what`` left out) and skipped."""
    import json
    import logging

    bt = store.read("batches", columns=["batch", "config"], where={"production": production}, ordered=False)
    for batch, blob in zip(bt["batch"], bt["config"]):
        try:
            yield json.loads(blob) if blob else {}
        except json.JSONDecodeError:
            logging.getLogger("mambah.simulate").warning(
                "batch %d: its provenance (config) is not JSON; its %s are left out", batch, what)


def uncalibrated_rows(store, production: str) -> list[tuple[str, int, int]]:
    """``[(model, rows left unmapped, rows evaluated)]`` of the calibrated PID models that left rows
    without a quantile map in ``production`` (:class:`~mambah.errors.UncalibratedWarning`), summed over
    the batches' provenance (``reconstruction.pid.uncalibrated``)."""
    return _pid_rows(store, production, "uncalibrated")


def unsupported_rows(store, production: str) -> list[tuple[str, int, int]]:
    """``[(model, rows outside its data support, rows evaluated)]`` of the PID models with such rows in
    ``production`` (:class:`~mambah.errors.OutOfSupportWarning`), summed over the batches' provenance
    (``reconstruction.pid.unsupported``)."""
    return _pid_rows(store, production, "unsupported")


def _pid_rows(store, production: str, field: str) -> list[tuple[str, int, int]]:
    """The PID stage's per-model ``field`` counts of ``production``, summed over its batches."""
    from mambah.production import uncalibrated_counts, unsupported_counts

    per_batch = {"uncalibrated": uncalibrated_counts, "unsupported": unsupported_counts}[field]
    totals: dict[str, list[int]] = {}
    for info in _batch_infos(store, production, f"{field}-row counts"):
        for model, (bad, n) in per_batch(info).items():
            t = totals.setdefault(model, [0, 0])
            t[0] += bad
            t[1] += n
    return [(m, bad, n) for m, (bad, n) in totals.items() if bad]


def out_of_range_rows(store, production: str, caught=()) -> list[dict]:
    """One row per model whose inputs fell outside its training range in ``production``.

    The counts are those of the whole production, summed over the batches' provenance
    (``reconstruction.<stage>.out_of_range``, :func:`mambah.production.out_of_range_counts`);
    the :class:`~mambah.errors.OutOfRangeWarning` warnings ``caught`` during the run add the conditions
    that were outside and what was done, and the models that record no counts in the provenance
    (their counts are then those of the warnings: ``scope`` says so).

    Returns:
        ``[{stage, model, outside, inputs, conditions, action, scope}]``, in the order of the stages.
    """
    from mambah.production import out_of_range_counts

    totals: dict[tuple[str, str], list[int]] = {}
    for info in _batch_infos(store, production, "out-of-range counts"):
        for stage, models in out_of_range_counts(info).items():
            for model, (bad, n) in models.items():
                t = totals.setdefault((stage, model), [0, 0])
                t[0] += bad
                t[1] += n
    seen: dict[str, dict] = {}
    for w in caught:
        d = seen.setdefault(str(w.model), {"conditions": [], "action": "", "outside": 0, "inputs": 0})
        d["conditions"] += [str(c) for c in w.detail if str(c) not in d["conditions"]]
        d["action"] = d["action"] or str(w.action)
        d["outside"] = max(d["outside"], int(w.count))
        d["inputs"] = max(d["inputs"], int(w.n))
    rows = []
    for (stage, model), (bad, n) in totals.items():
        if bad:
            w = seen.get(model, {})
            rows.append({"stage": stage, "model": model, "outside": bad, "inputs": n,
                         "conditions": w.get("conditions", []), "action": w.get("action", ""), "scope": "production"})
    known = {m for _, m in totals}
    for model, w in seen.items():
        if model not in known and w["outside"]:
            rows.append({"stage": "", "model": model, "outside": w["outside"], "inputs": w["inputs"],
                         "conditions": w["conditions"], "action": w["action"], "scope": "first report"})
    return rows


def format_out_of_range(rows: list[dict]) -> list[str]:
    """The lines of the summary table of :func:`out_of_range_rows`."""
    if not rows:
        return []
    head = ("stage", "model", "outside", "of", "share", "conditions outside")
    body = [(r["stage"] or "-", r["model"], str(r["outside"]), str(r["inputs"]),
             f"{100 * r['outside'] / r['inputs']:.2g}%" if r["inputs"] else "-",
             ", ".join(r["conditions"]) or "-") for r in rows]
    width = [max(len(x[i]) for x in (head, *body)) for i in range(len(head))]
    right = {2, 3, 4}

    def fmt(cells):
        return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, width))).rstrip()

    lines = [fmt(head), *(fmt(b) for b in body)]
    actions = sorted({r["action"] for r in rows if r["action"]})
    notes = [f"what was done: {'; '.join(actions)}" if actions else "they are evaluated at the range edges"]
    if any(r["scope"] != "production" for r in rows):
        notes.append("'-' stage: counts of the first batch that reported them (not recorded in the provenance)")
    return lines + notes


def generator_summary(store, production: str) -> dict:
    """The generator's accept-reject record summed over the production's batches (their provenance,
    ``generator_acceptance`` and ``generator`` of :class:`~mambah.generation.PhaseSpaceDecay`):
    ``{n_generated, n_accepted, unit_weights, rejection, models}`` (empty if nothing was recorded)."""
    import json

    from mambah.generation.decay import merge_acceptance

    bt = store.read("batches", columns=["batch", "config"], where={"production": production}, ordered=False)
    out: dict = {}
    accs = []
    for blob in bt["config"]:
        try:
            info = json.loads(blob) if blob else {}
        except json.JSONDecodeError:
            continue
        acc, gen = info.get("generator_acceptance") or {}, info.get("generator") or {}
        if not gen:
            continue
        accs.append(acc)
        out["unit_weights"] = out.get("unit_weights", True) and bool(gen.get("unit_weights", False))
        out["rejection"] = out.get("rejection", False) or bool(acc.get("rejection", False))
        out["models"] = {v["particle"]: v["model"] for v in (gen.get("models") or {}).get("nodes", {}).values()}
    if out:
        out.update(merge_acceptance(accs))
    return out


def format_generator_summary(gen: dict, weighted: bool) -> list[str]:
    """The summary lines about the events' weights."""
    if not gen:
        return []
    models = ", ".join(f"{m} ({p})" for p, m in gen.get("models", {}).items()) or "phase space"
    if not gen.get("unit_weights", True):
        return [f"generator: decay models {models}; WEIGHTED events (--weighted): fill every histogram with the "
                "'weight' column of the events table (the 'weight' branch of the ntuple)"]
    if gen.get("rejection") and gen.get("n_generated"):
        if gen.get("groups"):  # staged: each decay group accept-rejected on its own
            parts = "; ".join(f"{d}: {g['efficiency']:.1%} of {g['n_generated']:,}" for d, g in gen["groups"].items())
            return [f"generator: decay models {models}; unweighted events (weight 1), accept-reject efficiency "
                    f"{gen['efficiency']:.1%} of whole chains (each decay accept-rejected on its own: {parts})"]
        return [f"generator: decay models {models}; unweighted events (weight 1), accept-reject efficiency "
                f"{gen['efficiency']:.1%} ({gen['n_accepted']:,} of {gen['n_generated']:,} generated)"]
    return [f"generator: decay models {models}; unweighted events (weight 1)"
            + (" (--weighted: every weight is 1 for this chain)" if weighted else "")]


def _swaps(pipeline) -> list[str]:
    """``"K+ (node 1) as pi+"`` for each mass-hypothesis swap of the pipeline's composites stage
    (of a cocktail: ``"channel 1: ..."``)."""
    if hasattr(pipeline, "channels"):
        return [f"channel {c}: {s}" for c, p in enumerate(pipeline.channels) for s in _swaps(p)]
    return [str(h) for stage in pipeline.stages for h in (getattr(stage, "reconstruct_as", None) or ())]


def _invisible(stage) -> list[str]:
    """Names of the particles a composites stage leaves invisible on purpose."""
    from mambah.reconstruction.visibility import invisible_names

    return invisible_names(getattr(stage, "invisible", None) or ())


def _variation_plan(pipeline) -> dict | None:
    """The PID stage's variation plan (:meth:`mambah.pid.stage.PID.variation_plan`), if it has one."""
    for pipe in getattr(pipeline, "channels", None) or [pipeline]:  # a cocktail: its channels' (one plan)
        for stage in pipe.stages:
            if getattr(stage, "variations", False):
                return stage.variation_plan()
    return None


def vertexing_summary(store, production: str) -> dict[str, int]:
    """The Vertexing stage's counts summed over the production's batches (their provenance,
    ``reconstruction.vertexing``, per channel for a cocktail): ``{tracks, tracks_without_state,
    vertices, vertices_not_fitted}`` (empty when the stage did not run)."""
    import json

    keys = ("tracks", "tracks_without_state", "vertices", "vertices_not_fitted", "collisions", "pvs")
    bt = store.read("batches", columns=["config"], where={"production": production}, ordered=False)
    out: dict[str, int] = {}
    for blob in bt["config"]:
        try:
            info = json.loads(blob) if blob else {}
        except json.JSONDecodeError:
            continue
        recs = [info, *((info.get("cocktail") or {}).get("channels") or [])]
        for rec in recs:
            vx = ((rec.get("reconstruction") or {}) if isinstance(rec, dict) else {}).get("vertexing")
            if isinstance(vx, dict):
                for k in keys:
                    out[k] = out.get(k, 0) + int(vx.get(k, 0))
    return out


def cocktail_summary(store, production: str) -> list[dict]:
    """Per channel of a cocktail production: ``{channel, descriptor, fraction, n_events}`` summed over
    its batches' provenance (``[]`` for a production that is not a cocktail)."""
    import json

    from mambah.generation.decay import merge_acceptance

    bt = store.read("batches", columns=["config"], where={"production": production}, ordered=False)
    out: dict[int, dict] = {}
    accs: dict[int, list] = {}
    for blob in bt["config"]:
        try:
            info = json.loads(blob) if blob else {}
        except json.JSONDecodeError:
            continue
        for rec in (info.get("cocktail") or {}).get("channels", []):
            c = int(rec["channel"])
            d = out.setdefault(c, {"channel": c, "descriptor": rec.get("descriptor", ""),
                                   "fraction": float(rec.get("fraction", float("nan"))), "n_events": 0,
                                   "rejection": False})
            d["n_events"] += int(rec["n_events"])
            acc = rec.get("generator_acceptance") or {}
            if acc:
                accs.setdefault(c, []).append(acc)
                d["rejection"] = d["rejection"] or bool(acc.get("rejection", False))
    for c, a in accs.items():
        out[c]["acceptance"] = merge_acceptance(a)["efficiency"]
    return [out[k] for k in sorted(out)]


def run(args: argparse.Namespace) -> int:
    from mambah.cli import progress_enabled
    from mambah.production import run_production
    from mambah.simulation import standard_pipeline
    from mambah.store import Store

    descriptors = list(args.descriptor)
    if args.unknown_models == "phsp":  # the rewritten descriptor (unknown models dropped, each one warned of)
        from mambah.generation import parse_descriptor

        descriptors = [parse_descriptor(d, unknown_models="phsp").text for d in descriptors]
    cocktail = len(descriptors) > 1 or args.rates is not None
    if args.dec_file is not None and (args.rates or "").strip().lower() != "dec":
        from mambah.errors import ConfigurationError

        raise ConfigurationError("--dec-file gives the rates of --rates dec; add --rates dec, or leave --dec-file out")
    if args.trackstates is not None and not args.vertexing:
        from mambah.errors import ConfigurationError

        raise ConfigurationError("--trackstates chooses the Vertexing stage's track states; it needs --vertexing")
    vertexing = (args.trackstates or "model") if args.vertexing else False
    options = dict(models_dir=args.models, level=args.level, acceptance=args.acceptance, pid=args.pid,
                   unweight=not args.weighted, reconstruct_as=args.reconstruct_as, invisible=args.invisible or (),
                   neutrals=args.neutrals, pid_variations=args.pid_variations, probnn=args.probnn, vertexing=vertexing,
                   brem=args.brem)
    if args.track_types is not None:
        options["track_types"] = tuple(t.strip() for t in args.track_types.split(",") if t.strip())
    if args.pileup is not None:
        options["pileup"] = args.pileup
    if cocktail:
        from mambah.simulation import cocktail_pipeline

        pipeline = cocktail_pipeline(descriptors, "equal" if args.rates is None else args.rates, dec_file=args.dec_file,
                                     **options)
        name = args.production or default_production_name(descriptors, args.seed, args.reconstruct_as,
                                                           args.invisible, args.neutrals,
                                                           rates=[round(f, 12) for f in pipeline.fractions],
                                                           vertexing=vertexing, brem=args.brem,
                                                           pileup=args.pileup)
    else:
        pipeline = standard_pipeline(descriptors[0], **options)
        name = args.production or default_production_name(descriptors[0], args.seed, args.reconstruct_as,
                                                          args.invisible, args.neutrals, vertexing=vertexing,
                                                          brem=args.brem, pileup=args.pileup)
    with Store(args.db) as store:
        with _Collector() as collected:
            res = run_production(
                pipeline, n_events=args.events, batch_size=args.batch_size, seed=args.seed, store=store,
                production=name, resume=args.resume, workers=args.workers, scheduler=args.scheduler,
                progress=progress_enabled(args),
            )
        url = store.url
        rows = out_of_range_rows(store, name, collected.caught) if args.level == "reco" and res.written else []
        uncal = uncalibrated_rows(store, name) if args.level == "reco" and res.written else []
        unsup = unsupported_rows(store, name) if args.level == "reco" and res.written else []
        gen = generator_summary(store, name)
        channels = cocktail_summary(store, name) if cocktail else []
        vtx = vertexing_summary(store, name) if args.vertexing and res.written else {}
    print(f"production {res.production!r} in {url}")
    print(f"  batches: {res.written} written, {res.skipped} already present, {res.n_batches} in all")
    if res.written:
        print(f"  events:  {res.n_events} in {res.seconds:.1f} s ({res.events_per_s:,.0f} events/s)")
        share = ", ".join(f"{k} {v:.0%}" for k, v in sorted(res.stage_share().items(), key=lambda kv: -kv[1]))
        print(f"  time per stage: {share}")
    for line in format_generator_summary(gen, weighted=args.weighted):
        print(f"  {line}")
    if channels:
        total = sum(c["n_events"] for c in channels) or 1
        print("  cocktail (events of each channel in the store; the channel of each event is in the ntuple's "
              "'channel' branch and Store.event_channels()):")
        for c in channels:
            gen = (f"; accept-reject efficiency {c['acceptance']:.1%}" if c.get("rejection") and "acceptance" in c
                   else "")
            print(f"    channel {c['channel']}: {c['descriptor']}  rate fraction {c['fraction']:.4g}, "
                  f"{c['n_events']} events ({c['n_events'] / total:.2%}){gen}")
    swaps = _swaps(pipeline)
    invisible = [n for stage in pipeline.stages for n in _invisible(stage)]
    if invisible:
        print(f"  left invisible (--invisible): {', '.join(invisible)}: the candidates above them have a partial mass "
              "(X_NINVISIBLE > 0 in the ntuple)")
    if swaps:
        print(f"  reconstructed as: {'; '.join(swaps)} (masses M; true-hypothesis masses M_TRUEHYP; PID of the "
              "true species)")
    if vtx:
        ts = args.trackstates or "model"
        vmode = "the reference detector's track states" if ts == "reference" else \
            f"the track-state network {'trackstate-ref-v1' if ts == 'model' else ts}"
        print(f"  vertexing (--vertexing, {vmode}): {vtx['vertices']:,} composites, "
              f"{vtx['vertices'] - vtx['vertices_not_fitted']:,} with a vertex fit"
              + (f" ({vtx['vertices_not_fitted']:,} with fewer than two daughters to fit: NaN, ENDVERTEX_NDOF -1)"
                 if vtx["vertices_not_fitted"] else "")
              + f"; {vtx['tracks']:,} tracks, {vtx['tracks_without_state']:,} without a state"
              + (f"; {vtx['pvs']:,} PVs fitted from tracks ({vtx['pvs'] / max(res.n_events, 1):.2f} per event, "
                 f"pile-up included: --pileup)" if vtx.get("pvs") else "")
              + "; ntuple branches X_IPCHI2_OWNPV, X_MINIPCHI2, X_FDCHI2_OWNPV, X_DIRA_OWNPV, X_ENDVERTEX_CHI2/NDOF, "
              "X_MCORR, X_TRACK_Type, nPVs ...")
    plan = _variation_plan(pipeline)
    if plan:
        steps = "; ".join(f"{s}: {', '.join(m)}" for s, m in plan["steps"].items())
        without = plan["without_members"]
        print(f"  PID variations: K = {plan['members']} members ({steps})"
              + (f"; no members, no variations: {', '.join(without)}" if without else ""))
    if rows:
        print("  inputs outside the models' training ranges, whole production:")
        for line in format_out_of_range(rows):
            print(f"    {line}")
    if uncal:
        print("  PID outputs left uncalibrated (their (P, ETA) bin or RICH state has no quantile map; the network's own "
              "output), whole production: " + ", ".join(f"{m} {100 * b / max(n, 1):.2g}% ({b} of {n})" for m, b, n in uncal))
    if unsup:
        print("  PID outputs outside the data's support (in (P, ETA) cells where the data "
              "the model was fitted on had almost no signal: extrapolated), whole production: "
              + ", ".join(f"{m} {100 * b / max(n, 1):.2g}% ({b} of {n})" for m, b, n in unsup))
    if res.interrupted:
        print(f"interrupted: {res.written + res.skipped} of {res.n_batches} batches are in the store; "
              "run the same command with --resume to finish", file=sys.stderr)
        return 130
    return 0
