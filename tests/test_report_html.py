"""report.html (mcopt.report_html): a self-contained page with charts, tables and the energy estimate."""

from __future__ import annotations

import base64
import copy
import shutil
import subprocess
import sys
import types
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

import mcopt
from mcopt.analysis.energy import LayerEnergy, estimate_energy
from mcopt.analysis.sensitivity import SensitivityReport
from mcopt.report_html import (
    energy_markdown,
    energy_summary,
    match_layers,
    pareto_front,
    write_html_report,
)
from mcopt.testing import zoo

PNG = b"\x89PNG\r\n\x1a\n"


class _Page(HTMLParser):
    """Collects tags, image sources, headings and anything that could load an external resource."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.imgs: list[str] = []
        self.headings: list[str] = []
        self.external: list[str] = []
        self._in_h2 = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        a = dict(attrs)
        if tag == "img":
            self.imgs.append(a.get("src") or "")
        if tag in ("script", "link", "iframe", "object", "embed"):
            self.external.append(tag)
        for key in ("src", "href"):
            v = a.get(key) or ""
            if v and not v.startswith(("data:", "#")):
                self.external.append(v)
        self._in_h2 = tag == "h2"

    def handle_endtag(self, tag: str) -> None:
        if tag == "h2":
            self._in_h2 = False

    def handle_data(self, data: str) -> None:
        if self._in_h2:
            self.headings.append(data.strip())


def _parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    page.close()
    return page


def _png_bytes(src: str) -> bytes:
    assert src.startswith("data:image/png;base64,")
    return base64.b64decode(src.split(",", 1)[1])


@pytest.fixture(scope="module")
def result() -> mcopt.api.OptimizeResult:
    x, _ = zoo.mnist_test_set()
    return mcopt.optimize(
        zoo.lenet5_path(),
        target=None,
        passes=["cleanup", "prune-weights:sparsity=0.9"],
        calib=x[:8],
    )


def _pareto() -> list[dict]:
    rng = np.random.default_rng(0)
    pts = [
        {
            "pipeline": f"prune-weights:sparsity={s:.1f},quantize-int8",
            "accuracy_drop": float(d),
            "size_bytes": int(b),
            "latency_ms": float(lat),
            "chosen": False,
        }
        for s, d, b, lat in zip(
            np.linspace(0.1, 0.9, 8),
            rng.uniform(0, 0.03, 8),
            rng.integers(10_000, 250_000, 8),
            rng.uniform(0.05, 0.3, 8),
        )
    ]
    pts[2]["chosen"] = True
    for p in pts:  # the fields mcopt.search's candidates carry
        p["feasible"] = p["accuracy_drop"] <= 0.02
    pts.append(  # a candidate that failed: listed, not plotted
        {
            "pipeline": "xnor",
            "accuracy_drop": None,
            "size_bytes": 9_000,
            "latency_ms": None,
            "feasible": False,
            "chosen": False,
            "error": "diverged",
        }
    )
    return pts


def _sensitivity() -> SensitivityReport:
    return SensitivityReport(
        kind="weights",
        layers=["Conv_0", "Gemm_7"],
        params=[150, 48_000],
        sparsities=[0.3, 0.6, 0.9],
        errors=np.array([[0.05, 0.2, 0.8], [0.01, 0.03, 0.3]]),
    )


def test_html_report_is_self_contained(result, tmp_path: Path) -> None:
    path = write_html_report(result, tmp_path / "out" / "report.html", ort_latency_ms=0.25)
    assert path == tmp_path / "out" / "report.html" and path.is_file()
    assert [p.name for p in path.parent.iterdir()] == ["report.html"]  # no temp file left
    page = _parse(path)
    assert page.tags[0] == "html" and "table" in page.tags
    assert not page.external, page.external  # no script, no stylesheet link, no remote image
    for h in ("Summary", "Latency", "Passes", "Per layer", "Energy per inference (estimate)"):
        assert h in page.headings, page.headings
    # latency, params / MACs / weight bytes per layer, energy per layer: real PNGs
    assert len(page.imgs) == 5
    for src in page.imgs:
        data = _png_bytes(src)
        assert data.startswith(PNG) and len(data) > 5_000
    text = path.read_text(encoding="utf-8")
    assert text.count("<table>") >= 4  # summary, passes, per layer, energy components
    for needle in (
        "prune-weights:sparsity=0.9",
        "Gemm_7",
        "Conv_3",
        "energy per inference",
        "DRAM",
        "0.250 ms",
        "onnxruntime",
    ):
        assert needle in text, needle
    assert "Layer sensitivity" not in page.headings and "Pareto" not in text


def test_html_report_with_pareto_and_sensitivity(result, tmp_path: Path) -> None:
    path = tmp_path / "report.html"
    path.write_text("old")  # replaced atomically
    write_html_report(result, path, pareto=_pareto(), sensitivity=_sensitivity().to_dict())
    page = _parse(path)
    assert "Accuracy budget search: Pareto front" in page.headings
    assert "Layer sensitivity" in page.headings
    assert len(page.imgs) == 6  # 3 per-layer + energy + Pareto + sensitivity (none for timing)
    text = path.read_text(encoding="utf-8")
    assert "chosen" in text and "prune-weights:sparsity=0.3,quantize-int8" in text
    assert "diverged" in text
    # with held-out data the pass table has the metric column
    res = copy.deepcopy(result)
    res.report.metric_name, res.report.initial_metric = "accuracy", 0.99
    res.report.records[-1].metric = 0.97
    write_html_report(res, path)
    assert "held-out accuracy" in path.read_text(encoding="utf-8")
    # a SensitivityReport object works as well as its dict, and pareto may come from the result
    res = types.SimpleNamespace(**{k: getattr(result, k) for k in vars(result)})
    res.pareto = _pareto()
    write_html_report(res, path, sensitivity=_sensitivity())
    assert len(_parse(path).imgs) == 6


def test_pareto_front() -> None:
    pts = [(1.0, 0.5), (2.0, 0.2), (3.0, 0.3), (4.0, 0.1), (0.5, 0.9)]
    assert pareto_front(pts) == [4, 0, 1, 3]


def test_report_degrades_gracefully(result, tmp_path: Path, monkeypatch) -> None:
    # only a graph and its original: no report, costs, notes or latency
    bare = types.SimpleNamespace(
        graph=result.graph, original=result.original, artifacts={"model.mcz": 30_516}
    )
    path = write_html_report(bare, tmp_path / "bare.html")
    page = _parse(path)
    assert "Summary" in page.headings and "Passes" not in page.headings
    assert "Files" in page.headings and "30,516 B" in path.read_text(encoding="utf-8")
    assert len(page.imgs) == 4
    # matplotlib missing: tables only, with a note
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    path = write_html_report(result, tmp_path / "nompl.html")
    assert not _parse(path).imgs
    assert "matplotlib is not installed" in path.read_text(encoding="utf-8")


def test_energy_markdown_and_summary(result) -> None:
    md = energy_markdown(result)
    assert md.startswith("## Energy per inference (estimate)")
    assert "| **total** |" in md and "Gemm_7" in md
    s = energy_summary(result)
    assert s["ratio"] > 3  # 90 % sparse CSR weights: much less DRAM traffic
    assert s["before"]["total_pj"] == pytest.approx(estimate_energy(result.original).total_pj)


def _row(name: str, params: int = 10, macs: int = 10) -> LayerEnergy:
    return LayerEnergy(
        name, "dense", "fp32", params, params, 4 * params, macs, macs, 0, 0, 0, 1.0, 1.0, 1.0, 1.0
    )


def test_match_layers_renamed_split_removed_new() -> None:
    from mcopt.analysis.energy import EnergyReport

    before = EnergyReport("a", [_row("Conv_0"), _row("Conv_1"), _row("Gemm_7"), _row("Gemm_9")])
    after = EnergyReport(
        "b",
        [_row("Conv_0_q"), _row("Conv_10"), _row("Gemm_7_lr0"), _row("Gemm_7_lr1"), _row("Gemm_9")],
    )
    pairs = {p.name: p for p in match_layers(before, after)}
    assert pairs["Conv_0"].status == "renamed" and pairs["Conv_0"].after[0].name == "Conv_0_q"
    assert pairs["Conv_1"].status == "removed"  # Conv_10 does not extend Conv_1
    assert pairs["Conv_10"].status == "new"
    assert pairs["Gemm_7"].status == "split" and pairs["Gemm_7"].value("after", "params") == 20
    assert pairs["Gemm_9"].status == "same"


def test_match_layers_on_real_rewrites() -> None:
    x, _ = zoo.mnist_test_set()
    res = mcopt.optimize(zoo.lenet5_path(), target=None, passes=["cleanup", "xnor"], calib=x[:8])
    pairs = match_layers(
        estimate_energy(res.original), estimate_energy(res.graph), res.original, res.graph
    )
    by = {p.name: p for p in pairs}
    assert [r.name for r in by["Conv_3"].after] == ["Conv_3_bin"]
    assert not [p for p in pairs if p.status == "new"]


@pytest.mark.slow
def test_html_report_renders_in_headless_chromium(result, tmp_path: Path) -> None:
    chromium = shutil.which("chromium") or (
        "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None
    )
    if chromium is None:
        pytest.skip("chromium is not installed (apt-get install chromium)")
    from PIL import Image

    page = write_html_report(
        result,
        tmp_path / "report.html",
        ort_latency_ms=0.3,
        pareto=_pareto(),
        sensitivity=_sensitivity(),
    )
    shot = tmp_path / "shot.png"
    cmd = [
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--window-size=1200,2400",
        f"--screenshot={shot}",
        page.resolve().as_uri(),
    ]
    try:
        subprocess.run(cmd, capture_output=True, timeout=180, check=False)
    except subprocess.TimeoutExpired:
        pytest.fail("headless chromium did not finish within 180 s")
    assert shot.is_file() and shot.stat().st_size > 20_000
    img = Image.open(shot).convert("RGB")
    assert img.size == (1200, 2400)
    colors = img.getcolors(maxcolors=1 << 20)
    assert colors is None or len(colors) > 50  # text, tables and charts, not one flat colour
    arr = np.asarray(img)
    rows_with_ink = int((arr.min(axis=(1, 2)) < 128).sum())
    assert rows_with_ink > 300  # dark pixels (text, axes, bars) down much of the page
