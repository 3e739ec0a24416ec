"""The public API of mambah and of each public subpackage, pinned (as ``particle``'s
``tests/test_module_apis.py`` does): an accidental export or a lost name fails here. Changing
the API on purpose means changing this table in the same commit.
"""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

API = {
    "mambah": ['Batch', 'Composites', 'Efficiency', 'EtaAcceptance', 'MambahError', 'Occupancy', 'PID', 'ParticleGun', 'PhaseSpaceDecay', 'PidModel', 'Pipeline', 'Resolution', 'Store', '__version__', 'bdt_ks_score', 'cocktail_pipeline', 'fit_sweights', 'generator_stages', 'get_rng', 'load_chain', 'parse_descriptor', 'read_table', 'run_production', 'standard_pipeline', 'validate', 'write_table'],
    "mambah.physics": ['COLUMNS', 'COLUMN_MAP', 'CONDITION_NAMES', 'Column', 'DATA_TABLES', 'ETA_LIMIT', 'PID_COLUMNS', 'PT_FLOOR32', 'SPECIES', 'SPECIES_PDG', 'Species', 'TRACKABLE_PIDS', 'boost_to_lab', 'boost_to_rest', 'column', 'describe_column', 'eta', 'lhcb_name', 'lhcb_names', 'p_eta', 'p_eta32', 'p_mag', 'particle_mass', 'pdg_charge', 'pdg_mass', 'pt', 'rebuild_momentum', 'species', 'species_index', 'species_mass', 'species_of_pdg', 'state_at_beam', 'store_name'],
    "mambah.nn": ['CramerGAN', 'EfficiencyModel', 'FlagModel', 'Model', 'OccupancyModel', 'OutOfRangeWarning', 'PidModel', 'QuantileGaussianizer', 'RangeCounts', 'ResolutionModel', 'TrackStateNet', 'load_model'],
    "mambah.pid": ['PID', 'PidChain', 'available_chains', 'load_chain'],
    "mambah.reconstruction": ['Bremsstrahlung', 'Composites', 'Efficiency', 'Neutrals', 'Occupancy', 'Resolution', 'TrackAcceptance', 'Vertexing'],
    "mambah.training": ['CramerGANTrainer', 'FlagConfig', 'FlagTrainer', 'GANConfig', 'GANInit', 'PidEnsemble', 'build_occupancy_model', 'fit_efficiency', 'fit_resolution', 'fit_sweights', 'fit_trackstate', 'save_flag_model', 'save_pid_model', 'set_determinism', 'train_ensemble'],
    "mambah.validation": ['BDTKSResult', 'CLASSIFIER_DEFAULTS', 'Cut', 'bdt_ks_null', 'bdt_ks_score', 'chain_closure', 'default_bins', 'effective_size', 'efficiency_in_bins', 'efficiency_pulls', 'parse_cut', 'pid_efficiency', 'pull_score', 'pull_summary', 'sanity_cases', 'sanity_table', 'validate', 'validate_production', 'weighted_auc', 'weighted_ecdf', 'weighted_ks', 'weighted_quantiles', 'write_report'],
    "mambah.store": ['BatchValidationError', 'DEFAULT_URL', 'KEYS', 'Store', 'candidate_ntuple', 'default_prefixes', 'export_ntuple', 'export_parquet', 'export_root', 'normalise_url'],
    "mambah.reference": ['TrackGun', 'TrackStateModel', 'TrackingDetector', 'tracking_sample', 'trackstate_sample'],
    "mambah.generation": ['ALIASES', 'DecayNode', 'Descriptor', 'EtaAcceptance', 'Fixed', 'Histogram', 'ParticleGun', 'ParticleInfo', 'PhaseSpaceDecay', 'PowerLawPt', 'TruncatedGaussian', 'Uniform', 'as_sampler', 'boost_to_lab', 'default_eta', 'default_pt', 'generator_stages', 'known_models', 'parse_descriptor', 'resolve'],
}


@pytest.mark.parametrize("module", sorted(API))
def test_public_names_are_pinned(module):
    mod = importlib.import_module(module)
    assert sorted(mod.__all__) == API[module]


@pytest.mark.parametrize("module", sorted(API))
def test_public_names_resolve_and_are_listed(module):
    mod = importlib.import_module(module)
    for name in mod.__all__:
        assert getattr(mod, name) is not None, f"{module}.{name}"
    assert set(mod.__all__) <= set(dir(mod))


@pytest.mark.parametrize("module", [m for m in sorted(API) if m != "mambah.nn"])
def test_subpackage_import_stays_light(module):
    """Importing a package (not using its names) loads no TensorFlow."""
    code = f"import sys, {module}; print('tensorflow' in sys.modules or 'keras' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
