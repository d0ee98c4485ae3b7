"""Guest side of :mod:`mcopt.targets.arm.icount`: run inside the emulated aarch64 Python under
``qemu-aarch64 -plugin libicount.so`` (never imported by mcopt; needs only numpy and the runtime).

    python3.11 icount_guest.py SPEC.json

SPEC: ``{"marker": 28003, "jobs": [{"name", "kind": "tvm" | "onnx" | "kernel", "path", "inputs",
"outputs", "n"}]}``. Per job: load the model (an exported TVM Relax library through the runtime's
VirtualMachine, an ONNX file in an onnxruntime session with one thread, or a "kernel": one
compiled PrimFunc, e.g. a MetaSchedule candidate, called with ``inputs`` as its buffers), run it
once uncounted (warm-up; its outputs go to ``outputs`` as .npz; none for a kernel, whose outputs
are buffers it writes), count an empty window (the marker calls alone),
then a window around ``n`` inferences, and print one line
``MCOPT_ICOUNT {"name", "kind", "n", "window", "empty", "per_inference"}`` with
``per_inference = (window - empty) / n``.

The marker is a syscall number nobody uses: ``syscall(marker, 1)`` opens the plugin's counting
window, ``syscall(marker, 2, fd, tag)`` closes it and has the plugin write the count to ``fd`` (a
pipe: qemu-user shares file descriptors with the host).
"""

import ctypes
import json
import os
import sys

import numpy as np

_PIPE = []


def count(marker, fn, n, tag=0):
    """Instructions the plugin counted while ``fn`` ran ``n`` times (marker calls included)."""
    if not _PIPE:
        libc = ctypes.CDLL(None)
        libc.syscall.restype = ctypes.c_long
        _PIPE.extend([libc.syscall, *os.pipe()])
    syscall, read_fd, write_fd = _PIPE
    c = ctypes.c_long
    syscall(c(marker), c(1))
    for _ in range(n):
        fn()
    syscall(c(marker), c(2), c(write_fd), c(tag))
    text = os.read(read_fd, 64).decode().strip()
    if not text:
        raise RuntimeError("the counting plugin did not answer (is qemu running with -plugin?)")
    return int(text)


def _flat(o):
    if hasattr(o, "numpy"):
        return [o.numpy()]
    res = []
    for item in o:
        res.extend(_flat(item))
    return res


def _tvm_runner(path, inputs):
    import tvm
    from tvm.runtime.vm import VirtualMachine

    dev = tvm.cpu()
    vm = VirtualMachine(tvm.runtime.load_module(path), dev)
    args = [tvm.runtime.tensor(a, dev) for a in inputs]
    main = vm["main"]
    return (lambda: main(*args)), (lambda: _flat(main(*args)))


def _kernel_runner(path, inputs):
    import tvm

    dev = tvm.cpu()
    mod = tvm.runtime.load_module(path)
    func = mod[getattr(mod, "entry_name", None) or "main"]
    args = [tvm.runtime.tensor(a, dev) for a in inputs]
    return (lambda: func(*args)), (lambda: [func(*args)][:0])


def _onnx_runner(path, inputs):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    feed = {i.name: a for i, a in zip(sess.get_inputs(), inputs)}
    return (lambda: sess.run(None, feed)), (lambda: sess.run(None, feed))


def main(argv):
    with open(argv[1]) as f:
        spec = json.load(f)
    marker = int(spec.get("marker", 0x6D63))
    for k, job in enumerate(spec["jobs"]):
        with np.load(job["inputs"]) as f:
            inputs = [f[f"arg{i}"] for i in range(len(f.files))]
        make = {"tvm": _tvm_runner, "onnx": _onnx_runner, "kernel": _kernel_runner}[job["kind"]]
        run, run_outputs = make(job["path"], inputs)
        outs = run_outputs()  # warm-up, uncounted
        np.savez(job["outputs"], **{f"out{i}": np.asarray(o) for i, o in enumerate(outs)})
        n = int(job["n"])
        empty = count(marker, run, 0, tag=2 * k)
        window = count(marker, run, n, tag=2 * k + 1)
        result = {
            "name": job["name"],
            "kind": job["kind"],
            "n": n,
            "window": window,
            "empty": empty,
            "per_inference": (window - empty) / n if n else None,
        }
        print("MCOPT_ICOUNT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
