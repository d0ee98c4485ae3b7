"""openWakeWord, every ONNX model its wheel ships, on the features of a stream: mcopt vs onnxruntime.

The ``openwakeword`` 0.4.0 wheel ships a three-stage wake-word detector, run every 80 ms of 16 kHz
audio (none is in mcopt's tests or other benchmarks):

- ``melspectrogram``: a PyTorch export (an STFT as two 512-tap strided convs, power, a mel matrix,
  ``log10`` with a top-80-dB floor written as ``Clip(x, ReduceMax(x) - 80)``), one call on the
  last 1760 samples -> 8 frames of 32 mel bins;
- ``embedding``: a TensorFlow CNN (20 convs, each ``Max(LeakyRelu(conv), -0.4)``, 1x3 / 3x1
  kernels, max pools), one call on the last 76 mel frames -> a 96-d embedding;
- the wake-word heads (``alexa``, ``hey_jarvis``, ``hey_mycroft``, ``hey_marvin``, ``timer``,
  ``weather``): small dense nets on the last 16-34 embeddings; PyTorch exports with LayerNorm
  spelled out, ``hey_jarvis`` with a verifier net in an ``If`` on its first score (mcopt runs both
  branches and selects: the verifier's work is in every call), ``hey_mycroft`` a TensorFlow one.

Inputs: the features of synthetic speech-like audio (bench_vad.audio) computed as openWakeWord
does (its ``melspec / 10 + 2`` scaling), by onnxruntime on the original models; 64 calls of one
recording calibrate both int8 builds, 256 of another are scored. Quality against onnxruntime fp32:
the largest output difference, and for the heads the share of calls whose score is on the same side
of 0.5. Engines as in bench_wheels: onnxruntime fp32, onnxruntime int8 (``quantize_static``, QDQ,
per-channel), mcopt lossless (``cleanup``), mcopt int8 (``cleanup`` + ``quantize-int8``); batch 1,
2 threads, alternating bursts (bench_cpu.interleaved), medians.

Run: ``python benchmarks/bench_wakeword.py [--only melspectrogram,embedding,alexa,...]``; writes
bench-out/wakeword.md and .json.
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

CACHE = Path.home() / ".cache" / "mcopt" / "wheels"
WHEEL = "openwakeword==0.4.0"
FRAME, MEL_SAMPLES, MEL_FRAMES = 1280, 1760, 76
HEADS = {  # head -> embeddings per call (its input's second dim)
    "alexa": 16, "hey_jarvis": 16, "hey_mycroft": 16, "hey_marvin": 16, "timer": 34, "weather": 22,
}  # fmt: skip
MODELS = ("melspectrogram", "embedding", *HEADS)


def fetch(name: str) -> Path:
    from common import wheel_file

    file = {"embedding": "embedding_model"}.get(name, name)
    file = f"{file}_v0.1" if name in HEADS else file
    member = f"openwakeword/resources/models/{file}.onnx"
    return wheel_file(WHEEL, member, CACHE / f"oww_{file}.onnx")


@functools.lru_cache(maxsize=4)
def features(calls: int, seed: int) -> dict[str, np.ndarray]:
    """Each stage's inputs for `calls` consecutive 80 ms frames of one recording (computed with
    onnxruntime on the original models, as openWakeWord streams them)."""
    import onnx
    from bench_vad import audio
    from common import ort_session

    mel_s = ort_session(onnx.load(fetch("melspectrogram")))
    emb_s = ort_session(onnx.load(fetch("embedding")))
    warm = MEL_FRAMES // 8 + max(HEADS.values())  # frames before every stage has its history
    total = calls + warm
    sound = audio(total * FRAME // 512 + 8, seed)[: total * FRAME + MEL_SAMPLES]
    mel_in, mels, emb_in, embs = [], [], [], []
    for k in range(total):
        x = sound[k * FRAME : k * FRAME + MEL_SAMPLES][None]
        mel_in.append(x)
        mels.append(mel_s.run(None, {"input": x})[0][0, 0] / 10 + 2)  # (8, 32)
        hist = np.concatenate(mels[-(MEL_FRAMES // 8 + 1) :])[-MEL_FRAMES:]
        if len(hist) < MEL_FRAMES:
            continue
        e_in = hist[None, :, :, None].astype(np.float32)
        emb_in.append(e_in)
        embs.append(emb_s.run(None, {"input_1": e_in})[0].reshape(96))
    out = {"melspectrogram": np.concatenate(mel_in[-calls:]),
           "embedding": np.concatenate(emb_in[-calls:])}  # fmt: skip
    for head, n in HEADS.items():
        out[head] = np.stack([np.stack(embs[i - n : i]) for i in range(len(embs) - calls + 1,
                                                                           len(embs) + 1)])  # fmt: skip
    return {k: v.astype(np.float32) for k, v in out.items()}


def _quality(head: bool) -> Any:
    def q(outs: list[list[np.ndarray]], refs: list[list[np.ndarray]]) -> dict[str, Any]:
        o = np.stack([np.asarray(x[0]).reshape(-1) for x in outs])
        r = np.stack([np.asarray(x[0]).reshape(-1) for x in refs])
        res: dict[str, Any] = {"max_diff": float(np.abs(o - r).max())}
        if head:
            res["quality"] = (
                f"same side of 0.5 {float(((o >= 0.5) == (r >= 0.5)).mean()):.3f} "
                f"(ref {int((r >= 0.5).any(axis=1).sum())} above)"
            )
        else:
            scale = float(np.abs(r).max())
            res["quality"] = f"max diff / max {float(np.abs(o - r).max()) / scale:.1e}"
        return res

    return q


def bench(name: str, rounds: int, log: Any) -> list[dict[str, Any]]:
    from common import four_engines_rows

    calib, evals = features(64, seed=1)[name], features(256, seed=2)[name]
    return four_engines_rows(
        name, fetch(name), (1, *calib.shape[1:]), calib, evals,
        _quality(name in HEADS), rounds=rounds, log=log, max_runs=2000,
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", default=",".join(MODELS), help="comma-separated models")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args(argv)
    from common import four_engines_md, pick_models, run_selected

    def render(rows: list[dict[str, Any]]) -> str:
        return four_engines_md(rows, "quality vs ort fp32 (held-out stream)", "max diff",
                               "max_diff", ".2e")  # fmt: skip

    def run_one(name: str) -> list[dict[str, Any]]:
        return bench(name, args.rounds, lambda m: print(m, flush=True))

    return run_selected(pick_models(args.only, MODELS), run_one, render, "wakeword", key="model")


if __name__ == "__main__":
    raise SystemExit(main())
