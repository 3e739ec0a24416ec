"""Chained PID models: one chain of models per species, as LHCb's flash simulation.

A chain is an ordered list of steps; each step is a model directory whose conditions are the
track kinematics (``P``, ``ETA``, ``nTracks``, ``charge``) or outputs of earlier steps, evaluated
on the rows selected by its ``applies`` flag: a conditional Cramér GAN
(:mod:`mambah.nn.pidmodel`) or, for Bernoulli flags, an sWeighted classifier
(:mod:`mambah.nn.flags`, card kind ``pid-flags``) whose probability is sampled. The default chain
of a species ``s`` (models ``pid-<s>-flags``, ``pid-<s>-muon``, ``pid-<s>-rich``, optionally
``pid-<s>-tie``, and ``pid-<s>-global``; see ``examples/train_pid_chain.py``):

1. ``flags`` — the classifier of ``isMuon``, ``hasRich`` and ``hasCalo`` (the calorimeter
   acceptance; chains before 2026-11-23 have no ``hasCalo``) given P, ETA, nTracks, charge: a
   Bernoulli draw from P(flag | conditions). (A GAN whose output is thresholded at 0.5 — our first
   chain — got the isMuon efficiency wrong by up to 5.5% in p bins; the probability is what a
   classifier learns directly, from sWeights as well as from labels.)
2. ``muon`` — ``MuonMuLL``, ``MuonBkgLL`` given P, ETA, nTracks, charge, on ``isMuon == 1`` tracks
   (trained with ``--selection "isMuon == 1"``); NaN elsewhere [MUON];
3. ``rich`` — the RICH DLLs given P, ETA, nTracks, charge, on ``hasRich == 1`` tracks
   (trained with ``--selection "hasRich == 1"``; the shipped models are also conditioned on the
   RICH threshold codes, :func:`rich_threshold_codes`); NaN elsewhere (the detector's convention for
   missing information, :mod:`mambah.reference.pid`). The targets are ``RichDLLe``, ``RichDLLmu``,
   ``RichDLLk`` and ``RichDLLpK = RichDLLp - RichDLLk`` (the chain adds ``RichDLLk`` back): below
   the kaon Cherenkov threshold of every radiator a track crosses, neither a kaon nor a proton
   radiates, the two hypotheses have the same likelihood and ``RichDLLp == RichDLLk`` *exactly*
   (18% of the kaons of the reference channel). A network cannot put 18% of its output on a
   line DLLp = DLLk, but it can put it on a point: the quantile preprocessing maps the spike of
   ``RichDLLpK`` at 0 to an interval of its Gaussian, and every output in that interval back to
   exactly 0 (models trained on ``RichDLLp`` directly scored BDT-KS 0.24 against the truth on the
   RICH DLLs alone, the kaon DLLk - DLLp difference being the worst feature);
3b. ``tie`` (optional, used when ``pid-<s>-tie`` exists) — a classifier of ``RichPKTie`` (1 where
   ``RichDLLp == RichDLLk``) on ``hasRich == 1`` tracks. The tie is a threshold effect, a step
   in p; the RICH GAN smears it (for kaons: 85% ties at 5-8 GeV/c instead of 100%, 26% at 10-12
   GeV/c instead of 2%, 7% above 50 GeV/c instead of none), which moves the efficiency of
   ``DLLp - DLLK >= 0`` by up to 21% in a p bin. The chain draws the flag and makes the flagged
   rows exact ties (:meth:`PidChain._match_ties`; the spurious ties above threshold remain).
   The default chains since 2026-11-23 need no tie model: their RICH GANs are conditioned on the
   radiators' threshold codes (:func:`rich_threshold_codes`), and the chain makes the rows with
   ``RichAboveK1 == RichAboveK2 == 0`` (below the kaon threshold of every radiator crossed) exact
   ties, which is where the reference detector has them (closure unchanged within its error, one
   classifier step less per track). Likewise a track outside the angular acceptance of both
   radiators (``RichAcc1 == RichAcc2 == 0``) gets ``hasRich = 0`` whatever the flags classifier
   drew (since 2026-12-03; before, 2.5-9% of those tracks got RICH DLLs);
3c. the RICH steps of pi, K and p carry a **marginal calibration** (:mod:`mambah.nn.marginals`,
   since 2026-12-07): each RICH DLL the GAN draws is mapped, in (P, ETA) bins, through the GAN's
   and the calibration data's quantile functions (PIDCorr-style, ``mambah train marginals``,
   ``examples/fit_pid_marginals.py``: 5 sWeighted samples of 6M candidates per species). The GANs
   got the bulk right but not the tails that mis-ID rates are: pi -> K (``PIDK > 5``) was 1.2%
   against 2.1% in the reference detector at 5-10 GeV/c and 2.1% against 1.4% at 80-100 GeV/c
   (chi2/ndf 391/10 over the p bins of ``examples/misid_table.py --source calib``). The map keeps
   the GAN's ranks (its correlations and its dependence on nTracks and the threshold codes inside a
   bin), and is applied by the model itself, so every path (chain, variations, ``mambah generate``)
   gets it. A step with ensemble members has one map per member, on bootstrap replicas of the
   samples;
4. ``global`` — the part of the combined DLLs that is neither a RICH nor a muon likelihood,
   ``CaloDLLe`` (the calorimeter's electron DLL), given P, ETA, nTracks, charge, on ``hasCalo == 1``
   tracks (0 elsewhere: an absent sub-detector contributes nothing). Chains before 2026-11-23
   generated it for every track, the 0 outside the acceptance included: a spike in the middle of
   the DLL's range, which the GAN put on 4% of the tracks inside the acceptance and missed on 16%
   of those outside (K: BDT-KS of the calorimeter DLL 0.095 against 0.026 for the flagged model);
5. the combined DLLs from the previous outputs by LHCb's combination rule
   (ChargedProtoCombineDLLs; an absent sub-detector contributes 0)::

       PIDe  = RichDLLe  + CaloDLLe
       PIDmu = RichDLLmu + (MuonMuLL - MuonBkgLL if isMuon) [+ MuonVetoDLL, chains before 2026-11-22]
       PIDK  = RichDLLk,  PIDp = RichDLLp

   which is exactly how the reference detector builds them, so the combined DLLs keep the
   correlations with the sub-detector outputs without a network having to learn an identity.

6. ``probnn`` (optional, issue 24; used when ``pid-<s>-probnn`` exists) — the global PID
   classifier's outputs ``ProbNNe, ProbNNmu, ProbNNpi, ProbNNk, ProbNNp, ProbNNghost`` (store
   ``probnn_*``), a conditional Cramér GAN on every track, after the combination, conditioned on
   P, ETA, nTracks, charge, the flags, the combined DLLs, ``CaloDLLe`` (0 outside the calorimeter,
   :data:`ABSENT_AS_ZERO`) and the chain-computed surrogates :data:`PROBNN_SURROGATE` (the reference
   detector's ProbNN network, :mod:`mambah.reference.probnn`, evaluated on what the chain drew, with
   the calorimeter E/p that the chain does not draw replaced by a fixed rule,
   :func:`surrogate_probnn`). The shipped steps are *residual*: their targets are
   :data:`PROBNN_DELTAS` ``dProbNNx = logit(ProbNNx) - logit(SurProbNNx)`` and the chain makes
   ``ProbNNx = sigmoid(logit(SurProbNNx) + dProbNNx)``, so the outputs' fine structure near 0 and 1
   comes from the classifier, and the GAN draws how far the unknown E/p (and the classifier's other
   inputs) move them. (The same GAN with the six ProbNN as direct targets, conditioned on the flags and
   DLLs alone, stalled at a validation BDT-KS of 0.22 for kaons after 8000 steps; with the surrogate
   conditions at 0.19 and a closure BDT-KS of 0.19; the residual step: 0.10.) Closure of the shipped
   steps (2026-12-06, 100k held-out pure-signal tracks, :func:`mambah.validation.closure.probnn_closure`,
   cards' ``metrics.probnn_closure``; again with the retrained muon steps of e, pi, K, p): BDT-KS over
   P, ETA, nTracks, charge and the six ProbNN e 0.073, mu 0.099, pi 0.087, K 0.086, p 0.093; the step
   alone on the truth's own DLLs 0.04-0.09. The ProbNNk > 0.5 and ProbNNp > 0.5 efficiencies in p
   bins: within 1.9% for e, mu, pi; for K off by up to 4.7% (ProbNNk, 5-10 GeV/c; about 3% from the
   step itself, the rest from the RICH DLLs) and for p by 4.3% (ProbNNp, 5-10 GeV/c, from the chain's
   RICH DLLs: the step alone is within 0.5% there). Since 2026-12-07 the kaon step's outputs are
   calibrated (``marginals.npz``: each ``logit(ProbNNx) = logit(SurProbNNx) + dProbNNx`` quantile-mapped
   onto two 6M-candidate calibration samples in (P, ETA, isMuon, hasRich) bins, the logit offsets of
   :mod:`mambah.nn.marginals`): ProbNN BDT-KS 0.053-0.057 and every ProbNNx > 0.5 within 1.8% in every
   p bin on three held-out samples (before 0.075-0.079, ProbNNk 3.0%, ProbNNmu 2.8%); the step alone,
   on the truth's DLLs, within 0.3% (before 3.1%). The proton chain's RICH map (2026-12-07) brought
   its ProbNNp > 0.5 within 0.7% and ProbNNk > 0.5 within 1.2% in the bins known to 1%. A step whose
   targets are the ProbNN themselves is accepted too. With ``--pid-variations`` the ProbNN step runs
   once per ensemble member of the chain (on member k's DLLs; ``pid_variations.probnn_*``). Cost
   (``python benchmarks/pid.py --only chain --tracks 500000``, 2 cores, 2026-12-07, evening):
   476-517k tracks/s with the step against 849-942k without (370-470k with it before the XLA-compiled
   knot search, 3 chains at once and single-threaded BLAS in the stage). Per ProbNN row the GAN costs
   ~0.77 CPU-us (1.1 before XLA), most of it the transforms of its 17 conditions (14 continuous; the
   knot search is an exact grid locator, mambah.nn.inference._Locator, XLA-compiled in full chunks),
   the generator ~0.1 us; the surrogate network and the logits ~0.15 us per track; the kaon step's
   calibration 0.27 us per kaon (all rows through :class:`mambah.nn.knots.KnotTables`
   at once, 2026-12-07; 0.56 us with one numpy.interp per bin and output before). Conditions that are
   cheaper to transform (``mambah train pid --condition-transform affine``: log P, logit(Sur*)) save
   about 12% of the stage's CPU but, at the shipped epochs, trained worse steps (see
   :class:`~mambah.nn.preprocessing.AffineScaler`); a margin above 500k would need them at equal quality, the surrogate
   inside the step's graph.

Sources: LHCb's flash simulation chains the same way (Lamarr, M. Barbetti et al., arXiv:2303.11428:
isMuon classifier -> muon GAN for isMuon tracks -> RICH GAN -> global PID GAN; our global step
learns the parts of the combined DLLs that are not RICH or muon likelihoods, conditioned on the
earlier outputs, and the rule adds them); muon likelihoods
[MUON] F. Archilli et al., JINST 8 (2013) P10020.

Ensemble variations (:meth:`PidChain.generate_variations_columns`; ``mambah simulate
--pid-variations``): member k of a chain is member k of every step whose model has ensemble
members and the nominal model of the other steps, all drawing the nominal's random numbers; steps
with members must agree on K (:func:`chain_members` reads it from the cards).

Build-time checks (:func:`build_chain`): every step's conditions must be produced by the chain's
inputs or by an earlier step, and its targets must be columns the chain knows; otherwise a
:class:`~mambah.errors.ConfigurationError` names the model and the missing column.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
from pathlib import Path

import numpy as np
import pandas as pd

from mambah.errors import ConfigurationError, ModelDirError, closest
from mambah.nn.logit import LOGIT_CLIP, clipped_logit
from mambah.physics import CONDITION_NAMES, PID_COLUMNS, SPECIES, SPECIES_PDG, lhcb_name, species_mass, store_name

__all__ = ["ChainStep", "PidChain", "build_chain", "default_chain_steps", "prepare_training_table",
           "CHAIN_INPUTS", "CHAIN_OUTPUTS", "DEFAULT_SPECIES", "load_chain", "available_chains",
           "combine", "ROLES", "load_step_model", "STEP_KINDS", "THRESHOLD_CODES",
           "rich_threshold_codes", "chain_members", "RICH_YIELDS", "rich_yields", "PROBNN_OUTPUTS", "PROBNN_TARGETS", "PROBNN_CONDITIONS",
           "PROBNN_SURROGATE", "surrogate_probnn", "PROBNN_DELTAS",
           "probnn_deltas", "probnn_from_deltas", "LOGIT_CLIP"]

log = logging.getLogger(__name__)

#: Inputs of every chain (calibration-sample names, :data:`mambah.physics.CONDITION_NAMES`) and the
#: store quantity they come from (``{"P": "p", "ETA": "eta", "nTracks": "n_tracks", "charge": "charge"}``).
CHAIN_INPUTS: dict[str, str] = {n: store_name(n) for n in CONDITION_NAMES}
#: Outputs of a chain: calibration-sample column -> store PID column, in the order of
#: :data:`mambah.physics.PID_COLUMNS` (``RichDLLe -> rich_dll_e``, ..., ``PIDp -> pid_p``).
CHAIN_OUTPUTS: dict[str, str] = {lhcb_name(c): c for c in PID_COLUMNS}
#: Functions of the chain inputs that a step may take as conditions (computed by the chain from P and
#: ETA): for each gas radiator j = 1, 2 of the reference detector's RICHes, 1 when the track is in its
#: acceptance (``RichAcc<j>``) and, for ``RichAbove<h><j>``, also above the Cherenkov threshold of
#: the hypothesis h = mu, pi, K, p there (LHCb's RichPID records the like: ``RichAboveKaThres`` ...).
#: See :func:`rich_threshold_codes`.
THRESHOLD_CODES = tuple(f"Rich{k}{j}" for j in (1, 2) for k in ("Acc", "AboveMu", "AbovePi", "AboveK", "AboveP"))
#: Continuous companions of the threshold codes (see :func:`rich_yields`): for each gas radiator j and
#: hypothesis h, the photon yield of h's ring relative to a saturated ring, 0 below the threshold.
RICH_YIELDS = tuple(f"RichYield{k}{j}" for j in (1, 2) for k in ("Mu", "Pi", "K", "P"))
#: Targets of the optional ``probnn`` step (issue 24): the reference detector's ProbNN
#: (:mod:`mambah.reference.probnn`) as the chain draws it -> the store column.
PROBNN_OUTPUTS: dict[str, str] = {lhcb_name(c): c for c in
                                  ("probnn_e", "probnn_mu", "probnn_pi", "probnn_k", "probnn_p", "probnn_ghost")}
PROBNN_TARGETS: tuple[str, ...] = tuple(PROBNN_OUTPUTS)
#: conditions of the shipped ``probnn`` steps besides the chain inputs: the flags, the combined DLLs
#: (finite on every track: an absent sub-detector contributes 0) and the calorimeter DLL (0 outside the
#: acceptance), all drawn by the earlier steps
PROBNN_CONDITIONS: tuple[str, ...] = ("isMuon", "hasRich", "hasCalo", "PIDe", "PIDmu", "PIDK", "PIDp", "CaloDLLe",
                                      *(f"Sur{t}" for t in PROBNN_TARGETS))
#: Chain-computed conditions of a ``probnn`` step (issue 24): the reference detector's ProbNN network
#: (:mod:`mambah.reference.probnn`, a fixed and known function, as LHCb's ANNPID tunes are) evaluated
#: on what the chain has drawn, with the one input the chain does not draw, the calorimeter's E/p,
#: replaced by :data:`SURROGATE_EOVERP` (see :func:`surrogate_probnn`). They summarise the DLLs the way
#: the classifier reads them, so that the GAN learns ProbNN given a feature close to it (and the
#: spread that the unknown E/p and the classifier's other details give), instead of rebuilding the
#: classifier from the DLLs.
PROBNN_SURROGATE: tuple[str, ...] = tuple(f"Sur{t}" for t in PROBNN_TARGETS)
#: Targets of a *residual* ``probnn`` step: ``dProbNNx = logit(ProbNNx) - logit(SurProbNNx)`` (logits of
#: values clipped to [LOGIT_CLIP, 1 - LOGIT_CLIP], :mod:`mambah.nn.logit`); the chain makes ``ProbNNx =
#: sigmoid(logit(SurProbNNx) + dProbNNx)``. The fine structure of the outputs near 0 and 1 (where a
#: classifier-based test splits as easily as at 0.5) then comes from the surrogate, and the GAN learns
#: how far the unknown E/p and the other details move each output (0 for most tracks: a spike at 0,
#: which the quantile preprocessing restores exactly).
PROBNN_DELTAS: tuple[str, ...] = tuple(f"d{t}" for t in PROBNN_TARGETS)
#: E/p given to the network by :func:`surrogate_probnn` inside the calorimeter acceptance: an
#: electron's (1) where the calorimeter DLL favours an electron (CaloDLLe > 0), a hadron shower's
#: mean (the reference Beta(2, 4.5): 0.31) elsewhere.
SURROGATE_EOVERP = (1.0, 2.0 / 6.5)
#: Columns that a step taking them as conditions sees as 0 where the chain has NaN (the sub-detector
#: is absent): ``CaloDLLe`` outside the calorimeter acceptance, as in the training tables
#: (:func:`prepare_training_table`) and the combination rule.
ABSENT_AS_ZERO = frozenset({"CaloDLLe"})
#: Intermediate columns a step may produce besides the outputs.
INTERMEDIATE = ("hasRich", "hasCalo", "CaloDLLe", "MuonVetoDLL", "RichDLLpK", "RichPKTie", *PROBNN_DELTAS)
#: Outputs a chain may derive from intermediate columns: output -> (base, difference) (output = base + difference).
DERIVED = {"RichDLLp": ("RichDLLk", "RichDLLpK")}
#: Columns that are Bernoulli flags: the generated value is thresholded at 0.5 to 0/1.
FLAGS = ("isMuon", "hasRich", "hasCalo", "RichPKTie")
#: Species with a default chain: every trackable species (:data:`mambah.physics.SPECIES`).
DEFAULT_SPECIES: tuple[str, ...] = SPECIES


@dataclasses.dataclass(frozen=True)
class ChainStep:
    """One step of a chain.

    Attributes:
        role: ``"flags"``, ``"muon"``, ``"rich"`` or ``"global"`` (model names ``pid-<species>-<role>``).
        model: model name under ``models/`` or a model directory.
        applies: a flag column that must be 1 for the step to be evaluated (``None``: every track);
            elsewhere its targets are NaN (the detector's convention for missing information).
    """

    role: str
    model: str
    applies: str | None = None


#: Roles of the default chain, in order (every species with a chain has them; the optional ``tie``
#: and ``probnn`` steps run where their models exist).
ROLES = ("flags", "muon", "rich", "global")
#: The combined DLLs (:func:`combine`): a step may take them as conditions once the chain has drawn
#: their parts (the ``probnn`` step does); the chain combines them before such a step.
COMBINED = ("PIDe", "PIDmu", "PIDK", "PIDp")
#: What :func:`combine` reads.
_COMBINE_NEEDS = frozenset({"isMuon", "MuonMuLL", "MuonBkgLL", "RichDLLe", "RichDLLmu", "RichDLLk", "RichDLLp",
                            "CaloDLLe"})
#: What :func:`surrogate_probnn` reads besides the chain inputs.
_SURROGATE_NEEDS = _COMBINE_NEEDS | {"hasRich", "hasCalo"}


def default_chain_steps(species: str, models_dir: str | os.PathLike | None = None) -> list[ChainStep]:
    """The default chain of ``species``: models ``pid-<species>-{flags,muon,rich,global}`` and
    ``pid-<species>-tie`` after ``rich`` when that model exists. The ``global`` step runs where the
    flag of its training selection is 1 (``hasCalo`` for a model trained with ``--selection
    "hasCalo == 1"``), on every track otherwise (chains before 2026-11-23)."""
    def m(role):
        name = f"pid-{species}-{role}"
        return name if models_dir is None else str(Path(models_dir) / name)

    base = _models_base(models_dir)
    steps = [ChainStep("flags", m("flags")), ChainStep("muon", m("muon"), "isMuon"),
             ChainStep("rich", m("rich"), "hasRich"),
             ChainStep("global", m("global"), _selection_flag(base / f"pid-{species}-global"))]
    if (base / f"pid-{species}-tie" / "card.json").exists():
        steps.insert(3, ChainStep("tie", m("tie"), "hasRich"))
    if (base / f"pid-{species}-probnn" / "card.json").exists():  # optional: ProbNN (issue 24)
        steps.append(ChainStep("probnn", m("probnn"), _selection_flag(base / f"pid-{species}-probnn")))
    return steps


def _selection_flag(path: Path) -> str | None:
    """The flag a model was trained on (``"hasCalo"`` for ``--selection "hasCalo == 1"``), else None.

    Read from the card's ``training_data.selection``. No selection (none recorded, or empty) gives
    None: the step runs on every track (chains before 2026-11-23). A model directory that does not
    exist (yet) or whose card cannot be read also gives None, and :func:`build_chain` reports the
    problem itself.

    Raises:
        ModelDirError: the selection is anything else than ``<flag> == 1`` with a flag the chain
            produces (:data:`FLAGS`): the chain could not apply it, and running the step on every
            track instead would be silently wrong. The message names the card and the selection.
    """
    import json
    import re

    try:
        td = json.loads((path / "card.json").read_text()).get("training_data", {})
    except (OSError, ValueError, AttributeError):
        return None
    sel = td.get("selection") if isinstance(td, dict) else None
    if sel is None or (isinstance(sel, str) and not sel.strip()):
        return None
    m = re.fullmatch(r"\s*(\w+)\s*==\s*1(\.0*)?\s*", sel) if isinstance(sel, str) else None
    if m is None or m.group(1) not in FLAGS:
        raise ModelDirError(
            f"{str(path / 'card.json')!r}: training_data.selection is {sel!r}; a PID chain step can only be "
            f"restricted to the rows where one of its flags is 1 ('<flag> == 1' with a flag in {', '.join(FLAGS)}). "
            "Retrain the model with such a --selection, or remove the selection from the card to run the step "
            "on every track")
    return m.group(1)


#: card kinds a chain step may have: a GAN or a classifier of flags
STEP_KINDS = ("pid", "pid-flags")


def load_step_model(path: str | os.PathLike):
    """Load one chain step's model directory through the registry
    (:func:`mambah.nn.registry.load_model`, cached by path and content hash): a classifier (card
    kind ``pid-flags``, :class:`~mambah.nn.flags.FlagModel`) or a GAN (``pid``,
    :class:`~mambah.nn.pidmodel.PidModel`)."""
    from mambah.nn.registry import load_model

    m = load_model(path)
    if m.kind not in STEP_KINDS:
        raise ModelDirError(f"{str(path)!r} holds a {m.kind!r} model, not a PID chain step "
                            f"({' or '.join(map(repr, STEP_KINDS))})")
    return m


def prepare_training_table(df: pd.DataFrame, *, fill_ties=None) -> pd.DataFrame:
    """Add the chain's intermediate columns to a calibration table (see the module docstring).

    ``hasRich`` becomes 0/1 (float), ``hasCalo`` is 1 where ``EcalPIDe`` is finite (the calorimeter
    acceptance; a ``hasCalo`` column is kept), ``CaloDLLe = EcalPIDe`` (or ``PIDe - RichDLLe`` without it) and
    ``MuonVetoDLL = PIDmu - RichDLLmu - (MuonMuLL - MuonBkgLL)`` (0 with the reference detector since
    2026-11-22) with absent (NaN) parts as 0, which inverts the combination rule exactly; ``RichDLLpK = RichDLLp - RichDLLk`` (NaN without
    RICH information) and ``RichPKTie = 1.0`` where ``RichDLLpK == 0`` (0 without RICH information).

    Args:
        fill_ties: a seed (or numpy Generator) to train a RICH GAN *without* the spike of
            ``RichDLLpK`` at 0: on the RICH rows below the kaon threshold of every radiator crossed
            (``RichAboveK1 == RichAboveK2 == 0``, where the chain makes the exact ties itself),
            ``RichDLLpK`` is replaced by the value of a random other RICH row above a kaon
            threshold. The quantile preprocessing maps a spike to an interval of the generator's
            Gaussian that every output passes through, so a GAN trained with the spike puts
            spurious exact ties above the threshold too (kaons at 10-12 GeV/c: 20% against 1.7%
            in the truth, which moved the DLLp - DLLK > 0 efficiency by 4-9%); the filled rows'
            values are never used (the chain sets them to 0). ``RichPKTie`` keeps the true ties.
            ``None`` (default): the table as measured.
    """
    out = df.copy()
    z = lambda c: np.nan_to_num(out[c].to_numpy(dtype=float), nan=0.0)  # noqa: E731
    out["hasRich"] = out["hasRich"].to_numpy().astype(float) if "hasRich" in out else \
        np.isfinite(out["RichDLLk"].to_numpy(dtype=float)).astype(float)
    if "hasCalo" in out:
        out["hasCalo"] = out["hasCalo"].to_numpy().astype(float)
    elif "EcalPIDe" in out:  # NaN outside the calorimeter acceptance (the detector's convention)
        out["hasCalo"] = np.isfinite(out["EcalPIDe"].to_numpy(dtype=float)).astype(float)
    # the sub-detector's own column when the sample has it (exact: the difference of two float32
    # numbers smears the spikes of the clipped calorimeter DLL at +-15 over several float values)
    out["CaloDLLe"] = (z("EcalPIDe") if "EcalPIDe" in out else
                       out["PIDe"].to_numpy(dtype=float) - z("RichDLLe")).astype(np.float32)
    out["MuonVetoDLL"] = (out["PIDmu"].to_numpy(dtype=float) - z("RichDLLmu")
                          - (z("MuonMuLL") - z("MuonBkgLL"))).astype(np.float32)
    out["RichDLLpK"] = (out["RichDLLp"].to_numpy(dtype=np.float32) - out["RichDLLk"].to_numpy(dtype=np.float32))
    out["RichPKTie"] = (out["RichDLLpK"].to_numpy() == 0).astype(float)  # 0 without RICH information
    out["charge"] = out["charge"].astype(float)
    for k, v in rich_threshold_codes(out["P"].to_numpy(), out["ETA"].to_numpy()).items():
        out[k] = v
    for k, v in rich_yields(out["P"].to_numpy(), out["ETA"].to_numpy()).items():
        out[k] = v
    if "hasCalo" in out and {"P", "ETA", "nTracks"} <= set(out.columns):  # the probnn step's conditions
        cols = {c: out[c].to_numpy(dtype=float) for c in (*_SURROGATE_NEEDS, "P", "ETA", "nTracks")}
        cols["hasRich"] = out["hasRich"].to_numpy(dtype=float)
        out = out.assign(**surrogate_probnn(cols))
        if all(t in out for t in PROBNN_TARGETS):
            out = out.assign(**probnn_deltas(out))
    if fill_ties is not None:
        from mambah.random import get_rng

        pk = out["RichDLLpK"].to_numpy().copy()
        rich = out["hasRich"].to_numpy() > 0.5
        below = rich & (out["RichAboveK1"].to_numpy() + out["RichAboveK2"].to_numpy() == 0)
        donors = np.nonzero(rich & ~below)[0]
        if below.any() and len(donors):
            pk[below] = pk[get_rng(fill_ties).choice(donors, int(below.sum()))]
            out["RichDLLpK"] = pk
    return out


def rich_threshold_codes(p: np.ndarray, eta: np.ndarray) -> dict[str, np.ndarray]:
    """The :data:`THRESHOLD_CODES` (0/1) of tracks of momentum ``p`` [MeV/c] and pseudorapidity ``eta``.

    For each radiator j of the reference detector's RICHes (:data:`mambah.reference.pid.RICH1`,
    ``RICH2``: angular acceptance and refractive index), ``RichAcc<j>`` is 1 in the radiator's
    acceptance, and ``RichAbove<h><j>`` is 1 when p is also above the hypothesis h's Cherenkov
    threshold m_h / sqrt(n^2 - 1) there. The RICH response is a step at each of these edges (below a
    radiator's kaon threshold K and p radiate nothing there, and RichDLLp == RichDLLk exactly below
    every kaon threshold); a generator conditioned on P and ETA alone smooths the steps, one
    conditioned on the codes does not have to learn where they are (the RICH DLLs alone against the
    truth, 100k tracks: BDT-KS K 0.102 and p 0.105 with the codes, 0.111 and 0.126 without, same
    networks, 2026-11-23; one 0-3 code per hypothesis instead of the 0/1 columns did no better than
    none). A user's own detector needs its own codes (thresholds and acceptances are known
    constants).
    """
    from mambah.reference.pid import RICH1, RICH2

    p, eta = np.asarray(p, dtype=float), np.asarray(eta, dtype=float)
    out = {}
    for j, rad in ((1, RICH1), (2, RICH2)):
        acc = rad.in_acceptance(eta)
        out[f"RichAcc{j}"] = acc.astype(float)
        for name, sp in (("Mu", "mu"), ("Pi", "pi"), ("K", "K"), ("P", "p")):
            out[f"RichAbove{name}{j}"] = (acc & (p > rad.threshold(species_mass(sp)))).astype(float)
    return {k: out[k] for k in THRESHOLD_CODES}


def rich_yields(p: np.ndarray, eta: np.ndarray) -> dict[str, np.ndarray]:
    """The :data:`RICH_YIELDS` of tracks of momentum ``p`` [MeV/c] and pseudorapidity ``eta``.

    ``RichYield<h><j>`` = ``RichAcc<j> * max(0, 1 - (p_th / p)^2)`` with ``p_th = m_h / sqrt(n^2 - 1)``
    the threshold of hypothesis h in radiator j: that is sin^2(theta_h) / sin^2(theta_max), the
    Cherenkov photon yield of h's ring (proportional to sin^2 theta) relative to that of a saturated
    ring (beta = 1), the quantity the ring's likelihood grows with just above a threshold (where the
    0/1 codes only say that it is above). It is 0 exactly where the code ``RichAbove<h><j>`` is 0, so a
    step conditioned on both sees the step at the threshold and the rise after it.
    """
    from mambah.reference.pid import RICH1, RICH2

    p, eta = np.asarray(p, dtype=float), np.asarray(eta, dtype=float)
    out = {}
    with np.errstate(divide="ignore", invalid="ignore"):
        for j, rad in ((1, RICH1), (2, RICH2)):
            acc = rad.in_acceptance(eta)
            for name, sp in (("Mu", "mu"), ("Pi", "pi"), ("K", "K"), ("P", "p")):
                y = 1.0 - (rad.threshold(species_mass(sp)) / p) ** 2
                out[f"RichYield{name}{j}"] = np.where(acc & (p > 0), np.clip(y, 0.0, 1.0), 0.0)
    return {k: out[k] for k in RICH_YIELDS}


def surrogate_probnn(cols: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """:data:`PROBNN_SURROGATE`: the reference ProbNN network on the chain's columns (``P``, ``ETA``,
    ``nTracks``, ``hasRich``, the RICH DLLs, ``isMuon``, ``MuonMuLL``, ``MuonBkgLL``, ``hasCalo``,
    ``CaloDLLe``; NaN or, for ``CaloDLLe``, anything outside the calorimeter acceptance = absent),
    the muon acceptance from ETA, and E/p = :data:`SURROGATE_EOVERP` (1 where CaloDLLe > 0, else
    0.31) inside the calorimeter acceptance. Deterministic; the same function on a calibration table
    (:func:`prepare_training_table`) and in the chain."""
    from mambah.reference.pid import MuonSystem
    from mambah.reference.probnn import PROBNN_NAMES, load_probnn, probnn_features

    f = lambda c: np.asarray(cols[c], dtype=float)  # noqa: E731
    eta = f("ETA")
    calo = f("hasCalo") > 0.5
    dll = np.where(calo, np.nan_to_num(f("CaloDLLe"), nan=0.0), np.nan)
    ep = np.where(calo, np.where(dll > 0, SURROGATE_EOVERP[0], SURROGATE_EOVERP[1]), np.nan)
    resp = {"rich_dll_e": f("RichDLLe"), "rich_dll_mu": f("RichDLLmu"), "rich_dll_k": f("RichDLLk"),
            "rich_dll_p": f("RichDLLp"), "is_muon": f("isMuon"), "muon_mu_ll": f("MuonMuLL"),
            "muon_bkg_ll": f("MuonBkgLL"), "has_rich": f("hasRich"),
            "in_muon_acceptance": MuonSystem().in_acceptance(eta).astype(float),
            "in_calo_acceptance": calo.astype(float), "calo_e_over_p": ep, "calo_dll_e": dll}
    v = load_probnn().probabilities32(probnn_features(f("P"), eta, f("nTracks"), resp))
    return {f"Sur{lhcb}": v[:, j].astype(float) for j, lhcb in enumerate(PROBNN_NAMES.values())}


_logit = clipped_logit


def probnn_deltas(table) -> dict[str, np.ndarray]:
    """:data:`PROBNN_DELTAS` of a table with the ProbNN and surrogate columns."""
    return {f"d{t}": (_logit(table[t]) - _logit(table[f"Sur{t}"])) for t in PROBNN_TARGETS}


def probnn_from_deltas(cols: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``ProbNNx = sigmoid(logit(SurProbNNx) + dProbNNx)`` (NaN where the delta is NaN)."""
    return {t: 1.0 / (1.0 + np.exp(-(_logit(cols[f"Sur{t}"]) + cols[f"d{t}"]))) for t in PROBNN_TARGETS}


def combine(cols: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The combined DLLs from the sub-detector outputs (LHCb's combination rule, absent -> 0)."""
    z = lambda c: np.nan_to_num(cols[c], nan=0.0)  # noqa: E731
    mu_ll = np.where(cols["isMuon"] > 0.5, z("MuonMuLL") - z("MuonBkgLL"), 0.0)
    return {"PIDe": z("RichDLLe") + z("CaloDLLe"),
            "PIDmu": z("RichDLLmu") + mu_ll + (cols["MuonVetoDLL"] if "MuonVetoDLL" in cols else 0.0),
            "PIDK": z("RichDLLk"), "PIDp": z("RichDLLp")}


class PidChain:
    """A built chain of loaded step models (:class:`~mambah.nn.pidmodel.PidModel`,
    :class:`~mambah.nn.flags.FlagModel`) for one species.

    Use :func:`build_chain`; ``generate(conditions, rng)`` returns all :data:`CHAIN_OUTPUTS`.
    """

    def __init__(self, species: str, steps: list[ChainStep], models: list, paths: list[Path]):
        self.species, self.steps, self.models, self.paths = species, steps, models, paths

    def __repr__(self) -> str:
        return f"PidChain({self.species!r}, {[m.card.get('name') for m in self.models]})"

    def model_versions(self) -> dict[str, dict[str, str]]:
        """``{name: {"version", "hash"}}`` of the chain's models (what a production records)."""
        from mambah.modeldir import model_hash

        return {str(m.card.get("name", p.name)): {"version": str(m.card.get("version", "")), "hash": model_hash(p)}
                for m, p in zip(self.models, self.paths)}

    def model_dirs(self) -> dict[str, Path]:
        """``{name: directory}`` of the chain's models (what the store's ``models`` table records)."""
        return {str(m.card.get("name", p.name)): Path(p) for m, p in zip(self.models, self.paths)}

    def training_ranges(self) -> dict[str, tuple[float, float]]:
        """Training range of each chain input (the first step's, the widest-trained)."""
        m = self.models[0]
        lo, hi = m.cond_pre.range_()
        return {c: (float(lo[j]), float(hi[j])) for j, c in enumerate(m.conditions) if c in CHAIN_INPUTS}

    def generate(self, inputs: pd.DataFrame | dict, rng: np.random.Generator, chunk: int | None = None,
                 extra: tuple[str, ...] = ()) -> pd.DataFrame:
        """All chain outputs for the rows of ``inputs`` (columns P [MeV/c], ETA, nTracks, charge).

        Args:
            inputs: the chain inputs, one row per track.
            rng: numpy Generator (noise of every step drawn from it, in step order).
            extra: intermediate columns to return as well (e.g. the flags ``hasRich``, ``hasCalo``).
        Returns:
            DataFrame with the :data:`CHAIN_OUTPUTS` columns (float32, NaN where a step does not apply)
            and the ``extra`` columns the chain produced.
        """
        return pd.DataFrame(self.generate_columns(inputs, rng, chunk, extra))

    def generate_columns(self, inputs: pd.DataFrame | dict, rng: np.random.Generator, chunk: int | None = None,
                         extra: tuple[str, ...] = (), counts: dict | None = None) -> dict[str, np.ndarray]:
        """:meth:`generate` as a dict of float32 arrays (no DataFrame built: the PID stage's path).

        Args:
            counts: if given, filled with ``{model name:}`` :class:`~mambah.nn.model.RangeCounts`
                (rows outside its training range, rows evaluated, per condition) for every step, and
                the models do not warn: the caller reports (what the PID stage does, once per model
                and production). ``None``: every step's model warns itself
                (:class:`~mambah.errors.OutOfRangeWarning`) when rows lie outside its range.
        """
        return self._generate(inputs, rng, chunk, extra, counts, 0)[0]

    # ------------------------------------------------------------------------------ variations
    def member_counts(self) -> dict[str, int]:
        """``{model name: K}`` of the steps whose model has ensemble members (``{}``: none has)."""
        return {_model_name(m, step): int(m.n_members) for step, m in zip(self.steps, self.models)
                if getattr(m, "n_members", 0)}

    def n_members(self) -> int:
        """The number K of ensemble members of the chain: that of every step with members (0: none has).

        Raises:
            ConfigurationError: steps have different numbers of members (member k of the chain is
                member k of every step that has members, so they must agree).
        """
        return _common_k(self.species, self.member_counts())

    def generate_variations_columns(self, inputs: pd.DataFrame | dict, rng: np.random.Generator,
                                    chunk: int | None = None, extra: tuple[str, ...] = (),
                                    counts: dict | None = None) -> list[dict[str, np.ndarray]]:
        """:meth:`generate_columns` of the nominal chain and of each of its K ensemble members.

        Member k of the chain is member k of every step whose model has members and the nominal
        model of the other steps; a step conditioned on (or applied where) outputs of a varied
        step varies too. Every member draws **the nominal's random numbers**: the same Gaussian
        noise of each GAN step and the same uniforms of each flag draw, replayed from the state
        ``rng`` had before the nominal drew them, so the spread between members is the models',
        not the sampler's. (When a varied flag selects other rows for a later step, that step's
        noise is the same sequence over other rows.) A step with members whose conditions do not
        vary evaluates the K + 1 generators on one condition transform and one noise
        (:meth:`~mambah.nn.pidmodel.PidModel.generate_variations_array`); the members of a step
        whose conditions vary are evaluated one by one on their own conditions
        (:meth:`~mambah.nn.pidmodel.PidModel.generate_member_array`).

        Returns:
            K + 1 dicts: ``[0]`` is bit for bit what :meth:`generate_columns` returns for the same
            ``rng`` state (and ``rng`` is left in the same state), ``[k]`` member k.

        Raises:
            ConfigurationError: no step has members, or steps have different numbers of members
                (names the steps).
        """
        k = self.n_members()
        if not k:
            raise ConfigurationError(
                f"PID chain of {self.species!r} has no ensemble members in any step "
                f"({', '.join(_model_name(m, s) for s, m in zip(self.steps, self.models))}), so it has no "
                "variations; train a step with mambah train pid ... --ensemble K")
        return self._generate(inputs, rng, chunk, extra, counts, k)

    def _generate(self, inputs, rng, chunk, extra, counts, n_var: int) -> list[dict[str, np.ndarray]]:
        """The nominal chain and ``n_var`` member lanes (see :meth:`generate_variations_columns`)."""
        cols: dict[str, np.ndarray] = {c: np.asarray(inputs[c], dtype=float) for c in CHAIN_INPUTS}
        n = len(cols["P"])
        if any(c in THRESHOLD_CODES for m in self.models for c in m.conditions):
            cols.update(rich_threshold_codes(cols["P"], cols["ETA"]))
        if any(c in RICH_YIELDS for m in self.models for c in m.conditions):
            cols.update(rich_yields(cols["P"], cols["ETA"]))
        lanes = [cols] + [dict(cols) for _ in range(n_var)]
        # columns of each member lane that differ from the nominal's (the others share its arrays)
        varied: list[set[str]] = [set() for _ in lanes]
        for step, m in zip(self.steps, self.models):
            needs = (*m.conditions, *(f"Sur{t[1:]}" for t in m.targets if t in PROBNN_DELTAS))
            derived = [(names, fn) for names, fn in ((COMBINED, combine), (PROBNN_SURROGATE, surrogate_probnn))
                       if any(c in names and c not in cols for c in needs)]
            for names, fn in derived:  # e.g. the probnn step
                for k, lane in enumerate(lanes):
                    lane.update(fn(lane))
                    if k:  # a member lane's derived columns vary where their parts do
                        for c in names:
                            if np.array_equal(lane[c], cols[c], equal_nan=True):
                                lane[c] = cols[c]
                            else:
                                varied[k].add(c)
            has_members = bool(n_var and getattr(m, "n_members", 0))
            deps = set(m.conditions) | ({step.applies} if step.applies is not None else set())
            own = [k for k in range(1, n_var + 1) if deps & varied[k]]  # lanes with conditions of their own
            state = rng.bit_generator.state if (own or has_members) else None
            sel = self._selection(step, cols, n)
            if has_members and not own:  # one condition transform and one noise for the K + 1 generators
                outs = self._evaluate(m, step, cols, sel, rng, chunk, counts, variations=True)
                lane_out = {k: (outs[k], sel) for k in range(1, n_var + 1)}
                nominal = outs[0]
            else:
                nominal = self._evaluate(m, step, cols, sel, rng, chunk, counts)
                lane_out = {}
                for k in range(1, n_var + 1):
                    if has_members or k in own:
                        replay = np.random.Generator(type(rng.bit_generator)())
                        replay.bit_generator.state = state
                        lsel = self._selection(step, lanes[k], n)
                        lane_out[k] = (self._evaluate(m, step, lanes[k], lsel, replay, chunk, None, quiet=True,
                                                      member=k if has_members else None), lsel)
            before = {c: id(v) for c, v in cols.items()}
            self._apply(step, m, cols, nominal, sel)
            written = [c for c, v in cols.items() if before.get(c) != id(v)]
            for k in range(1, n_var + 1):
                if k in lane_out:  # its own outputs: what they touch varies
                    self._apply(step, m, lanes[k], *lane_out[k])
                    varied[k].update(written)
                elif not varied[k] & _POST_READS:  # the nominal's outputs, post-processed alike: shared
                    for c in written:
                        lanes[k][c] = cols[c]
                        varied[k].discard(c)
                else:  # the nominal's outputs post-processed with varied columns (e.g. ties, derived DLLs)
                    self._apply(step, m, lanes[k], nominal, sel)
                    for c in written:
                        a, b = lanes[k][c], cols[c]
                        if a.shape == b.shape and np.array_equal(a, b, equal_nan=True):
                            lanes[k][c] = b
                            varied[k].discard(c)
                        else:
                            varied[k].add(c)
        out = []
        for lane in lanes:
            lane.update(combine(lane))
            out.append({c: lane[c].astype(np.float32) for c in (*CHAIN_OUTPUTS, *PROBNN_OUTPUTS, *extra) if c in lane})
        return out

    @staticmethod
    def _selection(step: ChainStep, cols: dict[str, np.ndarray], n: int) -> np.ndarray:
        return np.ones(n, bool) if step.applies is None else cols[step.applies] > 0.5

    @staticmethod
    def _evaluate(m, step: ChainStep, cols, sel, rng, chunk, counts, *, variations: bool = False,
                  member: int | None = None, quiet: bool = False) -> np.ndarray:
        """One step's raw outputs ``(n, n_targets)`` (NaN where it does not apply), or with
        ``variations`` those of the nominal and every member ``(K + 1, n, n_targets)``; ``member``:
        member k's alone. ``counts`` (a dict) receives the step's range counts (``None``: the model
        warns itself, unless ``quiet``: a member lane, whose range the nominal has reported)."""
        n = len(sel)
        lead = (1 + m.n_members,) if variations else ()
        out = np.full((*lead, n, len(m.targets)), np.nan)
        if counts is not None:
            counts[_model_name(m, step)] = _no_rows(m, step)
        if sel.any():
            # the selected rows' conditions, stacked once (not all rows stacked, then selected)
            every = sel.all()
            cs = np.column_stack([cols[k] if every else cols[k][sel] for k in m.conditions])
            absent = [j for j, k in enumerate(m.conditions) if k in ABSENT_AS_ZERO]
            if absent:  # (a copy: column_stack never shares the chain's arrays)
                cs[:, absent] = np.nan_to_num(cs[:, absent], nan=0.0)
            # the models warn themselves unless the caller takes the counts, which the compiled
            # graphs count in the same pass (no second pass over the conditions)
            sink: list | None = [] if counts is not None or quiet else None
            if hasattr(m, "sample"):  # a classifier of flags: Bernoulli draws (compiled)
                if variations:  # the nominal and the members on the same uniforms
                    out[:, sel] = m.sample_variations(cs, rng, counts=sink)
                elif member is not None:
                    out[sel] = m.sample_member(member, cs, rng, counts=sink)
                else:
                    out[sel] = m.sample(cs, rng, counts=sink)
            elif variations:  # the nominal GAN and its members on one transform and one noise
                out[:, sel] = m.generate_variations_array(cs, rng, chunk=chunk, counts=sink)
            elif member is not None:
                out[sel] = m.generate_member_array(member, cs, rng, chunk=chunk, counts=sink)
            else:  # a GAN: compiled inference (mambah.nn.inference)
                out[sel] = m.generate_array(cs, rng, chunk=chunk, counts=sink)
            if counts is not None:
                counts[_model_name(m, step)] = sink[0]
        return out

    def _apply(self, step: ChainStep, m, cols: dict[str, np.ndarray], out: np.ndarray, sel: np.ndarray) -> None:
        """Put a step's raw outputs into ``cols`` (flags thresholded, the RICH acceptance and the exact
        K/p ties applied, derived columns). Every column it writes is a new array (never an array an
        earlier step or another member lane may share)."""
        for j, t in enumerate(m.targets):
            v = out[:, j]
            cols[t] = (v > 0.5).astype(float) if t in FLAGS else \
                np.clip(v, 0.0, 1.0) if t in PROBNN_OUTPUTS else v.copy()
        if "hasRich" in m.targets and {"RichAcc1", "RichAcc2"} <= set(cols):
            # outside the angular acceptance of every radiator there is no RICH information: the
            # classifier's smooth probability put it on 2.5-9% of those tracks (~1% of all tracks)
            cols["hasRich"][cols["RichAcc1"] + cols["RichAcc2"] == 0] = 0.0
        if "RichPKTie" in m.targets and "RichDLLpK" in cols:
            self._match_ties(cols, sel)
        elif "RichDLLpK" in m.targets and {"RichAboveK1", "RichAboveK2"} <= set(m.conditions):
            # below the kaon threshold of every radiator crossed, K and p have the same likelihood
            tie = sel & (cols["RichAboveK1"] + cols["RichAboveK2"] == 0)
            cols["RichDLLpK"][tie] = 0.0
            cols["RichPKTie"] = tie.astype(float)
        for t, (base, diff) in DERIVED.items():
            if diff in cols and base in cols:
                cols[t] = (cols[base].astype(np.float32) + cols[diff].astype(np.float32)).astype(float)
        if PROBNN_DELTAS[0] in m.targets:  # a residual probnn step
            # where E/p is no input of the classifier (outside the calorimeter acceptance) the surrogate is
            # the classifier itself: d = 0 exactly (also where the step does not apply, e.g. trained on
            # --selection "hasCalo == 1")
            keep = sel & (cols["hasCalo"] > 0.5) if "hasCalo" in cols else sel
            for t in PROBNN_DELTAS:
                cols[t] = np.where(keep, cols[t], 0.0)
            cols.update(probnn_from_deltas(cols))

    def _match_ties(self, cols: dict[str, np.ndarray], sel: np.ndarray) -> None:
        """Rows flagged by the ``tie`` step get ``RichDLLpK = 0`` (``RichDLLp == RichDLLk`` exactly).

        Below the kaon threshold of every radiator a track crosses, the two hypotheses have the
        same likelihood: a step in p (and in the radiators crossed) that the RICH GAN smears (for
        kaons 85% ties at 5-8 GeV/c instead of 100%). The tie step's classifier learns that
        probability directly; a flagged row's ``RichDLLpK`` is set to 0, everything else stays as
        generated.

        Not done: the opposite, an unflagged row whose ``RichDLLpK`` came out exactly 0 (for kaons
        26% of the rows at 10-12 GeV/c against 2% in the truth). Giving such rows the
        ``RichDLLpK`` of a fresh non-tie draw put the DLLp - DLLK > 0 efficiency right there, but
        moved DLLp > 5 above 100 GeV/c by 7.5% for protons (the GAN's spurious ties at high p stand
        for small non-zero values); a value next to 0 instead moved DLLp - DLLK > 0 by 8% at
        10-12 GeV/c (a kaon's true DLLp - DLLK there is far below 0). A RICH GAN conditioned on the
        flag is the way to do both.
        """
        i_rich = next((i for i, mm in enumerate(self.models) if "RichDLLpK" in mm.targets), None)
        if i_rich is None or not sel.any():
            return
        applies = self.steps[i_rich].applies
        on = sel & (cols[applies] > 0.5) if applies is not None else sel
        cols["RichDLLpK"] = cols["RichDLLpK"].copy()  # (may be shared with another member lane)
        cols["RichDLLpK"][on & (cols["RichPKTie"] > 0.5)] = 0.0


#: columns that :meth:`PidChain._apply` reads besides a step's own outputs and the chain inputs
_POST_READS = frozenset({"hasRich", "RichDLLpK", "RichPKTie", "RichDLLk",
                         *(c for pair in DERIVED.values() for c in pair), *DERIVED})


def _common_k(species: str, members: dict[str, int]) -> int:
    """The K shared by the steps ``{model: K}`` of a chain (0 for none); a clear error if they differ."""
    ks = sorted(set(members.values()))
    if len(ks) > 1:
        detail = ", ".join(f"{name}: {k}" for name, k in members.items())
        raise ConfigurationError(
            f"PID chain of {species!r}: its steps have different numbers of ensemble members ({detail}); member k "
            "of the chain is member k of every step that has members, so they must have the same K (retrain with "
            "the same --ensemble K, or remove the members of one step)")
    return ks[0] if ks else 0


def chain_members(species: str, models_dir: str | os.PathLike | None = None,
                  steps: list[ChainStep] | None = None) -> dict[str, int]:
    """``{model name: K}`` of the steps of the chain of ``species`` whose model has ensemble members,
    read from the cards (no model is loaded): what ``mambah simulate --pid-variations`` checks
    before anything runs. Missing models are left to :func:`build_chain` to report."""
    import json

    from mambah.modeldir import resolve_model

    out = {}
    for step in default_chain_steps(species, models_dir) if steps is None else steps:
        try:
            path = resolve_model(step.model, models_dir)
            card = json.loads((Path(path) / "card.json").read_text())
        except (ModelDirError, ConfigurationError, OSError, ValueError):
            continue
        ens = card.get("ensemble") if card.get("kind") in ("pid", "pid-flags") else None
        k = ens.get("members") if isinstance(ens, dict) else None
        if isinstance(k, int) and k > 0:
            out[str(card.get("name", Path(path).name))] = k
    return out


def _model_name(m, step: ChainStep) -> str:
    return str(m.card.get("name", step.model))


def _no_rows(m, step: ChainStep):
    """The :class:`~mambah.nn.model.RangeCounts` of a step that evaluated no row."""
    from mambah.nn.model import RangeCounts

    calibrated = getattr(m, "correction", None) is not None and hasattr(m, "generate_array")
    return RangeCounts(_model_name(m, step), 0, 0, uncalibrated=0 if calibrated else None,
                       unsupported=0 if getattr(m, "support", None) is not None else None)


# (species, steps) -> (the steps' (resolved path, content hash), chain): a model retrained in place
# changes its content hash (mambah.nn.registry), and the chain is then built anew
_CACHE: dict[tuple, tuple[tuple, PidChain]] = {}
_LOCK = threading.Lock()


def build_chain(species: str, steps: list[ChainStep] | None = None,
                models_dir: str | os.PathLike | None = None) -> PidChain:
    """Load and check the chain of ``species`` (cached per process).

    The step models come from the registry (:func:`mambah.nn.registry.load_model`); the chain is
    cached by species, steps, and each step model's resolved path and content hash, so a model
    retrained in place gives a new chain.

    Raises:
        ConfigurationError: a model is missing (names the available chains), or a step's condition
            is produced neither by the chain inputs nor by an earlier step, or a target is unknown.
    """
    from mambah.modeldir import resolve_model

    steps = default_chain_steps(species, models_dir) if steps is None else list(steps)
    key = (species, tuple(steps))
    loaded = []
    for step in steps:
        try:
            path = resolve_model(step.model, models_dir)
        except (ModelDirError, ConfigurationError, FileNotFoundError) as e:
            avail = available_chains(models_dir)
            raise ConfigurationError(
                f"no PID model {step.model!r} for species {species!r} ({e}); species with a complete default "
                f"chain: {', '.join(avail) or 'none'}") from None
        loaded.append((path, load_step_model(path)))
    versions = tuple((str(Path(p).resolve()), m.content_hash) for p, m in loaded)
    with _LOCK:
        hit = _CACHE.get(key)
        if hit is not None and hit[0] == versions:
            return hit[1]
    models, paths = [], []
    produced = set(CHAIN_INPUTS) | set(THRESHOLD_CODES) | set(RICH_YIELDS)
    for step, (path, m) in zip(steps, loaded):
        missing = [c for c in m.conditions if c not in produced]
        if missing:
            raise ConfigurationError(
                f"PID chain of {species!r}: model {m.card.get('name', path.name)!r} (step {step.role!r}) expects "
                f"condition(s) {missing} that neither the chain inputs {list(CHAIN_INPUTS)} nor an earlier step "
                f"produce (available: {sorted(produced)})")
        if step.applies is not None and step.applies not in produced:
            raise ConfigurationError(f"PID chain of {species!r}: step {step.role!r} applies where {step.applies!r} "
                                     f"is 1, but no earlier step produces it (available: {sorted(produced)})")
        unknown = [t for t in m.targets if t not in CHAIN_OUTPUTS and t not in INTERMEDIATE and t not in PROBNN_OUTPUTS]
        if unknown:
            raise ConfigurationError(f"PID chain of {species!r}: model {m.card.get('name', path.name)!r} produces "
                                     f"unknown column(s) {unknown}; known: "
                                     f"{list(CHAIN_OUTPUTS) + list(INTERMEDIATE) + list(PROBNN_OUTPUTS)}")
        deltas = [t for t in m.targets if t in PROBNN_DELTAS]
        if deltas and not (set(PROBNN_DELTAS) <= set(m.targets) and set(PROBNN_SURROGATE) <= produced | (
                set(PROBNN_SURROGATE) if _SURROGATE_NEEDS <= produced else set())):
            raise ConfigurationError(
                f"PID chain of {species!r}: model {m.card.get('name', path.name)!r} (step {step.role!r}) produces "
                f"{deltas}: a residual ProbNN step needs all of {list(PROBNN_DELTAS)} as targets and the earlier steps "
                f"to produce {sorted(_SURROGATE_NEEDS)} (for the surrogate ProbNN)")
        produced |= set(m.targets)
        produced |= {t for t, (base, diff) in DERIVED.items() if base in produced and diff in produced}
        if deltas:
            produced |= set(PROBNN_TARGETS)
        if _COMBINE_NEEDS <= produced:  # the combined DLLs can be formed for the next steps
            produced |= set(COMBINED)
        if _SURROGATE_NEEDS <= produced:
            produced |= set(PROBNN_SURROGATE)
        models.append(m)
        paths.append(path)
    need = {"isMuon", "MuonMuLL", "MuonBkgLL", "RichDLLe", "RichDLLmu", "RichDLLk", "RichDLLp", "CaloDLLe"}
    lacking = sorted(need - produced)
    if lacking:
        raise ConfigurationError(f"PID chain of {species!r} does not produce {lacking}, needed for the combined DLLs "
                                 f"(steps: {[s.model for s in steps]})")
    chain = PidChain(species, steps, models, paths)
    with _LOCK:
        _CACHE[key] = (versions, chain)
    return chain


def load_chain(species: str, models_dir: str | os.PathLike | None = None) -> PidChain:
    """The default chain of ``species``; unknown species raise, naming the available ones."""
    if species not in SPECIES_PDG:
        near = closest(species, SPECIES_PDG)
        raise ConfigurationError(f"unknown PID species {species!r}; known: {', '.join(SPECIES_PDG)}"
                                 + (f" (did you mean {near[0]!r}?)" if near else ""))
    return build_chain(species, None, models_dir)


def available_chains(models_dir: str | os.PathLike | None = None) -> list[str]:
    """Species whose default chain models all exist in ``models_dir`` (default: the shipped models)."""
    base = _models_base(models_dir)
    return [s for s in SPECIES_PDG
            if all((base / f"pid-{s}-{r}" / "card.json").exists() for r in ROLES)]


def _models_base(models_dir: str | os.PathLike | None) -> Path:
    from mambah.modeldir import default_models_dir

    return Path(models_dir) if models_dir is not None else default_models_dir()
