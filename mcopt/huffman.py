"""Huffman coding of compressed weights and the ``.mcz`` file (Deep Compression's last stage).

Codes. Canonical Huffman codes (Huffman 1952; canonical form as in DEFLATE, RFC 1951 sec. 3.2.2):
code lengths from the symbol counts with a ``heapq`` merge, limited to :data:`MAX_LEN` bits (counts
flattened until the longest code fits), codes assigned in (length, symbol) order, so only the
lengths are stored. Encoding and decoding are vectorized with numpy (decoding: a table of
``2**L`` entries giving the symbol and length at every bit offset, then the chain of offsets).

What is coded (Han et al. sec. 4: "the quantized weights and the sparse index differences"):

- codebook indices (:class:`~mcopt.ops.codebook.CodebookIndices`), dense: the index stream;
- sparse codebook indices: the relative-position stream and the index stream of the entries;
- CSR-pruned float weights (:class:`~mcopt.ir.types.Sparse`): the relative positions (Huffman) and
  the float32 values of the entries (raw);
- integer codes narrower than their dtype (4-bit quantized / fixed-point weights held in int8):
  bit-packed at their width, so the file holds the bytes the report counts;
- everything else: raw bytes.

File. ``MCZ1`` | u32 header length | zlib-compressed JSON header (the graph: inputs, nodes with attributes and output
types, outputs, metadata; per constant: name, shape, dtype, encoding, codec and its stream
descriptions with the canonical code lengths) | payload. :func:`load_compressed` rebuilds an equal
graph (same printout, bit-identical constants). Lossless.
"""

from __future__ import annotations

import dataclasses
import heapq
import importlib
import json
import os
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from mcopt.errors import ModelLoadError, OptionError
from mcopt.ir.core import Graph, Node, Value
from mcopt.ir.types import Encoding, Sparse, TensorType

MAGIC = b"MCZ1"
#: longest code (bits); the decoding table has 2**MAX_LEN entries
MAX_LEN = 20


# --- canonical Huffman ---------------------------------------------------------------------------------
def code_lengths(counts: np.ndarray, max_len: int = MAX_LEN) -> np.ndarray:
    """Huffman code length per symbol (0 for absent symbols), at most ``max_len`` bits."""
    counts = np.asarray(counts, np.int64)
    present = np.flatnonzero(counts)
    lengths = np.zeros(counts.size, np.int64)
    if present.size == 0:
        return lengths
    if present.size == 1:
        lengths[present] = 1
        return lengths
    c = counts[present].astype(np.float64)
    while True:
        heap: list[tuple[float, int, list[int]]] = [(float(w), i, [i]) for i, w in enumerate(c)]
        heapq.heapify(heap)
        depth = np.zeros(present.size, np.int64)
        tie = present.size
        while len(heap) > 1:
            w1, _, s1 = heapq.heappop(heap)
            w2, _, s2 = heapq.heappop(heap)
            merged = s1 + s2
            depth[merged] += 1
            heapq.heappush(heap, (w1 + w2, tie, merged))
            tie += 1
        if depth.max() <= max_len:
            lengths[present] = depth
            return lengths
        c = np.floor(c / 2) + 1  # flatten the distribution until the longest code fits


def canonical_codes(lengths: np.ndarray) -> np.ndarray:
    """Canonical codes (as integers, MSB first) for the given code lengths."""
    lengths = np.asarray(lengths, np.int64)
    codes = np.zeros(lengths.size, np.int64)
    order = sorted((int(n), s) for s, n in enumerate(lengths) if n > 0)
    code, prev = 0, 0
    for ln, s in order:
        code <<= ln - prev
        codes[s] = code
        code += 1
        prev = ln
    return codes


def huffman_encode(symbols: np.ndarray, lengths: np.ndarray) -> tuple[bytes, int]:
    """Bit-pack ``symbols`` with the canonical code of ``lengths``: (bytes, number of bits)."""
    symbols = np.asarray(symbols, np.int64)
    codes = canonical_codes(lengths)
    ln = np.asarray(lengths, np.int64)[symbols]
    cd = codes[symbols]
    nbits = int(ln.sum())
    bits = np.zeros(nbits, np.uint8)
    start = np.cumsum(ln) - ln
    for j in range(int(ln.max(initial=0))):
        m = ln > j
        bits[start[m] + j] = (cd[m] >> (ln[m] - 1 - j)) & 1
    return np.packbits(bits).tobytes(), nbits


def huffman_decode(data: bytes, nbits: int, lengths: np.ndarray, count: int) -> np.ndarray:
    """Decode ``count`` symbols from ``nbits`` bits of ``data`` (canonical code of ``lengths``)."""
    lengths = np.asarray(lengths, np.int64)
    if count == 0:
        return np.zeros(0, np.int64)
    L = int(lengths.max())
    codes = canonical_codes(lengths)
    table_sym = np.zeros(1 << L, np.int64)
    table_len = np.zeros(1 << L, np.int64)
    for s in np.flatnonzero(lengths):
        ln = int(lengths[s])
        lo = int(codes[s]) << (L - ln)
        table_sym[lo : lo + (1 << (L - ln))] = s
        table_len[lo : lo + (1 << (L - ln))] = ln
    bits = np.unpackbits(np.frombuffer(data, np.uint8))[:nbits].astype(np.int64)
    bits = np.concatenate([bits, np.zeros(L, np.int64)])
    window = np.zeros(nbits, np.int64)
    for j in range(L):  # the L-bit window starting at every bit offset
        window = (window << 1) | bits[j : j + nbits]
    step = table_len[window].tolist()
    pos, starts = 0, []
    append = starts.append
    for _ in range(count):
        append(pos)
        pos += step[pos]
    return table_sym[window[np.asarray(starts, np.int64)]]


def _stream(symbols: np.ndarray, payload: bytearray) -> dict[str, Any]:
    """Huffman-code ``symbols`` (non-negative ints) into ``payload``; the stream's description."""
    symbols = np.asarray(symbols, np.int64)
    alphabet = int(symbols.max(initial=0)) + 1
    lengths = code_lengths(np.bincount(symbols, minlength=alphabet))
    data, nbits = huffman_encode(symbols, lengths)
    off = len(payload)
    payload += data
    return {
        "codec": "huffman",
        "count": int(symbols.size),
        "lengths": lengths.astype(int).tolist(),
        "nbits": nbits,
        "offset": off,
        "nbytes": len(data),
    }


def _read_stream(desc: dict[str, Any], payload: bytes) -> np.ndarray:
    data = payload[desc["offset"] : desc["offset"] + desc["nbytes"]]
    return huffman_decode(data, desc["nbits"], np.asarray(desc["lengths"]), desc["count"])


def _raw(arr: np.ndarray, payload: bytearray) -> dict[str, Any]:
    data = np.ascontiguousarray(arr).astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()
    off = len(payload)
    payload += data
    return {"codec": "raw", "dtype": arr.dtype.name, "offset": off, "nbytes": len(data)}


def _read_raw(desc: dict[str, Any], payload: bytes) -> np.ndarray:
    data = payload[desc["offset"] : desc["offset"] + desc["nbytes"]]
    return np.frombuffer(data, np.dtype(desc["dtype"]).newbyteorder("<")).astype(desc["dtype"])


def _packed(codes: np.ndarray, bits: int, lo: int, payload: bytearray) -> dict[str, Any]:
    """Integer codes in [lo, lo + 2**bits) bit-packed at `bits` bits each (LSB first)."""
    u = (np.asarray(codes, np.int64).reshape(-1) - lo).astype(np.uint8)
    planes = np.unpackbits(u[:, None], axis=1, bitorder="little")[:, :bits]
    data = np.packbits(planes.reshape(-1), bitorder="little").tobytes()
    off = len(payload)
    payload += data
    return {
        "codec": "bitpack",
        "bits": bits,
        "lo": lo,
        "count": int(u.size),
        "offset": off,
        "nbytes": len(data),
    }


def _read_packed(desc: dict[str, Any], payload: bytes) -> np.ndarray:
    data = np.frombuffer(payload[desc["offset"] : desc["offset"] + desc["nbytes"]], np.uint8)
    bits, n = int(desc["bits"]), int(desc["count"])
    planes = np.unpackbits(data, bitorder="little")[: n * bits].reshape(n, bits)
    weights = (1 << np.arange(bits)).astype(np.int64)
    return planes.astype(np.int64) @ weights + int(desc["lo"])


def _narrow_codes(arr: np.ndarray, enc: Encoding | None) -> tuple[int, int] | None:
    """(bits, lowest code) when `arr` holds integer codes narrower than its dtype (a 4-bit
    quantized or fixed-point weight stored in int8): those are bit-packed at their real width."""
    from mcopt.ir.types import FixedPoint, UniformQuant

    if arr.dtype.kind not in "iu" or not arr.size:
        return None
    bits = enc.bits if isinstance(enc, UniformQuant | FixedPoint) else None
    if bits is None or bits >= arr.dtype.itemsize * 8 or bits > 8:
        return None
    lo = -(1 << (bits - 1)) if arr.dtype.kind == "i" else 0
    if arr.min() < lo or arr.max() >= lo + (1 << bits):
        return None
    return bits, lo


# --- encodings <-> JSON --------------------------------------------------------------------------------
def _enc_to_json(enc: Encoding | None) -> dict[str, Any] | None:
    if enc is None:
        return None
    cls = type(enc)
    fields = {f.name: getattr(enc, f.name) for f in dataclasses.fields(enc) if f.init}  # type: ignore[arg-type]
    return {"class": f"{cls.__module__}:{cls.__qualname__}", "fields": fields}


def _freeze(v: Any) -> Any:
    return tuple(_freeze(x) for x in v) if isinstance(v, list) else v


def _enc_from_json(d: dict[str, Any] | None) -> Encoding | None:
    if d is None:
        return None
    mod, _, qual = d["class"].partition(":")
    obj: Any = importlib.import_module(mod)
    for part in qual.split("."):
        obj = getattr(obj, part)
    return obj(**{k: _freeze(v) for k, v in d["fields"].items()})


def _type_json(t: TensorType) -> dict[str, Any]:
    return {"shape": list(t.shape), "dtype": t.dtype, "encoding": _enc_to_json(t.encoding)}


def _type_from(d: dict[str, Any]) -> TensorType:
    return TensorType(tuple(d["shape"]), d["dtype"], _enc_from_json(d["encoding"]))


def _attr_json(v: Any) -> Any:
    if isinstance(v, tuple | list):
        return [_attr_json(x) for x in v]
    if isinstance(v, np.generic):
        return v.item()
    return v


# --- tensors -------------------------------------------------------------------------------------------
def _encode_tensor(v: Value, payload: bytearray) -> dict[str, Any]:
    from mcopt.ops.codebook import CodebookIndices, sparse_entries

    arr = v.const
    assert arr is not None
    enc = v.type.encoding
    desc: dict[str, Any] = {"name": v.name, **_type_json(v.type)}
    if isinstance(enc, CodebookIndices) and arr.size:
        flat = arr.reshape(-1).astype(np.int64)
        if enc.gap_bits:
            gaps, idx = sparse_entries(flat, enc.gap_bits)
            desc["codec"] = "codebook-sparse"
            desc["streams"] = {"gaps": _stream(gaps, payload), "indices": _stream(idx, payload)}
        else:
            desc["codec"] = "codebook"
            desc["streams"] = {"indices": _stream(flat, payload)}
    elif isinstance(enc, Sparse) and arr.size and arr.dtype.kind == "f":
        from mcopt.ops.codebook import best_gap_bits

        flat = arr.reshape(-1)
        mask = (flat != 0).astype(np.int64)
        g, _ = best_gap_bits(mask, 32)
        gaps, _ = sparse_entries(mask, g)
        pos = np.cumsum(gaps + 1) - 1
        desc["codec"] = "csr-gaps"
        desc["gap_bits"] = g
        desc["streams"] = {"gaps": _stream(gaps, payload), "values": _raw(flat[pos], payload)}
    elif (narrow := _narrow_codes(arr, enc)) is not None:
        desc["codec"] = "bitpack"
        desc["streams"] = {"codes": _packed(arr, narrow[0], narrow[1], payload)}
    else:
        desc["codec"] = "raw"
        desc["streams"] = {"data": _raw(arr, payload)}
    return desc


def _decode_tensor(d: dict[str, Any], payload: bytes) -> np.ndarray:
    from mcopt.ops.codebook import dense_from_entries

    shape, dtype = tuple(d["shape"]), np.dtype(d["dtype"])
    size = int(np.prod(shape, dtype=np.int64))
    st = d["streams"]
    if d["codec"] == "codebook":
        flat = _read_stream(st["indices"], payload)
    elif d["codec"] == "codebook-sparse":
        flat = dense_from_entries(
            _read_stream(st["gaps"], payload), _read_stream(st["indices"], payload), size
        )
    elif d["codec"] == "csr-gaps":
        gaps = _read_stream(st["gaps"], payload)
        flat = np.zeros(size, dtype)
        flat[np.cumsum(gaps + 1) - 1] = _read_raw(st["values"], payload)
    elif d["codec"] == "raw":
        flat = _read_raw(st["data"], payload)
    elif d["codec"] == "bitpack":
        flat = _read_packed(st["codes"], payload)
    else:
        raise ModelLoadError(f"tensor {d['name']!r}: unknown codec {d['codec']!r}")
    return np.ascontiguousarray(flat.astype(dtype).reshape(shape))


# --- file ----------------------------------------------------------------------------------------------
def save_compressed(graph: Graph, path: str | os.PathLike[str]) -> dict[str, int]:
    """Write ``graph`` as a ``.mcz`` file; returns byte counts ``{"file", "header", "payload",
    "by_codec": {codec: payload bytes}}``."""
    payload = bytearray()
    tensors: list[dict[str, Any]] = []
    names: dict[int, str] = {}
    for v in graph.constants():
        if id(v) in names:
            continue
        names[id(v)] = v.name
        tensors.append(_encode_tensor(v, payload))
    nodes = []
    for n in graph.nodes:
        nodes.append(
            {
                "op": n.op,
                "name": n.name,
                "inputs": [None if v is None else v.name for v in n.inputs],
                "attrs": {k: _attr_json(v) for k, v in n.attrs.items()},
                "outputs": [{"name": o.name, **_type_json(o.type)} for o in n.outputs],
            }
        )
    try:
        meta = json.loads(json.dumps(graph.metadata, default=str))
    except (TypeError, ValueError):
        meta = {}
    header = {
        "graph": graph.name,
        "metadata": meta,
        "inputs": [{"name": v.name, **_type_json(v.type)} for v in graph.inputs],
        "outputs": [v.name for v in graph.outputs],
        "nodes": nodes,
        "tensors": tensors,
    }
    try:
        hbytes = zlib.compress(json.dumps(header, separators=(",", ":")).encode(), 9)
    except TypeError as e:
        raise OptionError(
            f"cannot write {str(path)!r}: an attribute is not serializable ({e})"
        ) from None
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(MAGIC + struct.pack("<I", len(hbytes)) + hbytes + bytes(payload))
    os.replace(tmp, path)
    by: dict[str, int] = {}
    for t in tensors:
        by[t["codec"]] = by.get(t["codec"], 0) + sum(s["nbytes"] for s in t["streams"].values())
    return {
        "file": path.stat().st_size,
        "header": len(hbytes) + 8,
        "payload": len(payload),
        "by_codec": by,  # type: ignore[dict-item]
    }


def load_compressed(path: str | os.PathLike[str]) -> Graph:
    """Read a ``.mcz`` file written by :func:`save_compressed` back into a Graph."""
    try:
        blob = Path(path).read_bytes()
    except OSError as e:
        raise ModelLoadError(f"cannot read {str(path)!r}: {e.strerror}") from None
    if blob[:4] != MAGIC or len(blob) < 8:
        raise ModelLoadError(f"{str(path)!r} is not an .mcz file (bad magic)")
    (hlen,) = struct.unpack("<I", blob[4:8])
    try:
        header = json.loads(zlib.decompress(blob[8 : 8 + hlen]))
    except (ValueError, zlib.error):
        raise ModelLoadError(f"{str(path)!r}: corrupt header") from None
    payload = blob[8 + hlen :]
    g = Graph(header["graph"])
    g.metadata = dict(header.get("metadata") or {})
    env: dict[str, Value] = {}
    for d in header["inputs"]:
        v = Value(d["name"], _type_from(d))
        g.inputs.append(v)
        g.reserve_name(v.name)
        env[v.name] = v
    for d in header["tensors"]:
        arr = _decode_tensor(d, payload)
        t = _type_from(d)
        if isinstance(t.encoding, Sparse):  # the CSR structure is rebuilt from the values
            t = TensorType(t.shape, t.dtype, Sparse.of(arr, t.encoding.index_bits), t.layout)
        v = Value(d["name"], t, arr)
        g.reserve_name(v.name)
        env[v.name] = v
    for d in header["nodes"]:
        outs = [Value(o["name"], _type_from(o)) for o in d["outputs"]]
        attrs = {k: _freeze(v) for k, v in d["attrs"].items()}
        node = Node(
            d["op"], [None if i is None else env[i] for i in d["inputs"]], outs, attrs, d["name"]
        )
        g.insert_node(node)
        for o in outs:
            env[o.name] = o
    g.outputs = [env[n] for n in header["outputs"]]
    return g


__all__ = [
    "MAX_LEN",
    "canonical_codes",
    "code_lengths",
    "huffman_decode",
    "huffman_encode",
    "load_compressed",
    "save_compressed",
]
