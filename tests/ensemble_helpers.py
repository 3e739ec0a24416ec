"""Tiny ensembles for tests and benchmarks: a models directory whose chosen PID chain steps get
K "members" made from the step's own generator with perturbed weights.

The members are not trained (bootstrap training is tested in tests/test_ensemble.py); they are
generators of the step's architecture, sharing its preprocessing, whose outputs differ from the
nominal's by an amount set by ``scale`` (relative Gaussian perturbation of every weight).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from mambah.nn.support import support_of

MODELS = Path(__file__).resolve().parent.parent / "models"


def perturbed_members(src: Path, dst: Path, k: int, *, scale: float = 0.05, seed: int = 1) -> Path:
    """Copy the GAN model directory ``src`` to ``dst`` with ``k`` perturbed members (card updated)."""
    import keras

    from mambah.modeldir import load_arrays, load_network, save_model_dir

    card = json.loads((src / "card.json").read_text())
    for key in ("files", "format", "created", "mambah_version"):
        card.pop(key, None)
    gen = load_network(src, "generator")
    rng = np.random.default_rng(seed)
    nets = {"generator": gen}
    files = []
    for j in range(1, k + 1):
        m = keras.models.clone_model(gen)
        m.set_weights([w * (1.0 + scale * rng.standard_normal(w.shape)).astype(w.dtype) for w in gen.get_weights()])
        name = f"members/member-{j:02d}"
        nets[name] = m
        files.append(name + ".keras")
    card["ensemble"] = {"members": k, "files": files, "seeds": list(range(1, k + 1)),
                        "bootstrap": "none: perturbed weights (tests)", "warm_start": False}
    correction = card.pop("marginal_correction", None)
    save_model_dir(dst, card, networks=nets, arrays=load_arrays(src), support=support_of(src))
    return _carry_correction(src, dst, correction, k)


def _carry_correction(src: Path, dst: Path, section: dict | None, k: int, member: int = 0) -> Path:
    """Give ``dst`` the calibration of ``src`` (if it has one: quantile maps or logit shifts): that of
    ``src``'s member ``member`` (0: the nominal's) for the nominal and each of ``dst``'s ``k`` members
    (the source's member maps belong to the source's members)."""
    if section is None:
        return dst
    from mambah.modeldir import update_model_dir
    from mambah.nn.marginals import load_calibration

    c = load_calibration(src).select_members([member] * (k + 1))
    return update_model_dir(dst, c.save, {"marginal_correction": dict(section, members={"n": k, "note": "tests: the "
                                                                                       "nominal's map"})})


def perturbed_flag_members(src: Path, dst: Path, k: int, *, scale: float = 0.05, seed: int = 1) -> Path:
    """Copy the flag model directory ``src`` to ``dst`` with ``k`` perturbed members (arrays ``m<kk>_net_*``)."""
    from mambah.modeldir import load_arrays, load_network, save_model_dir
    from mambah.nn.flags import member_prefix

    card = json.loads((src / "card.json").read_text())
    for key in ("files", "format", "created", "mambah_version"):
        card.pop(key, None)
    arrays = {key: v for key, v in load_arrays(src).items()
              if not (key[:1] == "m" and key[1:3].isdigit() and key[3:4] == "_")}  # not src's own members
    rng = np.random.default_rng(seed)
    net = {key: v for key, v in arrays.items() if key.startswith("net_")}
    for j in range(1, k + 1):
        for key, v in net.items():
            arrays[member_prefix(j) + key] = (v * (1.0 + scale * rng.standard_normal(v.shape))).astype(v.dtype)
    card["ensemble"] = {"members": k, "seeds": list(range(1, k + 1)), "bootstrap": "none: perturbed weights (tests)",
                        "warm_start": False}
    correction = card.pop("marginal_correction", None)
    save_model_dir(dst, card, networks={"classifier": load_network(src, "classifier")}, arrays=arrays,
                   support=support_of(src))
    return _carry_correction(src, dst, correction, k)


def flag_member_as_nominal(src: Path, dst: Path, k: int) -> Path:
    """A flag model directory whose network is member k of ``src``: an independent evaluation."""
    from mambah.modeldir import load_arrays, load_network, save_model_dir
    from mambah.nn.flags import member_prefix

    card = json.loads((src / "card.json").read_text())
    for key in ("files", "format", "created", "mambah_version", "ensemble"):
        card.pop(key, None)
    arrays = {key: v for key, v in load_arrays(src).items() if not (key[:1] == "m" and key[1:3].isdigit())}
    arrays.update({key[len(member_prefix(k)):]: v for key, v in load_arrays(src).items()
                   if key.startswith(member_prefix(k))})
    correction = card.pop("marginal_correction", None)
    save_model_dir(dst, card, networks={"classifier": load_network(src, "classifier")}, arrays=arrays,
                   support=support_of(src))
    return _carry_correction(src, dst, correction, 0, member=k)


def without_members(src: Path, dst: Path) -> Path:
    """Copy the model directory ``src`` (a GAN or a flag model with an ensemble) to ``dst`` without its members."""
    from mambah.modeldir import load_arrays, load_network, save_model_dir

    card = json.loads((src / "card.json").read_text())
    for key in ("files", "format", "created", "mambah_version", "ensemble"):
        card.pop(key, None)
    arrays = {k: v for k, v in load_arrays(src).items() if not (k[:1] == "m" and k[1:3].isdigit() and k[3:4] == "_")}
    net = "classifier" if card.get("kind") == "pid-flags" else "generator"
    correction = card.pop("marginal_correction", None)
    save_model_dir(dst, card, networks={net: load_network(src, net)}, arrays=arrays, support=support_of(src))
    return _carry_correction(src, dst, correction, 0)


def models_with_members(tmp: Path, members: dict[str, int], *, links=None, scale: float = 0.05) -> Path:
    """A models directory under ``tmp``: links to every shipped model (or those of ``links``), except
    the models named in ``members`` (``{name: K}``), copied with K perturbed members, and the shipped
    PID models with ensembles of their own, copied without them (so that only ``members`` vary)."""
    d = Path(tmp) / "models"
    d.mkdir(parents=True, exist_ok=True)
    for p in sorted(MODELS.iterdir()):
        if not (p / "card.json").exists() or (links is not None and p.name not in links):
            continue
        if p.name in members:
            kind = json.loads((p / "card.json").read_text()).get("kind")
            make = perturbed_flag_members if kind == "pid-flags" else perturbed_members
            make(p, d / p.name, members[p.name], scale=scale, seed=len(p.name))
        elif json.loads((p / "card.json").read_text()).get("ensemble") and p.name.startswith("pid-") \
                and p.name.count("-") == 2:  # a chain step's own members (the real proton model keeps its own)
            without_members(p, d / p.name)
        else:
            os.symlink(p, d / p.name)
    return d
