"""Regenerate the golden production of ``tests/test_production_golden.py``.

Run from the repository root: ``python tests/golden/make_production_golden.py``. It writes
``tests/golden/production.npz``: every data table of a seeded production (truth + reconstruction
+ PID, 3 batches whose first id is 2, not 0: a 2-batch production precedes it in the store),
sorted by key, plus a sha256 digest of each table.

History of the file: first made at commit 6287ec5 (weighted phase-space events, before the
package was reorganised, issue 21); the reorganisation kept it bit-identical through commit
8ec24ce. Remade for issue 26's deliberate change (unweighted events by default and the lattice
form factors of Lambda_b0 -> Lambda_c+ mu- anti-nu_mu, the README's main job). Remade for schema 4:
issue 25's new column ``vertices.n_invisible`` and issue 23's opt-in Vertexing stage's columns (all
at their "not computed" value in this production); every pre-existing column was compared with the
previous file: integer columns identical, floating-point ones within the golden test's tolerance
(their last bits follow the CPU's vector units, see tests/test_production_golden.py). Remade for
``particles.has_brem_added`` (issue 25's opt-in Bremsstrahlung stage; -1, "not computed", here):
every one of the 88 pre-existing columns was bit-identical to the previous file. Remade for schema 5
and issue 23's explicit acceptance with the 4-class efficiency ``efficiency-ref-v2`` as the default
(30 of 6300 ``mc_particles.reconstructed`` flags differ, so ``particles`` and ``vertices`` gain rows;
``particles.track_type`` is now the drawn type, 3 = long), the Vertexing stage's ``events.n_pvs`` and
``events.ownpv_ntracks`` (-1 here) and issue 24's ``particles.probnn_*`` (NaN: the ProbNN step is opt-in):
``events``, ``mc_vertices`` and every other ``mc_particles`` column were identical to the previous file.
Remade for the retrained muon-likelihood steps of K, pi and p (2026-12-06, issue 22: 6M-candidate
calibration samples): ``particles.muon_mu_ll``, ``muon_bkg_ll`` and ``pid_mu`` of the 8 isMuon kaon, pion
and proton tracks changed; every other column of every table is bit-identical to the previous file.
Remade for the marginal calibration of the pi, K and p RICH steps (2026-12-07, issue 24,
``mambah.nn.marginals``): ``particles.rich_dll_{e,mu,k,p}`` and ``pid_{e,mu,k,p}`` of the ~1200 pion,
kaon and proton tracks with RICH information changed; every other array is bit-identical to the previous
file except the last float32 bit of ``muon_mu_ll``/``muon_bkg_ll`` of 23 muons (this machine's vector units).
Remade for the pi and mu flags classifiers retrained on 6M-candidate samples with a calibrated isMuon
and the isMuon calibration of the pi, mu, K and p flags (2026-12-07, issue 24,
``mambah.nn.marginals.FlagCalibration``): ``particles.is_muon`` of 19 tracks (10 muons, 6 pions, 3
kaons) and, through the draws that follow in the pion, muon and kaon chains, the muon likelihoods and
RICH DLLs (and combined DLLs) of about 950 of their tracks changed; the RICH DLLs of ~50 proton tracks
in their last float32 bits (1e-6 relative: this machine's vector units); every other array is
bit-identical to the previous file.
Remade for the proton RICH step's conditional map (2026-12-07, issue 24: RichDLLpK mapped in 5 classes
of RichDLLk, ``mambah.nn.marginals``): ``particles.rich_dll_p`` and ``pid_p`` of the 264 proton tracks
with RICH information changed; other RICH and combined DLLs of ~160 tracks in their last float32 bits
(at most 1.5e-4 absolute, this machine's vector units); every other array is bit-identical.
Remade for the proton RICH map refitted with the low-momentum proton samples and 32 P bins (2026-12-07,
issue 24, ``mambah detector calib-sample --low-p``): the RICH and combined DLLs of the 455 proton tracks
with RICH information changed; compared with a file remade from the previous models on the same machine,
every other array is bit-identical (against the previous file, the kinematics of ~1760 particles and the
DLLs of 5 other tracks differ in their last float32 bits: the previous file's machine's vector units).
Remade for the proton flags classifier retrained with a low-momentum sample (2026-12-07, issue 24):
``particles.is_muon`` and the muon likelihoods of 4 tracks and, through the draws that follow in the proton
chain, the RICH and combined DLLs of ~440 proton tracks changed; every other array is bit-identical.
Remade for the proton RICH map refitted with two high-pseudorapidity Lambda0 samples and 3 ETA bins
(2026-12-07, issues 22/24, ``mambah detector calib-sample --high-eta``): the RICH and combined DLLs of the
472 proton tracks with RICH information changed (all of them, all protons); every other array is
bit-identical to the previous file.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))


def main() -> None:
    import numpy as np

    from mambah import Store, run_production, standard_pipeline
    from tests.golden.digest import DESCRIPTOR, GOLDEN, TABLES, digest, table_arrays

    pipe = standard_pipeline(DESCRIPTOR)
    with Store("duckdb:///:memory:") as store:
        run_production(pipe, n_events=600, batch_size=300, seed=5, store=store, production="before")
        res = run_production(pipe, n_events=900, batch_size=300, seed=11, store=store, production="golden")
        ids = sorted(store.batch_ids())[2:]
        assert ids == [2, 3, 4], ids
        out = {}
        for t in TABLES:
            for k, v in table_arrays(store.read(t, batches=ids)).items():
                out[f"{t}/{k}"] = v
        out["digest"] = np.array([f"{t}:{digest(store.read(t, batches=ids))}" for t in TABLES])
    np.savez_compressed(GOLDEN, **out)
    print(GOLDEN, res.written, "batches")
    for line in out["digest"]:
        print(line)


if __name__ == "__main__":
    main()
