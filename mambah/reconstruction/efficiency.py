"""Efficiency: which generated long-lived charged particles become reconstructed tracks, of which type.

Candidates are the rows of ``mc_particles`` of the species ``e, mu, pi, K, p`` (any charge sign)
that do not decay in the event (``decay_vertex == -1``). First the explicit **geometric
acceptance** (:class:`~mambah.reconstruction.acceptance.TrackAcceptance`: angle, the magnet's
momentum cut-off, the origin; which track types are possible at all) decides: a candidate outside
it is not reconstructed and is never passed to the network. The stage refuses (a
:class:`~mambah.errors.ModelDirError` naming the model and the features) a model whose training
range does not cover the acceptance, so that no network is ever evaluated at its range edges.

Inside, the efficiency network gives the probabilities of the classes not reconstructed / long /
upstream / downstream (a 4-class model, card ``classes``; a binary model: long or not), from the
true momentum, the production vertex and the species; the types the acceptance rules out for the
candidate get probability 0 (their share goes to "not reconstructed"). One uniform number per
candidate from ``batch.rng(name)`` draws the class. The candidates whose class is one of
``track_types`` (default: long tracks only, LHCb's standard tracks) are reconstructed:

* they get ``mc_particles.reconstructed = True`` (all other rows False);
* become rows of ``particles``: ``mc_particle`` (truth link), ``pid`` (the true PDG id),
  ``charge``, momentum (the true one until the :class:`~mambah.reconstruction.resolution.Resolution`
  stage smears it), ``m`` and ``e`` with the true species' PDG mass hypothesis, ``mother`` and
  ``vertex`` -1 (set by :class:`~mambah.reconstruction.composites.Composites`), PID columns NaN (set by the
  PID stage), ``track_type`` the drawn class in LHCb's ``TRACK_Type`` codes (3 long, 4 upstream,
  5 downstream; ntuple ``X_TRACK_Type``), which the Vertexing stage uses.

The Resolution stage smears every track with the (long-track) resolution model whatever its type:
upstream and downstream tracks (``track_types=("long", "upstream", "downstream")``, opt-in) get a
long track's momentum resolution (the reference detector's is 30 and 1.2 times worse).

``model="reference"`` uses the reference detector's exact probabilities instead of a network
(:meth:`mambah.reference.tracking.TrackingDetector.type_probabilities`; truth productions and
closure tests), after the same acceptance.

Every batch records in ``batch.info["reconstruction"]["efficiency"]`` the candidates, those in
the acceptance, the reconstructed tracks per type, and ``out_of_range``: ``{model: [candidates
evaluated outside its training range, candidates evaluated]}`` (0 by construction: the
acceptance invariant); :func:`out_of_range_totals` sums them over the batches this process ran.
"""

from __future__ import annotations

import dataclasses
import threading
from typing import Any

import numpy as np
import pandas as pd

from mambah.errors import ConfigurationError
from mambah.physics import SPECIES, pdg_charge, pdg_mass, species_index
from mambah.physics.columns import COLUMNS, PID_COLUMNS, brem_defaults, probnn_defaults, vertexing_defaults
from mambah.reconstruction._common import REFERENCE, OneModelStage, as_config, require_tables, rows_by_index
from mambah.reconstruction.acceptance import TYPE_CODES, TrackAcceptance

__all__ = ["Efficiency", "DEFAULT_EFFICIENCY", "track_rows", "out_of_range_totals"]

DEFAULT_EFFICIENCY = "efficiency-ref-v2"

# (production, model) -> [candidates outside the training range, candidates], this process
_RANGE: dict[tuple[str | None, str], list[int]] = {}
_RANGE_LOCK = threading.Lock()


def out_of_range_totals(production: str | None = None) -> dict[str, tuple[int, int]]:
    """``{model: (candidates outside its training range, candidates)}`` over the batches of
    ``production`` (``None``: batches run outside a production) that this process ran."""
    with _RANGE_LOCK:
        return {m: (v[0], v[1]) for (p, m), v in _RANGE.items() if p == production}


@dataclasses.dataclass(frozen=True)
class Efficiency(OneModelStage):
    """The tracking-efficiency stage.

    Args:
        model: model name under ``models/``, a model directory, or ``"reference"``.
        species: species to reconstruct (subset of e, mu, pi, K, p); each must be one the model
            was trained for.
        name: stage name (also the name of its random stream).
        track_types: the track types that become ``particles`` (subset of long, upstream,
            downstream; default long only); a binary model makes long tracks only.
        acceptance: the geometric acceptance (:class:`~mambah.reconstruction.acceptance.TrackAcceptance`);
            the model's training range must cover it.
    """

    model: str = DEFAULT_EFFICIENCY
    species: tuple[str, ...] = SPECIES
    name: str = "efficiency"
    track_types: tuple[str, ...] = ("long",)
    acceptance: TrackAcceptance = TrackAcceptance()

    def __post_init__(self):
        object.__setattr__(self, "species", tuple(self.species))
        bad = [s for s in self.species if s not in SPECIES]
        if bad:
            raise ConfigurationError(f"Efficiency: unknown species {bad}; trackable species are {', '.join(SPECIES)}")
        types = (self.track_types,) if isinstance(self.track_types, str) else tuple(self.track_types)
        object.__setattr__(self, "track_types", types)
        bad = [t for t in types if t not in TYPE_CODES]
        if bad or not types:
            raise ConfigurationError(f"Efficiency: track_types {list(types)!r}: each must be one of "
                                     f"{', '.join(TYPE_CODES)} (and at least one)")
        if not isinstance(self.acceptance, TrackAcceptance):
            raise ConfigurationError(f"Efficiency: acceptance must be a TrackAcceptance, not {self.acceptance!r}")

    def config(self) -> dict[str, Any]:
        cfg = as_config(self)
        cfg["acceptance"] = self.acceptance.config()
        return cfg

    def _type_probabilities(self, px, py, pz, x, y, z, pid, out_of_range: dict | None = None) -> np.ndarray:
        """(n, 4) probabilities of (none, long, upstream, downstream) of candidates inside the acceptance."""
        if self.model == REFERENCE:
            from mambah.reference.tracking import TrackingDetector

            return TrackingDetector().type_probabilities(px, py, pz, x, y, z, pid)
        from mambah.nn.registry import load_model

        m = load_model(self.model, kind="efficiency")
        missing = [s for s in self.species if s not in m.species]
        if missing:
            raise ConfigurationError(
                f"efficiency model {m.name!r} was trained for species {', '.join(m.species)}, not for "
                f"{', '.join(missing)}; pass species={tuple(s for s in self.species if s in m.species)!r} "
                "or a model trained for them"
            )
        if not getattr(m, "track_types", False) and self.track_types != ("long",):
            raise ConfigurationError(
                f"efficiency model {m.name!r} is a binary (long track or not) model; track_types="
                f"{self.track_types!r} needs a 4-class (track-type) model, e.g. efficiency-ref-v2"
            )
        self.acceptance.check_model(m)
        counts: list = []
        prob = m.type_probabilities(px, py, pz, x, y, z, pid, counts=counts)
        if out_of_range is not None:
            out_of_range[m.name] = [counts[0].count, counts[0].n]
        return prob

    def _probability(self, px, py, pz, x, y, z, pid, out_of_range: dict | None = None) -> np.ndarray:
        """Probability to become one of ``track_types`` (after the acceptance); NaN-free, float64."""
        px, py, pz, x, y, z = (np.asarray(a, dtype=np.float64) for a in (px, py, pz, x, y, z))
        allowed = self.acceptance.types(px, py, pz, x, y, z)
        inside = allowed.any(axis=1)
        out = np.zeros(len(px))
        if inside.any() or self.model != REFERENCE:
            pr = self._type_probabilities(px[inside], py[inside], pz[inside], x[inside], y[inside], z[inside],
                                          np.asarray(pid)[inside], out_of_range)
            keep = [1 + list(TYPE_CODES).index(t) for t in self.track_types]
            out[inside] = (pr[:, 1:] * allowed[inside])[:, [k - 1 for k in keep]].sum(axis=1)
        return out

    def __call__(self, batch):
        require_tables(batch, self.name, ("mc_particles", "mc_vertices"))
        if "particles" in batch and len(batch["particles"]):
            raise ConfigurationError(f"batch {batch.id} already has {len(batch['particles'])} reconstructed "
                                     f"particles; the {self.name!r} stage must run once, before Resolution")
        mc = batch["mc_particles"]
        vt = batch["mc_vertices"]
        pid = mc["pid"].to_numpy(np.int64)
        sp = species_index(pid)
        wanted = np.isin(sp, [SPECIES.index(s) for s in self.species])
        cand = np.nonzero(wanted & (mc["decay_vertex"].to_numpy() < 0))[0]
        pv = mc["prod_vertex"].to_numpy()[cand]
        if (pv < 0).any():
            raise ConfigurationError(f"batch {batch.id}: {int((pv < 0).sum())} final-state particles have no "
                                     "production vertex (mc_particles.prod_vertex == -1)")
        vrow = rows_by_index(vt, pv, "mc_particles.prod_vertex values")
        kin = [mc[c].to_numpy(np.float64)[cand] for c in ("px", "py", "pz")]
        org = [vt[c].to_numpy(np.float64)[vrow] for c in ("x", "y", "z")]
        # the geometric acceptance first: outside it nothing is evaluated
        allowed = self.acceptance.types(*kin, *org)
        inside = np.nonzero(allowed.any(axis=1))[0]
        out_of_range: dict[str, list[int]] = {}
        probs = np.zeros((len(cand), 4))
        probs[:, 0] = 1.0
        if len(inside) or self.model != REFERENCE:
            pr = self._type_probabilities(*(a[inside] for a in kin), *(a[inside] for a in org), pid[cand][inside],
                                          out_of_range)
            pt = pr[:, 1:] * allowed[inside]  # types the geometry rules out get probability 0
            probs[inside, 1:] = pt
            probs[inside, 0] = 1.0 - pt.sum(axis=1)
        production = batch.info.get("production")
        with _RANGE_LOCK:
            for model, (bad, n) in out_of_range.items():
                tot = _RANGE.setdefault((production, model), [0, 0])
                tot[0] += bad
                tot[1] += n
        u = batch.rng(self.name).random(len(cand))
        cum = np.cumsum(probs[:, 1:], axis=1)
        codes = np.array(list(TYPE_CODES.values()), dtype=np.int8)
        cls = np.select([u < cum[:, 0], u < cum[:, 1], u < cum[:, 2]], [codes[0], codes[1], codes[2]], 0).astype(np.int8)
        wanted_codes = [TYPE_CODES[t] for t in self.track_types]
        passed = np.isin(cls, wanted_codes)
        sel = cand[passed]
        reco = np.zeros(len(mc), dtype=bool)
        reco[sel] = True
        mc = mc.copy()
        mc["reconstructed"] = reco
        batch["mc_particles"] = mc
        parts = track_rows(batch.id, mc, sel)
        parts["track_type"] = cls[passed].astype(parts["track_type"].dtype)
        batch["particles"] = parts
        info = batch.info.setdefault("reconstruction", {})
        info["efficiency"] = {"candidates": int(len(cand)), "in_acceptance": int(len(inside)),
                              "reconstructed": int(len(sel)),
                              "types": {t: int((cls == c).sum()) for t, c in TYPE_CODES.items()},
                              "track_types": list(self.track_types)}
        if out_of_range:
            info["efficiency"]["out_of_range"] = out_of_range
        return batch


def track_rows(batch_id: int, mc: pd.DataFrame, rows: np.ndarray) -> pd.DataFrame:
    """``particles`` rows (true momentum, PDG mass hypothesis) for the ``mc_particles`` rows ``rows``."""
    n = len(rows)
    pid = mc["pid"].to_numpy(np.int64)[rows]
    px, py, pz = (mc[c].to_numpy(np.float64)[rows] for c in ("px", "py", "pz"))
    m = pdg_mass(pid) if n else np.zeros(0)
    data: dict[str, Any] = {
        "batch": np.full(n, batch_id, dtype=np.int64),
        "index": np.arange(n, dtype=np.int32),
        "event": mc["event"].to_numpy()[rows].astype(np.int32),
        "mc_particle": mc["index"].to_numpy()[rows].astype(np.int32),
        "pid": pid.astype(np.int32),
        "charge": (pdg_charge(pid) if n else np.zeros(0)).astype(np.int8),
        "px": px.astype(np.float64),
        "py": py.astype(np.float64),
        "pz": pz.astype(np.float64),
        "e": np.sqrt(px * px + py * py + pz * pz + m * m).astype(np.float64),
        "m": m.astype(np.float64),
        "mother": np.full(n, -1, dtype=np.int32),
        "vertex": np.full(n, -1, dtype=np.int32),
    }
    for c, dt in PID_COLUMNS.items():
        data[c] = np.full(n, np.nan, dtype=dt)
    data.update(vertexing_defaults("particles", n))
    data.update(brem_defaults("particles", n))
    data.update(probnn_defaults("particles", n))  # ProbNN: NaN until the PID stage draws it
    df = pd.DataFrame(data)
    return df[list(COLUMNS["particles"])]

