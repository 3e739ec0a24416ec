"""Neutrals: photons reconstructed in the calorimeter become rows of ``particles`` (opt-in).

``Neutrals(model="reference")`` gives every generated final-state photon the response of the
reference ECAL (:class:`mambah.reference.calorimeter.Calorimeter`: acceptance, efficiency,
sigma_E/E = 10 %/sqrt(E) (+) 1 %, position resolution); a reconstructed photon becomes a
``particles`` row (``pid`` 22, ``charge`` 0, ``m`` 0, momentum from the cluster: |p| = E_reco,
pointing from the photon's true origin to the measured cluster position, ``mc_particle`` its
truth, ``mother``/``vertex`` -1 until :class:`~mambah.reconstruction.Composites` attaches it) and
its ``mc_particles.reconstructed`` is set. Composites built with ``Composites(neutrals=(22,))``
then include photons: ``B0 -> (K*(892)0 -> K+ pi-) gamma`` gets its B0 mass back.

The two photons of a ``pi0 -> gamma gamma`` decay go through
:meth:`~mambah.reference.calorimeter.Calorimeter.pi0_response`: when they are resolved each
reconstructed one is a row as above; when they *merge* into one cluster (high-pT pi0) neither
photon gets a row and, where the merged cluster is reconstructed, the pi0 gets **one row**, as
LHCb's merged pi0: ``pid`` 111, ``charge`` 0, ``m`` the PDG pi0 mass
(:func:`mambah.physics.particle_mass`), ``e = max(E_cluster, m)`` and
``|p| = sqrt(e^2 - m^2)`` along the line from the pi0's origin (its decay point, the photons'
origin) to the measured cluster position, ``mc_particle`` the pi0 (whose
``mc_particles.reconstructed`` is set). These rows come after every photon row, and the stage's
random numbers are those it drew before merged pi0 had rows, so the photons and everything built
from resolved pi0 are unchanged bit for bit. :class:`~mambah.reconstruction.Composites` takes a
pi0 from its two resolved photons or from its merged row; the ntuple's ``pi0_M`` is then the PDG
mass and ``pi0_Type`` (LHCb's TupleToolPi0Info) tells 1 merged from 2 resolved (0: neither).
``batch.info["reconstruction"]["neutrals"]`` counts ``pi0``, ``merged_pi0`` (merged clusters,
reconstructed or lost), ``merged_pi0_candidates`` (rows built) and ``resolved_pi0_candidates``
(pi0 with both photons reconstructed); ``reconstructed`` counts photon rows. It must run after
the charged tracks exist (after ``Resolution``) and before ``Composites``; the PID stage skips
neutral rows.

``model="model"`` (``--neutrals model``: the shipped :data:`DEFAULT_PHOTON_MODEL`) or the name or
directory of a trained photon model (card kind ``"photon"``, :class:`mambah.nn.calo.PhotonModel`,
trained by ``mambah train photon`` on reference samples) replaces the reference ECAL by the
networks: the ECAL face of the model's card decides the acceptance (explicitly), the efficiency
network whether an accepted photon is reconstructed, the pi0 network whether a pi0 is resolved or
merged (merged or merged-and-lost), and the response network the cluster's energy and position.
The response network was trained on single photons only (its card's training data), so it does not
cover a merged cluster: a merged pi0 the pi0 network reconstructs (class "merged") gets one cluster
of the photons' energy at their centre of energy on the card's ECAL face, smeared with the
*reference* calorimeter's resolution (:meth:`~mambah.reference.calorimeter.Calorimeter.cluster_response`,
the same formulas the reference uses for a merged cluster), drawn after all other numbers.
The stage is opt-in (``standard_pipeline(..., neutrals="reference" | "model")``,
``mambah simulate --neutrals reference|model``); without it a descriptor with a photon is refused.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import numpy as np
import pandas as pd

from mambah.errors import ConfigurationError
from mambah.physics import particle_mass
from mambah.physics.columns import COLUMNS, PID_COLUMNS, brem_defaults, probnn_defaults, vertexing_defaults
from mambah.reconstruction._common import ReferenceOrModelStage, require_tables, rows_by_index

__all__ = ["Neutrals", "NEUTRAL_MODELS", "DEFAULT_PHOTON_MODEL", "PHOTON_PID", "PI0_PID", "merged_pi0_momentum",
           "merged_pi0_nodes"]

#: The neutral-response models the stage knows by keyword (any other value is a photon model's name or directory).
NEUTRAL_MODELS: tuple[str, ...] = ("reference", "model")
#: The shipped photon network ``model="model"`` stands for.
DEFAULT_PHOTON_MODEL = "photon-ref-v1"
#: |PDG id| of the photon (from the ``particle`` package).
PHOTON_PID: int = 22
#: |PDG id| of the pi0 (from the ``particle`` package): the pid of a merged pi0 candidate's row.
PI0_PID: int = 111


def merged_pi0_nodes(tree: list[dict]) -> dict[int, tuple[int, int]]:
    """``{node: (photon node, photon node)}`` of the ``pi0 -> gamma gamma`` nodes of a decay tree
    (a decaying pi0 whose two children are stable photons): those the Neutrals stage may give one
    merged-pi0 row instead of two photon rows."""
    out = {}
    for k, nd in enumerate(tree):
        ch = [int(c) for c in nd.get("children", ())]
        if (not nd["stable"] and abs(int(nd["pid"])) == PI0_PID and len(ch) == 2
                and all(tree[c]["stable"] and abs(int(tree[c]["pid"])) == PHOTON_PID for c in ch)):
            out[k] = (ch[0], ch[1])
    return out


@functools.lru_cache(maxsize=None)
def _pdgid(name: str) -> int:
    from mambah.generation.particles import resolve

    return abs(int(resolve(name).pid))


@dataclasses.dataclass(frozen=True)
class Neutrals(ReferenceOrModelStage):
    """Reconstruct final-state photons with the reference calorimeter (see the module docstring).

    Args:
        model: ``"reference"``, ``"model"`` (the shipped :data:`DEFAULT_PHOTON_MODEL`) or a photon
            model's name under ``models/`` or directory.
        name: stage name (also the name of its random stream).
    """

    model: str = "reference"
    name: str = "neutrals"

    def __post_init__(self):
        self.check_model("Neutrals", "photon", NEUTRAL_MODELS)
        if _pdgid("gamma") != PHOTON_PID or _pdgid("pi0") != PI0_PID:  # pragma: no cover - constants vs `particle`
            raise ConfigurationError("PHOTON_PID or PI0_PID disagrees with the particle package")

    @property
    def pids(self) -> tuple[int, ...]:
        """|PDG id|s this stage gives rows to."""
        return (PHOTON_PID,)

    @property
    def model_dir(self) -> str:
        """The photon model's name or directory (``"model"`` resolved to :data:`DEFAULT_PHOTON_MODEL`)."""
        return DEFAULT_PHOTON_MODEL if self.model == "model" else self.model

    def config(self) -> dict[str, Any]:
        if self.model != "reference":
            return {"model": self.model, "name": self.name}
        from mambah.reference.calorimeter import Calorimeter

        return {"model": self.model, "name": self.name, "calorimeter": Calorimeter().config()}

    def __call__(self, batch):
        from mambah.reference.calorimeter import Calorimeter

        require_tables(batch, self.name, ("mc_particles", "mc_vertices", "particles"))
        tree = batch.info.get("decay_tree")
        if not tree:
            raise ConfigurationError(f"stage {self.name!r} needs batch.info['decay_tree'] (set by PhaseSpaceDecay)")
        if "vertices" in batch and len(batch["vertices"]):
            raise ConfigurationError(f"stage {self.name!r} must run before Composites (batch {batch.id} has vertices)")
        n = batch.n_events
        mc, vt = batch["mc_particles"], batch["mc_vertices"]
        if len(mc) != len(tree) * n:
            raise ConfigurationError(f"batch {batch.id}: mc_particles is not in the particle-major layout of its tree")
        pi0 = _pdgid("pi0")
        photons = [k for k, nd in enumerate(tree) if nd["stable"] and abs(int(nd["pid"])) == PHOTON_PID]
        pairs = sorted(merged_pi0_nodes(tree))
        paired = {int(c) for k in pairs for c in tree[k]["children"]}
        single = [k for k in photons if k not in paired]
        rng = batch.rng(self.name)
        cal = Calorimeter() if self.model == "reference" else _NetworkCalorimeter(self.model_dir)
        px, py, pz = (mc[c].to_numpy(np.float64) for c in ("px", "py", "pz"))
        vrow = rows_by_index(vt, mc["prod_vertex"].to_numpy(), "mc_particles.prod_vertex values")
        ox, oy, oz = (vt[c].to_numpy(np.float64)[vrow] for c in ("x", "y", "z"))
        ev = np.arange(n)
        found_slots, cols = [], {c: [] for c in ("px", "py", "pz", "e")}

        def keep(slots, r):
            ok = r["reconstructed"]
            found_slots.append(slots[ok])
            for c in cols:
                cols[c].append(r[c][ok])

        for k in single:
            s = k * n + ev
            keep(s, cal.photon_response(px[s], py[s], pz[s], ox[s], oy[s], oz[s], seed=rng))
        merged = resolved = 0
        merged_slots, mcols = [], {c: [] for c in ("px", "py", "pz", "e")}
        m_pi0 = particle_mass(pi0)
        for k in pairs:
            c1, c2 = (int(c) for c in tree[k]["children"])
            s1, s2 = c1 * n + ev, c2 * n + ev
            r = cal.pi0_response((px[s1], py[s1], pz[s1]), (px[s2], py[s2], pz[s2]), ox[s1], oy[s1], oz[s1], seed=rng)
            merged += int(r["merged"].sum())
            resolved += int((r["photons"][0]["reconstructed"] & r["photons"][1]["reconstructed"]).sum())
            keep(s1, r["photons"][0])
            keep(s2, r["photons"][1])
            # a merged cluster that was reconstructed: one pi0 row (LHCb's merged pi0), see the docstring
            mcl = r["merged_cluster"]
            ok = np.isfinite(mcl["e"])
            merged_slots.append((k * n + ev)[ok])
            for c, v in zip(("px", "py", "pz", "e"), merged_pi0_momentum(mcl["px"][ok], mcl["py"][ok], mcl["pz"][ok],
                                                                         mcl["e"][ok], m_pi0)):
                mcols[c].append(v)
        n_merged = int(sum(len(s) for s in merged_slots))
        # merged pi0 rows after every photon row (the photons' rows are those of a production without them)
        found_slots += merged_slots
        for c in cols:
            cols[c] += mcols[c]
        slots = np.concatenate(found_slots) if found_slots else np.zeros(0, dtype=np.int64)
        parts = batch["particles"]
        m = len(slots)
        data: dict[str, Any] = {
            "batch": np.full(m, batch.id, dtype=np.int64),
            "index": (len(parts) + np.arange(m)).astype(np.int32),
            "event": mc["event"].to_numpy()[slots].astype(np.int32),
            "mc_particle": mc["index"].to_numpy()[slots].astype(np.int32),
            "pid": mc["pid"].to_numpy()[slots].astype(np.int32),
            "charge": np.zeros(m, dtype=np.int8),
            **{c: (np.concatenate(v) if v else np.zeros(0)).astype(np.float64) for c, v in cols.items()},
            "m": np.where(np.arange(m) >= m - n_merged, m_pi0, 0.0).astype(np.float64),
            "mother": np.full(m, -1, dtype=np.int32),
            "vertex": np.full(m, -1, dtype=np.int32),
        }
        for c, dt in PID_COLUMNS.items():
            data[c] = np.full(m, np.nan, dtype=dt)
        data.update(vertexing_defaults("particles", m))  # photons: no track state, no vertex fit
        data.update(brem_defaults("particles", m))  # not a track: no brem flag
        data.update(probnn_defaults("particles", m))  # ProbNN: NaN until the PID stage draws it
        rows = pd.DataFrame(data)[list(COLUMNS["particles"])]
        batch["particles"] = pd.concat([parts, rows], ignore_index=True) if len(parts) else rows
        for c, d in COLUMNS["particles"].items():
            batch["particles"][c] = batch["particles"][c].astype(d)
        reco = mc["reconstructed"].to_numpy(copy=True)
        reco[slots] = True
        mc = mc.copy()
        mc["reconstructed"] = reco
        batch["mc_particles"] = mc
        info = batch.info.setdefault("reconstruction", {})[self.name] = {
            "photons": int(len(photons) * n), "reconstructed": int(m - n_merged), "pi0": int(len(pairs) * n),
            "merged_pi0": merged, "resolved_pi0_candidates": resolved, "merged_pi0_candidates": n_merged}
        if isinstance(cal, _NetworkCalorimeter) and cal.out_of_range():  # the networks' inputs outside their range
            info["out_of_range"] = cal.out_of_range()
        return batch


def merged_pi0_momentum(cx, cy, cz, e_reco, m_pi0: float) -> tuple[np.ndarray, ...]:
    """``(px, py, pz, e)`` of merged pi0 candidates from their clusters: the direction of the
    cluster's momentum ``(cx, cy, cz)`` (from the pi0's origin to the measured cluster position),
    the energy ``E = max(E_reco, m_pi0)`` and ``|p| = sqrt(E^2 - m_pi0^2)``, so that the candidate's
    mass is the PDG pi0 mass ``m_pi0`` (as LHCb's merged pi0). A cluster below the pi0 mass (none
    in practice: a merged cluster has E of tens of GeV) gets |p| = 0."""
    cx, cy, cz, e_reco = (np.asarray(a, dtype=np.float64) for a in (cx, cy, cz, e_reco))
    norm = np.sqrt(cx * cx + cy * cy + cz * cz)
    e = np.maximum(e_reco, m_pi0)
    p = np.sqrt(e * e - m_pi0 * m_pi0)
    with np.errstate(invalid="ignore", divide="ignore"):
        f = np.where(norm > 0, p / norm, 0.0)
    return cx * f, cy * f, cz * f, e


class _NetworkCalorimeter:
    """The photon networks (:class:`mambah.nn.calo.PhotonModel`) behind the two methods of the
    reference :class:`~mambah.reference.calorimeter.Calorimeter` this stage calls, with the same
    returned keys (``reconstructed``, ``px, py, pz, e``; for pi0: ``merged``, ``photons``)."""

    def __init__(self, model: str):
        from mambah.nn.registry import load_model

        self.net = load_model(model, kind="photon")
        #: per-call ``(outside per feature, rows outside)`` of the photons on the ECAL face (the only
        #: ones the networks see), for the stage's out-of-range record
        self.tally: list = []
        self.pi0_tally: list = []
        self.n_photons = self.n_pi0 = 0

    def out_of_range(self) -> dict[str, list[int]]:
        """``{model name: [photons outside the training range, photons evaluated]}`` and the same for
        the pi0 network (``"<name> (pi0)"``); empty where none is outside."""
        out = {}
        c = self.net.tally_counts(self.tally, self.n_photons)
        if c.count:
            out[self.net.name] = [c.count, c.n]
        bad = sum(t[1] for t in self.pi0_tally)
        if bad:
            out[f"{self.net.name} (pi0)"] = [int(bad), self.n_pi0]
        return out

    def photon_response(self, px, py, pz, x, y, z, *, seed) -> dict[str, np.ndarray]:
        import warnings

        from mambah.errors import OutOfRangeWarning

        rng = seed
        px, py, pz = (np.asarray(a, dtype=np.float64) for a in (px, py, pz))
        x, y, z = (np.broadcast_to(np.asarray(a, dtype=np.float64), px.shape) for a in (x, y, z))
        with warnings.catch_warnings():  # counted in the tally, recorded by the stage
            warnings.simplefilter("ignore", OutOfRangeWarning)
            acc, prob = self.net.efficiency(px, py, pz, x, y, z, tally=self.tally)
            self.n_photons += int(acc.sum())
            reco = rng.random(len(px)) < prob
            out = {"reconstructed": reco}
            e = np.full(len(px), np.nan)
            qx, qy, qz = e.copy(), e.copy(), e.copy()
            if reco.any():  # the response of the reconstructed photons only (all on the ECAL face)
                r = self.net.response(px[reco], py[reco], pz[reco], x[reco], y[reco], z[reco], rng)
                e[reco], qx[reco], qy[reco], qz[reco] = r[0], r[3], r[4], r[5]
        for k, v in (("e", e), ("px", qx), ("py", qy), ("pz", qz)):
            out[k] = v
        return out

    def pi0_response(self, g1, g2, x, y, z, *, seed) -> dict[str, Any]:
        from mambah.nn.calo import PI0_MERGED, PI0_RESOLVED

        import warnings

        from mambah.errors import OutOfRangeWarning

        rng = seed
        with warnings.catch_warnings():  # counted in the tally, recorded by the stage
            warnings.simplefilter("ignore", OutOfRangeWarning)
            prob = self.net.pi0_probabilities(g1, g2, x, y, z, tally=self.pi0_tally)
        self.n_pi0 += len(prob)
        u = rng.random(len(prob))
        cls = (u[:, None] > np.cumsum(prob, axis=1)[:, :-1]).sum(axis=1)
        merged = cls != PI0_RESOLVED
        photons = []
        for g in (g1, g2):
            r = self.photon_response(*g, x, y, z, seed=rng)
            r["reconstructed"] = r["reconstructed"] & ~merged
            for k in ("e", "px", "py", "pz"):
                r[k] = np.where(r["reconstructed"], r[k], np.nan)
            photons.append(r)
        return {"merged": merged, "pi0_class": cls, "photons": tuple(photons),
                "merged_cluster": self.merged_cluster(g1, g2, x, y, z, cls == PI0_MERGED, rng)}

    def merged_cluster(self, g1, g2, x, y, z, sel, rng) -> dict[str, np.ndarray]:
        """The cluster of the merged pi0 the pi0 network reconstructs (``sel``; NaN elsewhere): one
        cluster of the photons' energy E1 + E2 at their centre of energy on the ECAL face (the card's
        geometry), smeared with the *reference* calorimeter's resolution (:meth:`Calorimeter.
        cluster_response <mambah.reference.calorimeter.Calorimeter.cluster_response>`), because the
        response network was trained on single photons only (its card's training data) and does not
        cover merged clusters. Drawn after every other number of the pi0s (the resolved ones keep
        their draws)."""
        from mambah.reference.calorimeter import Calorimeter

        g = self.net.geometry
        n = len(sel)
        out = {k: np.full(n, np.nan) for k in ("e", "x", "y", "px", "py", "pz")}
        if not sel.any():
            return out
        p1 = [np.asarray(a, dtype=np.float64)[sel] for a in g1]
        p2 = [np.asarray(a, dtype=np.float64)[sel] for a in g2]
        x0, y0, z0 = (np.broadcast_to(np.asarray(a, dtype=np.float64), (n,))[sel] for a in (x, y, z))
        e1, e2 = (np.sqrt(sum(c * c for c in p)) for p in (p1, p2))
        x1, y1 = g.impact(*p1, x0, y0, z0)
        x2, y2 = g.impact(*p2, x0, y0, z0)
        e = e1 + e2
        xc, yc = (e1 * x1 + e2 * x2) / e, (e1 * y1 + e2 * y2) / e
        cal = Calorimeter(z_ecal=g.z_ecal, x_outer=g.x_outer, y_outer=g.y_outer, hole=g.hole)
        r = cal.cluster_response(e, np.nan_to_num(xc), np.nan_to_num(yc), x0, y0, z0, seed=rng)
        for k in out:
            out[k][sel] = r[k]
        return out
