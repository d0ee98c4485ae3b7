"""How much a model's output moves under tiny input noise: the sensitivity that bounds what any
lossy build (int8, pruning) can agree with the original on.

For each model, onnxruntime fp32 on ``--n`` random test inputs (the same seeded inputs as
``bench_quant.py``), each also with Gaussian noise of std ``eps`` added (inputs have std 1):
the mean relative output change and the top-1 agreement with the clean output. Random-weight BN
networks at initialization are chaotic — a 0.1 % perturbation can flip several percent of their
top-1 — which is why their int8 agreement figures sit far below 100 % for every engine; trained
models are not.

    python benchmarks/bench_noise.py
    python benchmarks/bench_noise.py --models resnet50,mobilenet_v2 --eps 1e-3,1e-2
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_quant import MODELS, load  # noqa: E402
from common import markdown_table, ort_session, write_outputs  # noqa: E402


def sensitivity(name: str, eps_list: list[float], n: int) -> dict[str, Any]:
    proto, _calib, test, _labels = load(name)
    sess = ort_session(proto)
    rng = np.random.default_rng(1)
    row: dict[str, Any] = {"model": name}
    for eps in eps_list:
        errs, agree = [], []
        for feed in test[:n]:
            ref = sess.run(None, feed)[0].reshape(-1)
            noisy = {
                k: (x + eps * rng.standard_normal(x.shape)).astype(np.float32)
                for k, x in feed.items()
            }
            out = sess.run(None, noisy)[0].reshape(-1)
            errs.append(float(np.linalg.norm(out - ref) / max(np.linalg.norm(ref), 1e-30)))
            agree.append(int(out.argmax() == ref.argmax()))
        row[f"err_{eps:g}"] = float(np.mean(errs))
        row[f"agree_{eps:g}"] = float(np.mean(agree))
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--eps", default="1e-3,1e-2", help="noise standard deviations")
    ap.add_argument("--n", type=int, default=50, help="test inputs per model")
    ap.add_argument("--out", default="bench/noise")
    args = ap.parse_args()
    eps_list = [float(e) for e in args.eps.split(",")]
    rows = [sensitivity(m, eps_list, args.n) for m in args.models.split(",")]
    cols = [("model", "model", "")]
    for e in eps_list:
        cols += [(f"err_{e:g}", f"eps={e:g}: rel. output change", ".2g"),
                 (f"agree_{e:g}", f"eps={e:g}: top-1 agreement", ".2f")]  # fmt: skip
    md = markdown_table(rows, cols)
    print(md)
    write_outputs(Path(args.out), "noise", rows, md)


if __name__ == "__main__":
    main()
