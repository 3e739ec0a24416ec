"""``mambah models list|show|export-onnx``: the trained models shipped with mambah (or under --models)."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("models", help="list, show or export trained models",
                       description="List the model directories under the models directory, show a model's "
                                   "card, or export a PID generator to ONNX.")
    p.add_argument("--models", default=None, help="models directory (default: $MAMBAH_MODELS or the shipped models/)")
    acts = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    a = acts.add_parser("list", help="one line per model")
    a.set_defaults(func=run_list)
    a = acts.add_parser("show", help="print a model's card (JSON)")
    a.add_argument("model", help="model directory or name")
    a.add_argument("--history", action="store_true", help="include the training history")
    a.set_defaults(func=run_show)
    a = acts.add_parser("export-onnx", help="write the generator as ONNX (inputs: conditions, noise)")
    a.add_argument("model", help="model directory or name")
    a.add_argument("--out", "-o", default=None, help="ONNX file (default: DIR/generator.onnx beside the model)")
    a.set_defaults(func=run_export)


def run_list(args) -> int:
    from mambah.modeldir import default_models_dir, list_models

    root = args.models or default_models_dir()
    cards = list_models(root)
    if not cards:
        print(f"no models under {root}")
        return 0
    for c in cards:
        m = c.get("metrics", {})
        score = f"BDT-KS {m['valid_bdt_ks']:.3f}" if isinstance(m.get("valid_bdt_ks"), (int, float)) else ""
        if "marginal_correction" in c:  # the GAN's outputs are calibrated (mambah.nn.marginals)
            score += " +marginals"
        conds = ",".join(str(x.get("name", x)) if isinstance(x, dict) else str(x) for x in c.get("conditions", []))
        targs = ",".join(str(x.get("name", x)) if isinstance(x, dict) else str(x) for x in c.get("targets", []))
        species = c.get("species") or ""
        species = ",".join(map(str, species)) if isinstance(species, (list, tuple)) else str(species)
        print(f"{str(c.get('name', '?')):32s} v{str(c.get('version', '?')):4s} {str(c.get('kind', '?')):10s} "
              f"{species:12s} {targs} | {conds}  {score}")
    return 0


def run_show(args) -> int:
    import json

    from mambah.modeldir import resolve_model, verify_model_dir

    card = verify_model_dir(resolve_model(args.model, args.models))
    if not args.history and isinstance(card.get("training"), dict):
        card["training"] = {k: v for k, v in card["training"].items() if k != "history"}
    print(json.dumps(card, indent=2))
    return 0


def run_export(args) -> int:
    from pathlib import Path

    from mambah.modeldir import resolve_model
    from mambah.nn.pidmodel import PidModel

    path = resolve_model(args.model, args.models)
    m = PidModel.load(path)
    out = Path(args.out) if args.out else path.parent / f"{path.name}.onnx"
    m.export_onnx(out)
    print(f"wrote {out} (inputs: conditions {m.conditions} after the quantile transform of arrays.npz, "
          f"noise [{m.n_noise}] ~ N(0,1); output: {m.targets} in the transformed space)")
    return 0
