"""The standard simulation chain, assembled from a decay descriptor.

``gun -> decay -> occupancy -> efficiency -> resolution -> composites -> pid``; see
:func:`standard_pipeline`. Every stage is a small frozen configuration, so the pipeline pickles
for Dask and its ``config()`` is what a production records and checks on resume.

A descriptor the models cannot simulate is refused when the pipeline is built, before any batch
runs: every charged final-state particle (a leaf of the decay tree: the generator does not decay
it further) becomes a track, so its species must be one the efficiency and resolution models were
trained for and, with PID, one that has a PID chain. Neutral final-state particles (gamma,
neutrinos, K_L0, n, and undecayed K_S0, Lambda0, pi0) are not tracks: the efficiency stage never
reconstructs them, and no stage reconstructs them yet. Neutrinos are invisible at LHCb, so a
semileptonic decay is simulated as it is (its composites have a partial mass, marked by
``vertices.n_invisible`` > 0); any other neutral final-state particle is refused, named and marked
in the descriptor (:func:`check_neutral_coverage`), unless the user leaves it invisible on purpose
(``invisible=("gamma",)``; ``mambah simulate --invisible gamma``): without a photon the "B0" of
``B0 -> (K*(892)0 -> K+ pi-) gamma`` would silently have the K*0's mass.

Mass-hypothesis swaps (``reconstruct_as``, :mod:`mambah.reconstruction.hypotheses`) are checked
against the descriptor, and refused, before the models are loaded.

A background cocktail (several channels with their relative rates in one production) is
:func:`cocktail_pipeline`: one standard pipeline per channel in a
:class:`~mambah.pipeline.CocktailPipeline`; every channel, its rate and its swaps are checked
before any model is loaded, and an error names the channel.
"""

from __future__ import annotations

import os
from pathlib import Path

from mambah.physics import SPECIES, species_of_pdg
from mambah.pipeline import Pipeline

__all__ = ["standard_pipeline", "cocktail_pipeline", "GENERATOR_LEVEL", "check_track_coverage", "check_neutral_coverage"]

#: ``level`` value for a generator-level production (truth only, no detector response)
GENERATOR_LEVEL = "truth"


def _model(models_dir: str | os.PathLike | None, name: str) -> str:
    return name if models_dir is None else str(Path(models_dir) / name)


def standard_pipeline(
    descriptor: str,
    *,
    models_dir: str | os.PathLike | None = None,
    level: str = "reco",
    charge_conjugate: bool | str = False,
    acceptance: bool = False,
    pid: bool = True,
    unweight: bool = True,
    reconstruct_as=None,
    invisible=(),
    neutrals: str | None = None,
    pid_variations: bool = False,
    probnn: bool = False,
    vertexing: bool | str = False,
    brem: str | None = None,
    track_types=("long",),
    pileup: float | None = None,
    **gun_options,
) -> Pipeline:
    """The simulation chain for ``descriptor``.

    Args:
        descriptor: e.g. ``"Lambda_b0 -> (Lambda_c+ -> p+ K- pi+) mu- anti-nu_mu"``.
        models_dir: where the trained models live (default: the shipped ``models/``).
        level: ``"truth"`` (generator only) or ``"reco"`` (the whole detector response).
        charge_conjugate: generate the charge-conjugate decay too (half of the events), as
            ``[...]CC`` in the descriptor does.
        acceptance: require every charged final-state particle in 2 < eta < 5 at generator level.
        unweight: True (default): unit-weight events, by accept-reject on the phase-space weight
            times the decay models' weights (see :class:`mambah.generation.PhaseSpaceDecay`);
            False (``mambah simulate --weighted``): keep every generated event with its weight in
            ``events.weight`` / the ntuple's ``weight``, which every histogram must then use.
        pid: end the chain with the PID stage (:class:`mambah.pid.stage.PID`: the chained PID
            models ``pid-<species>-{flags,muon,rich,global}`` of the species the descriptor's tracks
            have), ``level="reco"`` only. ``False`` leaves the PID columns NaN.
        reconstruct_as: mass-hypothesis swaps of final-state tracks, ``level="reco"`` only: one
            string, a list of strings or a mapping, each ``"K+=pi+"`` (a name that occurs once among
            the final-state particles) or ``"B0 -> ^K+ pi- : pi+"`` (the descriptor with the track
            marked by ``^``, then the hypothesis); see :mod:`mambah.reconstruction.hypotheses`. The
            composites get the swapped four-momenta and masses (``vertices.m_truehyp`` keeps the
            true-hypothesis mass), the PID stays that of the true species.
        invisible: neutral final-state particles to leave invisible on purpose, ``level="reco"``
            (names or PDG ids, e.g. ``("gamma", "pi0")``, or ``"gamma,pi0"``; a particle and its
            antiparticle alike). No stage reconstructs photons, undecayed pi0, K_L0, neutrons...:
            a descriptor with one of them in its final state is refused unless it is listed here
            (neutrinos are always invisible); the composites above it then have a partial mass,
            marked by ``vertices.n_invisible`` > 0 (ntuple ``X_NINVISIBLE``).
        neutrals: ``"reference"``: reconstruct final-state photons with the reference calorimeter
            (:class:`mambah.reconstruction.neutrals.Neutrals`, opt-in; ``mambah simulate --neutrals
            reference``), ``"model"``: with the shipped photon networks (``--neutrals model``), or a
            photon model's name or directory: photons get rows of ``particles`` and
            the composites above them include them. ``None`` (default): no stage reconstructs
            photons, and a descriptor with one is refused unless it is in ``invisible``.
        probnn: also run the PID chains' ProbNN step (the ``probnn_*`` columns, ntuple ``X_ProbNNk`` ...;
            ``mambah simulate --probnn``; :class:`mambah.pid.stage.PID` ``probnn``); off by default (it
            costs about as much as the rest of the PID chain).
        pid_variations: also draw every track's PID variables once per ensemble member of its
            species' PID chain, with the nominal's noise, into the ``pid_variations`` table
            (:class:`mambah.pid.stage.PID` ``variations``; ``mambah simulate --pid-variations``);
            the nominal PID columns are unchanged. Needs ``pid`` and ``level="reco"``.
        vertexing: add the opt-in Vertexing stage after the composites (``level="reco"`` only;
            :class:`mambah.reconstruction.Vertexing`: track states, decay-vertex fits, IPCHI2,
            FDCHI2, DIRA, MCORR ...): ``True`` or ``"model"`` with the shipped track-state network
            (``trackstate-ref-v1``), ``"reference"`` with the reference detector's track states, or a
            track-state model's name or directory. Default False: the columns stay NaN.
        pileup: with ``vertexing``, the mean number of extra visible pp collisions per event whose
            PVs are fitted with the signal's (``mambah simulate --pileup MU``); None: the LHCb
            Upgrade I value (:data:`mambah.reference.pileup.DEFAULT_PILEUP_MU`, 5.5); 0: none.
        brem: ``"reference"`` (or ``"model"``: the shipped brem networks, or a brem model's name or
            directory): the opt-in Bremsstrahlung stage after the resolution
            (:class:`mambah.reconstruction.Bremsstrahlung`; ``mambah simulate --brem reference|model``): the
            electron tracks lose momentum to bremsstrahlung before the magnet and brem recovery adds
            part of it back (``particles.has_brem_added``, ntuple ``X_HASBREMADDED``), so that
            ``B+ -> K+ e+ e-`` has its radiative tail. ``None`` (default): no brem
            (``has_brem_added`` -1, "not computed"). ``level="reco"`` only.
        track_types: the track types that become tracks (:class:`mambah.reconstruction.Efficiency`
            ``track_types``; default long only; ``("long", "downstream")`` adds the downstream tracks
            of K0S and Lambda daughters decaying after the VELO; ``mambah simulate --track-types``).
        **gun_options: passed to :class:`mambah.generation.ParticleGun` (``pt``, ``eta``, ...).

    Raises:
        DescriptorError: the descriptor is malformed or impossible, or a swap of ``reconstruct_as``
            is bad (a particle not in the descriptor or not a final-state track, an unknown
            hypothesis, a change of charge; the offending piece is marked).
        ConfigurationError: ``level`` is unknown, ``reconstruct_as``, ``vertexing`` or ``brem`` with
            ``level="truth"``, ``pid_variations`` without the PID stage or when no step of the
            descriptor's PID chains has ensemble members (or their K differ), or
            (``level="reco"``) a charged final-state particle of the descriptor is a species the
            efficiency/resolution models (or, with ``pid``, the PID models) do not cover; see
            :func:`check_track_coverage`; or a neutral final-state particle (not a neutrino) that no
            stage reconstructs is not in ``invisible``; see :func:`check_neutral_coverage`.
        ModelDirError: a model the chain needs is missing from ``models_dir``.
    """
    from mambah.errors import ConfigurationError
    from mambah.generation import EtaAcceptance, generator_stages

    if level not in (GENERATOR_LEVEL, "reco"):
        raise ConfigurationError(f"level must be 'truth' or 'reco', not {level!r}")
    if probnn and (level != "reco" or not pid):
        raise ConfigurationError("probnn (--probnn) needs the PID stage: level='reco' with pid=True "
                                 f"(got level={level!r}, pid={pid!r})")
    if pid_variations and (level != "reco" or not pid):
        raise ConfigurationError("pid_variations (--pid-variations) needs the PID stage: level='reco' with pid=True "
                                 f"(got level={level!r}, pid={pid!r})")
    stages = generator_stages(descriptor, charge_conjugate=charge_conjugate,
                              acceptance=EtaAcceptance() if acceptance else None, unweight=unweight, **gun_options)
    hypotheses = ()
    if reconstruct_as:
        from mambah.reconstruction.hypotheses import mass_hypotheses

        if level != "reco":
            raise ConfigurationError(f"reconstruct_as={reconstruct_as!r} needs the reconstruction (level='reco'); "
                                     "a generator-level production has no reconstructed tracks to swap")
        hypotheses = mass_hypotheses(stages[1].parsed, reconstruct_as)
    if vertexing and level != "reco":
        raise ConfigurationError("vertexing=True needs the reconstruction (level='reco'); a generator-level "
                                 "production has no tracks to fit (mambah simulate: --vertexing needs --level reco)")
    if pileup is not None and not vertexing:
        raise ConfigurationError(f"pileup={pileup!r} sets the PVs of the Vertexing stage; it needs vertexing=True "
                                 "(mambah simulate: --pileup needs --vertexing)")
    if brem is not None and level != "reco":
        raise ConfigurationError(f"brem={brem!r} needs the reconstruction (level='reco'); a generator-level "
                                 "production has no tracks")
    if level == "reco":
        from mambah.reconstruction import Composites, Efficiency, Occupancy, Resolution
        from mambah.reconstruction.efficiency import DEFAULT_EFFICIENCY
        from mambah.reconstruction.occupancy import DEFAULT_OCCUPANCY
        from mambah.reconstruction.resolution import DEFAULT_RESOLUTION

        eff_model = _model(models_dir, DEFAULT_EFFICIENCY)
        # reconstruct the species the efficiency model covers (the check below refuses a descriptor
        # whose tracks need others), so that a model trained for fewer species is no error at run time
        eff_species = _model_species(eff_model)[1]
        eff = Efficiency(eff_model, species=tuple(s for s in SPECIES if s in eff_species),
                         track_types=tuple([track_types] if isinstance(track_types, str) else track_types))
        res = Resolution(_model(models_dir, DEFAULT_RESOLUTION))
        pid_species = check_track_coverage(stages[1].parsed, efficiency=eff.model, resolution=res.model,
                                           pid=pid, models_dir=models_dir)
        brem_stages = []
        if brem is not None:
            from mambah.reconstruction.brem import Bremsstrahlung

            brem_stages.append(Bremsstrahlung(model=brem))
        neutral_stages = []
        if neutrals is not None:
            from mambah.reconstruction.neutrals import Neutrals

            neutral_stages.append(Neutrals(model=neutrals))
        seen = tuple(p for st in neutral_stages for p in st.pids)
        invisible = check_neutral_coverage(stages[1].parsed, invisible=invisible, seen=seen)
        stages += [Occupancy(_model(models_dir, DEFAULT_OCCUPANCY)), eff, res, *brem_stages, *neutral_stages,
                   Composites(reconstruct_as=hypotheses, invisible=invisible, neutrals=seen)]
        if vertexing:
            from mambah.reconstruction import Vertexing

            vmodel = "model" if vertexing is True else str(vertexing)
            stages.append(Vertexing(model=vmodel) if pileup is None else Vertexing(model=vmodel, pileup=pileup))
        if pid:
            from mambah.pid.stage import PID

            stages.append(PID(models_dir=None if models_dir is None else str(models_dir), species=pid_species,
                              variations=bool(pid_variations), probnn=bool(probnn)))
    return Pipeline(stages)


def cocktail_pipeline(
    descriptors,
    rates="equal",
    *,
    reconstruct_as=None,
    dec_file: str | os.PathLike | None = None,
    models_dir: str | os.PathLike | None = None,
    level: str = "reco",
    **options,
):
    """A background cocktail: several decay channels in one production, with their relative rates.

    Each batch is split among the channels by a multinomial draw from its seed, each channel's
    events are simulated by its own :func:`standard_pipeline` (own gun, decay chain, swaps), and
    the tables are concatenated; every event's channel is recorded (see
    :class:`~mambah.pipeline.CocktailPipeline`, :meth:`mambah.store.Store.event_channels`, the
    ntuple's ``channel`` branch).

    Args:
        descriptors: one decay descriptor per channel; channel ``i`` is ``descriptors[i]``.
        rates: relative rates, one per channel (normalised; non-negative, finite, not all zero),
            as a sequence or ``"0.5,0.5"``; ``"equal"`` (default) for equal rates; ``"dec"`` for
            the branching fractions of ``dec_file`` (:func:`mambah.generation.cocktail.dec_rates`;
            production fractions of different heads are not included).
        reconstruct_as: mass-hypothesis swaps, each naming its channel: ``"1:K-=pi-"`` or the
            marked form of that channel's descriptor ``"B0 -> ^pi+ pi- : K+"``; or a mapping
            ``{channel index: swap(s)}`` (:func:`mambah.generation.cocktail.route_swaps`).
        dec_file: the ``.dec`` file of ``rates="dec"`` (default: DecayLanguage's DECAY_LHCB.DEC).
        models_dir, level, **options: as :func:`standard_pipeline` (applied to every channel).

    Raises:
        DescriptorError: a bad descriptor or swap; the message names the channel.
        ConfigurationError: rates that do not match the channels (number, negative, NaN, all
            zero), a swap without its channel, or a channel the models cannot simulate (named).

    Example:
        >>> pipe = cocktail_pipeline(["B0 -> K+ pi-", "B0 -> pi+ pi-", "B_s0 -> K+ K-"], [1, 0.5, 0.5],
        ...                          reconstruct_as=["1:pi+=K+", "2:K-=pi-"])   # doctest: +SKIP
    """
    from mambah.errors import ConfigurationError, DescriptorError
    from mambah.generation.cocktail import channels as make_channels
    from mambah.generation.cocktail import dec_rates
    from mambah.pipeline import CocktailPipeline

    # not yet in a cocktail: the channels' tables are concatenated with their row indices shifted, and
    # the reconstructed photons' rows and ntuple branches are not carried through. The Vertexing stage
    # is: it runs inside each channel, and its columns hold values, no row index (vertices.particle
    # and particles.vertex, which it follows, are shifted by concat_batches); so are the PID
    # variations (pid_variations.particle is shifted the same way, and every channel's PID stage has
    # the same plan: the same chains)
    for opt, what in (("neutrals", "reconstructed photons (--neutrals)"),):
        if options.get(opt):
            raise ConfigurationError(f"{what} cannot be combined with a cocktail of channels yet; simulate each "
                                     "channel as its own production")

    if isinstance(descriptors, str):
        descriptors = [descriptors]
    descriptors = list(descriptors)
    if isinstance(rates, str) and rates.strip().lower() == "equal":
        rates = [1.0] * len(descriptors)
    elif isinstance(rates, str) and rates.strip().lower() == "dec":
        make_channels(descriptors, [1.0] * len(descriptors))  # the descriptors first, with the channel named
        rates = dec_rates(descriptors, dec_file)
    chans = make_channels(descriptors, rates, reconstruct_as=reconstruct_as)
    if level != "reco" and any(c.reconstruct_as for c in chans):
        raise ConfigurationError("reconstruct_as needs the reconstruction (level='reco'); a generator-level "
                                 "production has no reconstructed tracks to swap")
    if level == "reco":
        from mambah.reconstruction.hypotheses import mass_hypotheses

        for i, c in enumerate(chans):
            try:
                mass_hypotheses(c.descriptor, c.reconstruct_as)
            except (DescriptorError, ConfigurationError) as exc:
                raise type(exc)(f"channel {i} ({c.descriptor!r}): {exc}") from None
    pipes = []
    for i, c in enumerate(chans):
        try:
            # fixed_shapes: a channel's share of a batch varies from batch to batch; phasespace calls of
            # sizes from a fixed set compile its graph once per size instead of once per batch (seconds)
            pipes.append(standard_pipeline(c.descriptor, models_dir=models_dir, level=level,
                                           reconstruct_as=list(c.reconstruct_as) or None, fixed_shapes=True, **options))
        except (DescriptorError, ConfigurationError) as exc:
            raise type(exc)(f"channel {i} ({c.descriptor!r}): {exc}") from None
    return CocktailPipeline(pipes, [c.fraction for c in chans], labels=[
        {"descriptor": c.descriptor, "rate": c.rate, "reconstruct_as": list(c.reconstruct_as)} for c in chans])


def _written(text: str, pos: int) -> str:
    """The particle name as written in ``text`` at ``pos`` (names may hold balanced parentheses)."""
    depth, end = 0, pos
    while end < len(text):
        ch = text[end]
        if ch.isspace() or ch == "]" or (ch == ")" and depth == 0):
            break
        depth += ch == "("
        depth -= ch == ")"
        end += 1
    return text[pos:end] or text[pos:pos + 1]


def _model_species(model: str) -> tuple[str, list[str]]:
    """(name, species) of an efficiency/resolution model (``"reference"``: the reference detector)."""
    from mambah.modeldir import load_card, resolve_model
    from mambah.reconstruction._common import REFERENCE

    if model == REFERENCE:
        return "the reference detector", list(SPECIES)
    p = resolve_model(model)
    card = load_card(p)
    return str(card.get("name", p.name)), list(card.get("species") or SPECIES)


def check_track_coverage(descriptor, *, efficiency: str, resolution: str, pid: bool = True,
                         models_dir: str | os.PathLike | None = None) -> tuple[str, ...]:
    """Check that every charged final-state particle of ``descriptor`` can be simulated as a track.

    A final-state particle is a leaf of the decay tree (the generator does not decay it). The
    charged ones become tracks: their species must be among those the ``efficiency`` and
    ``resolution`` models were trained for (the ``species`` of their cards) and, with ``pid``,
    have a complete PID chain in ``models_dir``. Neutral leaves are not tracks and are skipped,
    as the efficiency stage skips them.

    Args:
        descriptor: a decay descriptor (string or parsed :class:`~mambah.generation.Descriptor`).
        efficiency, resolution: model names or directories (or ``"reference"``).
        pid: check the PID models too.
        models_dir: where the PID models live (default: the shipped ``models/``).

    Returns:
        The PID species the descriptor's tracks need (``e, mu, pi, K, p`` order).

    Raises:
        ConfigurationError: names each uncovered particle as written in the descriptor (with its
            position), the models that lack it, and the species those models cover.
    """
    from mambah.errors import ConfigurationError
    from mambah.generation import parse_descriptor

    d = parse_descriptor(descriptor)
    eff_name, eff_sp = _model_species(efficiency)
    res_name, res_sp = _model_species(resolution)
    pid_sp: list[str] = []
    if pid:
        from mambah.pid.chain import available_chains

        pid_sp = available_chains(models_dir)
    needed: list[str] = []
    problems: list[str] = []
    seen: set[str] = set()
    pid_only: list[bool] = []
    for node in d.nodes():
        if node.children or node.particle.charge == 0:
            continue
        written = _written(d.text, node.position)
        sp = species_of_pdg(int(node.particle.pid))
        lacking = []
        if sp not in eff_sp:
            lacking.append(f"the efficiency model {eff_name!r} (species {', '.join(eff_sp)})")
        if sp not in res_sp:
            lacking.append(f"the resolution model {res_name!r} (species {', '.join(res_sp)})")
        if pid and sp not in pid_sp:
            where = str(models_dir) if models_dir is not None else "the shipped models"
            lacking.append(f"the PID models pid-<species>-{{flags,muon,rich,global}} in {where} "
                           f"(species {', '.join(pid_sp) or 'none'})")
        if not lacking:
            if sp not in needed:
                needed.append(sp)
            continue
        if written in seen:
            continue
        seen.add(written)
        alias = f"{node.particle.name}, " if written != node.particle.name else ""
        models = ", ".join(lacking[:-1]) + (" and " if len(lacking) > 1 else "") + lacking[-1]
        verb = "does" if len(lacking) == 1 and (sp not in eff_sp or sp not in res_sp) else "do"
        problems.append(f"the final-state particle {written!r} ({alias}PDG id {node.particle.pid}) is charged, so "
                        f"it would be a track, but {models} {verb} not cover it:"
                        f"\n  {d.text}\n  {' ' * node.position}{'^' * len(written)}")
        pid_only.append(len(lacking) == 1 and pid and sp not in pid_sp)
    if problems:
        hint = ("simulate without PID (pid=False; mambah simulate --no-pid), train PID models for it "
                "(examples/train_pid_chain.py), or give it a decay in the descriptor" if all(pid_only) else
                "give it a decay in the descriptor, or simulate the generator level only (level='truth'; "
                "mambah simulate --level truth)")
        raise ConfigurationError(f"cannot reconstruct {str(d)!r}: " + "\n".join(problems) + f"\n{hint}")
    return tuple(s for s in SPECIES if s in needed)


def check_neutral_coverage(descriptor, *, invisible=(), seen=()) -> tuple[int, ...]:
    """Check that no neutral final-state particle of ``descriptor`` would be dropped silently.

    A stable neutral final-state particle (a leaf of the decay tree) that is not a neutrino must
    be reconstructed by some stage (|PDG id| in ``seen``; none is today) or left invisible on
    purpose (in ``invisible``); otherwise the composites above it would lack it without a word.

    Args:
        descriptor: a decay descriptor (string or parsed :class:`~mambah.generation.Descriptor`).
        invisible: particles to leave invisible (names or PDG ids; see
            :func:`mambah.reconstruction.visibility.invisible_pids`).
        seen: |PDG id|s of the neutral particles some stage of the pipeline reconstructs.

    Returns:
        The |PDG id|s to leave invisible, sorted (``invisible`` normalised).

    Raises:
        ConfigurationError: names every such particle as written in the descriptor, each
            occurrence marked, with the two ways out; or an ``invisible`` entry is charged.
        UnknownParticleError: an ``invisible`` name is unknown.
    """
    from mambah.errors import ConfigurationError
    from mambah.generation import parse_descriptor
    from mambah.reconstruction.visibility import invisible_pids, unseen_nodes

    d = parse_descriptor(descriptor)
    pids = invisible_pids(invisible)
    nodes = d.nodes()
    unseen = unseen_nodes(d.tree(), pids, seen)
    if not unseen:
        return pids
    by_name: dict[str, list[int]] = {}
    for k in unseen:
        by_name.setdefault(_written(d.text, nodes[k].position), []).append(k)
    problems = []
    for written, ks in by_name.items():
        p = nodes[ks[0]].particle
        alias = f"{p.name}, " if written != p.name else ""
        marks = [" "] * len(d.text)
        for k in ks:
            pos = nodes[k].position
            marks[pos:pos + len(written)] = "^" * len(written)
        problems.append(f"the final-state particle {written!r} ({alias}PDG id {p.pid}) is neutral and no stage "
                        "reconstructs it, so the candidates above it would silently lack it (their mass would be "
                        f"that of what is left):\n  {d.text}\n  {''.join(marks).rstrip()}")
    names = ",".join(by_name)
    photon = any(abs(int(nodes[k].particle.pid)) == 22 for k in unseen)  # the Neutrals stage's species
    raise ConfigurationError(
        f"cannot reconstruct {str(d)!r}: " + "\n".join(problems)
        + f"\nleave {'it' if len(by_name) == 1 else 'them'} invisible on purpose (invisible=({', '.join(map(repr, by_name))},); "
        f"mambah simulate --invisible {names}): the composites above then have a partial mass, marked by "
        "vertices.n_invisible > 0 (ntuple X_NINVISIBLE); or give it a decay into charged tracks in the descriptor"
        + ("; or reconstruct the photons with the reference calorimeter (neutrals='reference'; mambah simulate "
           "--neutrals reference)" if photon else ""))
