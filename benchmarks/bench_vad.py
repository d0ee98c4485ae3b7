"""Silero VAD, every ONNX export its wheel ships, streamed window by window: mcopt vs onnxruntime.

The ``silero-vad`` wheel (6.2.3) ships six exports of the same voice-activity detector (an STFT as a
conv, a small CNN encoder, an LSTM of 128 whose state is carried between calls, a sigmoid): the
default one and two others test the sample rate (an input, ``sr``) or the state's batch in ``If``
nodes, one is batch-dynamic without ``If``, one runs a whole sequence of windows per call. A
deployment streams 512-sample windows (16 kHz, 32 ms) through it, each after the last 64 samples of
the window before (576 in all, as the wheel's ``OnnxWrapper`` feeds it), the state of one call the
input of the next, at batch 1: per-call time is what matters.

Input: 200 windows of synthetic audio (speech-like bursts: harmonics of a gliding 120-220 Hz
pitch under a syllable envelope, between stretches of noise; no pass fits on it). Each engine
streams all windows from a zero state; quality is the largest difference of its speech
probabilities from onnxruntime's on the original file over the stream. mcopt builds with
``input_values={"sr": 16000}`` where ``sr`` is an input (the ``If`` on it then folds). Time: one
window from the zero state, engines alternating (bench_cpu.interleaved), medians; 2 threads.

Run: ``python benchmarks/bench_vad.py``; writes bench-out/vad.md and .json.
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
WHEEL = "silero-vad==6.2.3"
EXPORTS = (
    "silero_vad.onnx", "silero_vad_16k_op15.onnx", "silero_vad_half.onnx",
    "silero_vad_op18_ifless.onnx", "silero_vad_openvino_16k.onnx", "silero_vad_16k_sequence.onnx",
)  # fmt: skip
RATE, WINDOW, CONTEXT = 16000, 512, 64


def fetch(name: str) -> Path:
    from common import wheel_file

    return wheel_file(WHEEL, f"silero_vad/data/{name}", CACHE / f"silero_{name}")


def audio(windows: int, seed: int = 0) -> np.ndarray:
    """Speech-like bursts between noise, float32 in [-1, 1]."""
    rng = np.random.default_rng(seed)
    n = windows * WINDOW
    t = np.arange(n) / RATE
    y = rng.standard_normal(n) * 0.01
    pos = 0
    while pos < n:
        gap, talk = int(rng.uniform(0.2, 0.6) * RATE), int(rng.uniform(0.4, 1.2) * RATE)
        a, b = pos + gap, min(n, pos + gap + talk)
        if a < b:
            tt = t[a:b] - t[a]
            f0 = rng.uniform(120, 220) * (1 + 0.2 * np.sin(2 * np.pi * 0.7 * tt))
            phase = 2 * np.pi * np.cumsum(f0) / RATE
            voice = sum(np.sin(k * phase) / k for k in range(1, 12))
            env = np.abs(np.sin(np.pi * tt * rng.uniform(3, 6)))
            y[a:b] += 0.3 * voice * env
        pos = b
    return np.clip(y, -1, 1).astype(np.float32)


def _io(path: Path) -> tuple[list[str], bool, dict[str, list[int]]]:
    import onnx

    m = onnx.load(path, load_external_data=False)
    names = [i.name for i in m.graph.input if i.name not in {t.name for t in m.graph.initializer}]
    seq = "h" in names
    width = WINDOW + CONTEXT
    shapes = {"input": [4, width]} if seq else {"input": [1, width], "state": [2, 1, 128]}
    if seq:
        shapes |= {"h": [1, 1, 128], "c": [1, 1, 128]}
    return names, seq, shapes


def bench(name: str, rounds: int, log: Any) -> list[dict[str, Any]]:
    from bench_cpu import interleaved
    from common import ort_session

    import mcopt

    path = fetch(name)
    names, seq, shapes = _io(path)
    values = {"sr": np.array(RATE, np.int64)} if "sr" in names else {}
    import onnx

    sess = ort_session(onnx.load(path))
    res = mcopt.optimize(path, target="cpu", input_shapes=shapes,
                         input_values={k: int(v) for k, v in values.items()} or None,
                         measure=False, check=False)  # fmt: skip
    log(f"{name}: built")
    sound = np.concatenate([np.zeros(CONTEXT, np.float32), audio(200)])
    starts = range(0, len(sound) - CONTEXT - WINDOW + 1, WINDOW)
    windows = np.stack([sound[i : i + CONTEXT + WINDOW] for i in starts])  # (200, 576)
    if seq:  # 4 windows per call: (4, 576)
        chunks = [windows[i : i + 4] for i in range(0, len(windows) - 3, 4)]
        zero = {"h": np.zeros((1, 1, 128), np.float32), "c": np.zeros((1, 1, 128), np.float32)}
    else:
        chunks = [w[None] for w in windows]
        zero = {"state": np.zeros((2, 1, 128), np.float32)}

    def stream(run: Any) -> np.ndarray:
        state, probs = dict(zero), []
        for x in chunks:
            out = run({"input": x, **state})
            probs.append(np.asarray(out[0]).reshape(-1))
            state = {"h": out[1], "c": out[2]} if seq else {"state": out[1]}
        return np.concatenate(probs)

    ort_run = lambda f: sess.run(None, {**f, **values})  # noqa: E731
    mc_run = lambda f: res.compiled.run(f)  # noqa: E731
    ref, got = stream(ort_run), stream(mc_run)
    first = {"input": chunks[0], **zero}
    times = interleaved({"onnxruntime": lambda: ort_run(first), "mcopt": lambda: mc_run(first)},
                        rounds=rounds, budget_s=0.3, max_runs=2000)  # fmt: skip
    o, m = times["onnxruntime"]["median_ms"], times["mcopt"]["median_ms"]
    return [{
        "export": name, "call": f"{'4x' if seq else '1x'}{CONTEXT}+{WINDOW} samples", "ort_ms": o, "mcopt_ms": m,
        "speedup": o / m, "max_prob_diff": float(np.abs(ref - got).max()),
        "speech_frames": f"{int((ref > 0.5).sum())}/{len(ref)}",
        "note": "input_values sr=16000" if values else "",
    }]  # fmt: skip


def render_md(rows: list[dict[str, Any]]) -> str:
    from common import markdown_table

    shown = [{**r, "speedup_md": f"**{r['speedup']:.2f}x**"} for r in rows]
    return markdown_table(shown, [
        ("export", "export", ""), ("call", "one call", ""), ("ort_ms", "onnxruntime ms", ".4f"),
        ("mcopt_ms", "mcopt ms", ".4f"), ("speedup_md", "mcopt speedup", ""),
        ("max_prob_diff", "max prob diff (stream)", ".2e"),
        ("speech_frames", "speech windows (ort)", ""), ("note", "note", ""),
    ])  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", default=",".join(EXPORTS), help="comma-separated export file names")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args(argv)
    from common import pick_models, run_selected

    def run_one(name: str) -> list[dict[str, Any]]:
        return bench(name, args.rounds, lambda m: print(m, flush=True))

    return run_selected(pick_models(args.only, EXPORTS), run_one, render_md, "vad")


if __name__ == "__main__":
    raise SystemExit(main())
