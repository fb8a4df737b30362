"""Latency: structure and sanity only. Timings are never compared across modules here."""

import pytest
import torch
from torch import nn

from bayesprune.metrics import _batch_of, compare_latency, measure_latency, summarize

STAT_KEYS = {"median", "mean", "min", "p10", "p25", "p75", "p90", "iqr", "per_example_median"}
FAST = dict(repeats=3, warmup=1, min_time=0.0)


def _net() -> nn.Module:
    return nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 2))


def _check_stats(r: dict, batch_size: int, repeats: int) -> None:
    assert set(r) >= STAT_KEYS
    assert all(r[k] > 0 for k in STAT_KEYS - {"iqr"})
    assert r["iqr"] >= 0
    assert r["min"] <= r["p10"] <= r["p25"] <= r["median"] <= r["p75"] <= r["p90"]
    assert r["iqr"] == pytest.approx(r["p75"] - r["p25"])
    assert r["per_example_median"] == pytest.approx(r["median"] / batch_size)
    assert r["repeats"] == repeats == len(r["samples"])
    assert r["batch_size"] == batch_size
    assert r["number"] >= 1
    assert r["device"] == "cpu"


def test_measure_latency_structure() -> None:
    r = measure_latency(_net(), torch.randn(4, 8), **FAST)
    _check_stats(r, batch_size=4, repeats=3)
    assert r["number"] == 1  # min_time=0: one forward per sample
    assert r["warmup"] == 1
    assert r["threads"] == torch.get_num_threads()


def test_min_time_batches_fast_forwards() -> None:
    r = measure_latency(nn.Identity(), torch.randn(1, 2), repeats=2, warmup=1, min_time=0.05)
    assert r["number"] > 1
    assert all(s > 0 for s in r["samples"])


def test_restores_mode_threads_and_does_not_move() -> None:
    net = _net().train()
    before = torch.get_num_threads()
    r = measure_latency(net, torch.randn(2, 8), threads=1, device="cpu", **FAST)
    assert r["threads"] == 1
    assert torch.get_num_threads() == before
    assert all(m.training for m in net.modules())
    assert int(net[1].num_batches_tracked) == 0  # eval mode: BN statistics untouched


def test_invalid_options() -> None:
    x = torch.randn(1, 8)
    with pytest.raises(ValueError, match="repeats"):
        measure_latency(_net(), x, repeats=0)
    with pytest.raises(ValueError, match="warmup"):
        measure_latency(_net(), x, warmup=-1)
    with pytest.raises(ValueError, match="threads"):
        measure_latency(_net(), x, threads=0)


def test_compare_latency_structure() -> None:
    a, b = _net(), nn.Sequential(nn.Linear(8, 2))
    r = compare_latency(a, b, torch.randn(3, 8), **FAST)
    assert set(r) == {"a", "b", "speedup"}
    _check_stats(r["a"], batch_size=3, repeats=3)
    _check_stats(r["b"], batch_size=3, repeats=3)
    assert r["speedup"] == pytest.approx(r["a"]["median"] / r["b"]["median"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_copy_leaves_module_on_cpu() -> None:
    net = _net()
    r = measure_latency(net, torch.randn(2, 8), device="cuda", **FAST)
    assert r["device"].startswith("cuda")
    assert next(net.parameters()).device.type == "cpu"


def test_summarize() -> None:
    s = summarize(_net(), torch.randn(3, 8), latency_batches=(1, 5), **FAST)
    assert s["params"] == 8 * 16 + 16 + 32 + 16 * 2 + 2
    assert s["macs"] == 8 * 16 + 16 + 16 * 2
    assert s["flops"] == 2 * s["macs"]
    assert s["sparse_macs"] == s["macs"]
    assert s["density"] == pytest.approx(s["nonzeros"] / s["params"])
    assert [r["batch_size"] for r in s["latency"]] == [1, 5]
    assert all("samples" not in r and r["median"] > 0 for r in s["latency"])
    assert summarize(_net(), torch.randn(3, 8), measure=False)["latency"] == []


def test_batch_of_cycles_examples() -> None:
    x = torch.arange(3.0).unsqueeze(1)
    assert _batch_of(x, 5).squeeze(1).tolist() == [0.0, 1.0, 2.0, 0.0, 1.0]
    assert _batch_of(x, 2).squeeze(1).tolist() == [0.0, 1.0]
    a, b = _batch_of((x, torch.zeros(3, 2)), 4)
    assert a.shape == (4, 1) and b.shape == (4, 2)
    with pytest.raises(ValueError, match="batch"):
        _batch_of(x, 0)
