"""Train the reference detector's ProbNN once (``mambah/reference/probnn_weights``).

The network and its definition are in :mod:`mambah.reference.probnn`. The shipped weights were made with::

    nice -n 10 python examples/train_reference_probnn.py --per-class 100000 --seed 24 --epochs 20

(training sample seed 24, held-out seed 25; the card records the command and the held-out
one-vs-rest AUCs). Retraining changes the reference detector's ProbNN, so every ProbNN step of the
PID chains must be retrained after it.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys

from mambah.reference.probnn import WEIGHTS_DIR
from mambah.reference.probnn_training import train_reference_probnn


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(WEIGHTS_DIR))
    ap.add_argument("--per-class", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=24)
    ap.add_argument("--epochs", type=int, default=20)
    a = ap.parse_args(argv)
    cmd = "python examples/train_reference_probnn.py " + " ".join(shlex.quote(x) for x in (sys.argv[1:] if argv is None else argv))
    card = train_reference_probnn(a.out, a.per_class, a.seed, a.epochs, command=cmd)
    print(json.dumps(card["metrics"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
