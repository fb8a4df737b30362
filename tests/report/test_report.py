"""``report``: files written, self-contained HTML, key numbers, skipped figures with reasons."""

from __future__ import annotations

import re

import matplotlib.image as mpimg
import pytest
import torch

from bayesprune.data import synthetic_classification
from bayesprune.metrics import summarize
from bayesprune.pruning import collapse, extract, predict_pruning
from bayesprune.report import report
from bayesprune.report.numbers import khat_verdict
from tests.report.conftest import DATA, _mlp

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def gates_report(gates_run, tmp_path_factory):
    net, result, idata = gates_run
    out = tmp_path_factory.mktemp("gates_report")
    html = report(net, result, idata, out=out, original=_mlp(), measure_latency=False)
    return out, html


@pytest.fixture(scope="module")
def halo_report(halo_run, tmp_path_factory):
    net, result, idata = halo_run
    out = tmp_path_factory.mktemp("halo_report")
    return out, report(net, result, idata, out=out, measure_latency=True)


def _pngs(out):
    return sorted(out.glob("*.png"))


def test_report_returns_html_and_writes_markdown(gates_report):
    out, html = gates_report
    assert html == out / "report.html" and html.is_file()
    assert (out / "report.md").is_file()
    assert not list(out.glob(".*tmp"))  # atomic writes leave no temporary files


@pytest.mark.parametrize("which", ["gates_report", "halo_report"])
def test_every_png_is_a_valid_nonempty_image(which, request):
    out, _ = request.getfixturevalue(which)
    pngs = _pngs(out)
    assert len(pngs) >= 6
    for p in pngs:
        data = p.read_bytes()
        assert data[:8] == PNG_SIGNATURE, p.name
        assert len(data) > 5_000, p.name
        img = mpimg.imread(p)
        assert img.ndim == 3 and img.shape[0] > 200 and img.shape[1] > 300, p.name
        assert img[..., :3].std() > 0.05, f"{p.name} is blank"


def test_html_is_self_contained(gates_report):
    out, html = gates_report
    page = html.read_text()
    assert 'src="http' not in page and "<link" not in page and "<script" not in page
    assert "http://" not in page and "https://" not in page and "url(" not in page
    srcs = re.findall(r'<img[^>]*\bsrc="([^"]*)"', page)
    assert len(srcs) == len(_pngs(out))
    assert all(s.startswith("data:image/png;base64,") for s in srcs)


def test_html_and_markdown_hold_the_key_numbers(gates_run, gates_report):
    net, result, idata = gates_run
    out, html = gates_report
    page, md = html.read_text(), (out / "report.md").read_text()
    attrs = idata.posterior.attrs
    keep = collapse(net, result.guide)
    small = extract(net, keep)
    before = summarize(_mlp(), net.example_input, measure=False)
    after = summarize(small, net.example_input, measure=False)
    for text in (re.sub(r"<[^>]+>", " ", page), md):
        assert f"{100 * attrs['accuracy_point']:.2f}%" in text
        assert f"{100 * attrs['accuracy_predictive']:.2f}%" in text
        assert f"{100 * attrs['ece_predictive']:.2f}%" in text
        assert "PSIS k̂" in text and attrs["psis_khat_meaning"][:40] in text
        assert f"{before['params']:,}" in text and f"{after['params']:,}" in text
        assert f"{before['flops']:,}" in text and f"{after['flops']:,}" in text
        for layer in net.layer_names:  # units per layer: original -> extracted
            n0 = _mlp().get_submodule(layer).out_features
            n1 = small.get_submodule(layer).out_features
            assert re.search(rf"\b{layer}\b\W+{n0}\W+{n1}\b", text), (layer, n0, n1)


def test_inclusion_table_matches_the_inclusion_group(gates_run, gates_report):
    net, _, idata = gates_run
    _, html = gates_report
    page = html.read_text()
    for layer in net.layer_names:
        p = idata.inclusion[f"{layer}.p_keep"].values
        row = f'<td>{layer}</td><td class="num">{p.size} units</td><td class="num">{p.mean():.3f}</td>'
        assert row in page


def test_markdown_links_existing_files(gates_report):
    out, _ = gates_report
    md = (out / "report.md").read_text()
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert sorted(links) == sorted(p.name for p in _pngs(out))
    assert all((out / link).is_file() for link in links)


def test_shrinkage_skipped_with_reason_for_gates(gates_report):
    out, html = gates_report
    assert not (out / "shrinkage.png").exists()
    for text in (html.read_text(), (out / "report.md").read_text()):
        assert "Shrinkage profile (HALO)" in text and "not HALO" in text


def test_halo_draws_shrinkage_and_skips_units_alive(halo_report):
    out, html = halo_report
    assert (out / "shrinkage.png").is_file()
    assert not (out / "units_alive.png").exists()
    assert "Units alive during training</b>: not drawn" in html.read_text()


def test_figures_without_idata_are_skipped_not_empty(halo_run, tmp_path):
    net, result, _ = halo_run
    html = report(net, result, None, out=tmp_path, measure_latency=False)
    names = {p.stem for p in _pngs(tmp_path)}
    assert names == {"elbo", "layer_widths", "cost"}
    page = html.read_text()
    for title in ["Inclusion probabilities", "Accuracy vs kept fraction", "Reliability diagram"]:
        assert f"<b>{title}</b>: not drawn, the InferenceData has no" in page


def test_latency_measured_when_asked(gates_report, halo_report):
    page = halo_report[1].read_text()
    threads = torch.get_num_threads()
    for batch in (1, 256):
        assert f"CPU ({threads} threads) latency, batch {batch} (median)" in page
    assert "Latency was not measured" not in page
    page = gates_report[1].read_text()
    assert "latency, batch" not in page and "Latency was not measured" in page


def test_removed_units_need_the_original_network(gates_run, tmp_path):
    net, result, idata = gates_run  # an nn.Sequential: no zoo config to rebuild it from
    with pytest.raises(ValueError, match="original="):
        report(net, result, idata, out=tmp_path, measure_latency=False)


def test_extracted_without_keep_sets(halo_run, tmp_path):
    net, result, idata = halo_run
    keep = collapse(net, result.guide, keep=0.5)
    small = extract(net, keep)
    html = report(net, None, idata, out=tmp_path, extracted=small, measure_latency=False)
    text = re.sub(r"<[^>]+>", " ", html.read_text())
    assert "the collapse used for the extracted network is unknown" in text
    assert "Kept fraction" not in text
    for layer in net.layer_names:  # widths read from the two modules
        n0 = net.module.get_submodule(layer).out_features
        n1 = small.get_submodule(layer).out_features
        assert re.search(rf"\b{layer}\W+{n0}\W+{n1}\b", text), (layer, n0, n1)


def test_report_needs_a_guide_or_a_network(halo_run, tmp_path):
    net, _, idata = halo_run
    with pytest.raises(ValueError, match="FitResult"):
        report(net, None, idata, out=tmp_path)
    with pytest.raises(TypeError, match="BayesianNet"):
        report(net.module, None, idata, out=tmp_path)


def test_khat_verdict_bands():
    assert khat_verdict(0.2).startswith("good")
    assert khat_verdict(0.6).startswith("acceptable")
    assert khat_verdict(torch.tensor(0.9).item()).startswith("poor")


def test_report_from_a_netcdf_round_trip(gates_run, gates_report, tmp_path):
    """``bayesprune report`` saves idata.nc; a report made from the file (attrs come back as
    numpy scalars) says the same as one made from the InferenceData in memory."""
    from bayesprune.diagnostics._arviz import az

    net, result, idata = gates_run
    idata.to_netcdf(str(tmp_path / "idata.nc"))
    loaded = az.from_netcdf(tmp_path / "idata.nc")
    html = report(net, result, loaded, out=tmp_path / "r", original=_mlp(), measure_latency=False)
    strip = lambda page: re.sub(r'src="data:[^"]*"', "", page)  # noqa: E731
    assert strip(html.read_text()) == strip(gates_report[1].read_text())


def test_forecast_sits_next_to_the_measured_accuracy(gates_run, tmp_path):
    """With data=, the key numbers hold predict_pruning's forecast for the keep-set and the
    extracted network's accuracy measured on the same split -- equal, as extract reproduces
    the collapsed network."""
    net, result, idata = gates_run
    data = synthetic_classification(192, 64, 96, **DATA)
    keep = collapse(net, result.guide)
    page = report(
        net,
        result,
        idata,
        out=tmp_path,
        keep=keep,
        data=data,
        original=_mlp(),
        measure_latency=False,
    ).read_text()
    forecast = predict_pruning(net, result.guide, keep, data, num_samples=32)
    small = extract(net, keep).eval()
    with torch.no_grad():
        measured = float((small(data.val.x).argmax(-1) == data.val.y).double().mean())
    assert measured == pytest.approx(forecast.accuracy_point)
    assert f"{100 * forecast.accuracy_point:.2f}%" in page
    assert (
        "Measured accuracy, extracted network" in page and "measured − forecast = +0.00 pt" in page
    )
