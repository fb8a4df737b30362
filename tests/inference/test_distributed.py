"""Data-parallel fits: two CPU processes (gloo) started with ``torchrun`` by the test.

The fits themselves are in ``ddp_fit.py``: a HALO/MAP fit on in-memory tensors (sharded by
index), a unit-gates fit on a ``DataLoader`` with removal of dead units during training
(the loader gets a ``DistributedSampler``), a lottery-jackpot search, ART/HyperSparse whose
stop rule scores a sharded validation loader, and a fit killed mid-epoch and resumed.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers import assert_same

HERE = Path(__file__).parent
REPO = HERE.parents[1]
spec = importlib.util.spec_from_file_location("ddp_fit", HERE / "ddp_fit.py")
ddp_fit = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ddp_fit)


def torchrun(*args: str, nproc: int = 2, timeout: int = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        f"--nproc_per_node={nproc}", *args,
    ]  # fmt: skip
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, list[dict]]:
    out = tmp_path_factory.mktemp("ddp")
    torchrun(str(HERE / "ddp_fit.py"), str(out))
    return {
        case: [torch.load(out / f"{case}-rank{r}.pt", weights_only=True) for r in (0, 1)]
        for case in ("halo", "gates", "resumed", "jackpot", "hypersparse")
    } | {"folder": out}


@pytest.mark.parametrize("case", ["halo", "gates"])
def test_every_process_sees_its_own_half_of_the_data(runs, case):
    r0, r1 = (set(r["seen"]) for r in runs[case])
    all_ids = set(ddp_fit.data().train.x[:, 0].tolist())
    assert r0.isdisjoint(r1)
    assert r0 | r1 == all_ids
    assert len(r0) == len(r1) == ddp_fit.N_TRAIN // 2


@pytest.mark.parametrize("case", ["halo", "gates", "resumed", "jackpot", "hypersparse"])
def test_both_processes_end_identical(runs, case):
    a, b = runs[case]
    assert_same(a["net"], b["net"])
    assert_same(a["guide"], b["guide"])
    assert a["history"] == b["history"]
    assert a["elbo"] == b["elbo"]
    assert a["removed"] == b["removed"]


def test_the_jackpot_search_swapped_masks_identically_on_both_processes(runs):
    swaps = [sum(h["jackpot_swaps"]) for h in runs["jackpot"][0]["history"]]
    assert sum(swaps) > 0, "no swap was made: the test does not exercise the restriction"


def test_gates_removed_units_during_the_data_parallel_fit(runs):
    removed = runs["gates"][0]["removed"]
    assert removed, "no unit was removed: the test does not exercise live removal"
    assert runs["gates"][0]["history"][-1]["val_accuracy"] > 0.5


def test_matches_the_one_process_fit_with_the_same_global_batch(runs):
    net, guide, result, _ = ddp_fit.halo_tensors(runs["folder"])  # alone, in this process
    two = runs["halo"][0]
    for k, v in guide.state_dict().items():
        torch.testing.assert_close(two["guide"][k], v, rtol=1e-4, atol=1e-5, msg=k)
    for k, v in net.state_dict().items():
        torch.testing.assert_close(two["net"][k], v, rtol=1e-4, atol=1e-5, msg=k)
    assert two["elbo"] == pytest.approx(result.elbo, rel=1e-4)


def test_a_sharded_validation_loader_is_scored_whole(runs):
    """Each process scores its half of the validation loader; the sums are added up."""
    two = runs["gates"][0]
    last = two["history"][-1]  # scored on the whole val split by every process
    assert two["sharded_val"]["accuracy"] == pytest.approx(last["val_accuracy"], abs=1e-9)
    assert two["sharded_val"]["nll"] == pytest.approx(last["val_nll"], rel=1e-5)
    assert runs["gates"][1]["sharded_val"] == two["sharded_val"]


def test_a_killed_data_parallel_fit_resumes_exactly(runs):
    straight, resumed = runs["halo"][0], runs["resumed"][0]
    assert_same(straight["net"], resumed["net"])
    assert_same(straight["guide"], resumed["guide"])
    # (the ELBO trace differs in cadence: checkpoint_every also closes a log window)
    assert straight["history"] == resumed["history"]
    assert sorted(os.listdir(runs["folder"] / "ck")) == ["last.pt"]  # process 0 writes alone


def test_art_stops_on_the_same_epoch_on_both_processes_as_alone(runs):
    """Each process scores half of the validation loader; the hits and counts are added up,
    so the stop rule sees the whole split's accuracy: both processes stop in the same epoch,
    the one the same fit takes alone on the validation tensors."""
    keys = ("phase", "alpha", "dense_val_accuracy", "pruned_val_accuracy", "stop_rule")
    two = [[{k: h.get(k) for k in keys} for h in r["history"]] for r in runs["hypersparse"]]
    assert two[0] == two[1]
    _, _, alone, _ = ddp_fit.hypersparse_sharded_val(runs["folder"], sharded=False)
    one = [{k: h.get(k) for k in keys} for h in alone.history]
    stops = [i for i, h in enumerate(two[0]) if h["stop_rule"]]
    reg = [h for h in two[0] if h["phase"] == "regularise"]
    assert len(stops) == 1 and 1 < len(reg) < 8, "the rule must fire on the data, not the cap"
    assert [h["phase"] for h in two[0]] == [h["phase"] for h in one]
    for a, b in zip(two[0], one, strict=True):
        for k in ("dense_val_accuracy", "pruned_val_accuracy"):
            assert (a[k] is None) == (b[k] is None), k
            if a[k] is not None:
                assert a[k] == pytest.approx(b[k], abs=1.5 / 32), k  # at most 1 of 32 flips
