"""Every shipped spec (``models/*.toml``): ``bayesprune fit`` + ``extract`` + ``bayesprune.export.load``
gives back the network ``extract`` held in memory.

Each spec runs with its own prior, guide, fit options (``remove_dead``, schedule, ...)
and collapse rule -- or its ``[method]`` -- on tiny synthetic data for one epoch of two
steps (one ``[pretrain]`` epoch, one fine-tune epoch per round). Gate
probabilities get a learning rate of 1, so one Adam step drives each θ to 0 or 1, and
prices fit for 64 examples: the gate specs then really remove some units (not all)
during the fit -- the case whose keep-sets were once saved in the shrunk network's
indexing, so that ``bayesprune extract`` wrote a network that could not be loaded back.
"""

import json
import tomllib
from pathlib import Path

import pytest
import torch

import bayesprune.cli.main as cli
from bayesprune.cli.spec import Spec
from bayesprune.export import load
from bayesprune.inference import load_checkpoint
from tests.helpers import run_main, toml_document

MODELS = Path(__file__).resolve().parents[2] / "models"
SPECS = sorted(MODELS.glob("*.toml"))


def tiny(raw: dict) -> tuple[dict, tuple[int, ...]]:
    """The spec on synthetic data, one epoch of two steps, gates moved in one step."""
    raw = json.loads(json.dumps(raw))
    net = raw["network"]
    if "input_size" in net:  # CIFAR-style ResNets: 8x8 inputs
        net["input_size"] = 8
        shape = (net.get("in_channels", 3), 8, 8)
    else:
        shape = (1, 28, 28)
    raw["data"] = {
        "name": "synthetic",
        "n_train": 64,
        "n_val": 16,
        "n_test": 16,
        "input_shape": list(shape),
        "n_classes": 10,
    }
    fit = raw.setdefault("fit", {})
    fit.update(epochs=1, batch_size=32, log_every=1)
    if "pretrain" in raw:  # the jackpot's dense training: one epoch
        raw["pretrain"]["epochs"] = 1
    if "method" in raw:  # a baseline's fine-tune: one epoch (per round)
        raw["method"]["finetune_epochs"] = min(raw["method"].get("finetune_epochs", 0), 1)
    if "gate" in (fit.get("role_lr") or {}):
        fit["role_lr"] = {**fit["role_lr"], "gate": 1.0}
        # prices for 64 examples, not 55,000: some units (blocks) close, others stay open
        raw["prior"]["gamma"] = 0.01
    return raw, shape


def test_every_spec_is_covered():
    assert {p.stem for p in SPECS} >= {
        "halo-lenet300",
        "halo-lenet5",
        "gates-lenet300",
        "gates-lenet5",
        "blockgates-resnet20",
        "hypersparse-lenet300",
        "jackpot-lenet300",
        "magnitude-lenet300",
        "l1-lenet5",
    }


@pytest.mark.parametrize("path", SPECS, ids=[p.stem for p in SPECS])
def test_fit_extract_load_round_trip(path, tmp_path, monkeypatch):
    raw, shape = tiny(tomllib.loads(path.read_text()))
    spec_file = tmp_path / path.name
    spec_file.write_text(toml_document(raw))
    spec = Spec.load(spec_file)  # the shipped options survive the rewrite
    original = spec.build_network()

    saved = {}
    real_save = cli.save_pruned

    def spy(module, *args, **kwargs):
        saved["module"] = module
        return real_save(module, *args, **kwargs)

    monkeypatch.setattr(cli, "save_pruned", spy)
    run = tmp_path / "run"
    code, out, err = run_main(["fit", str(spec_file), "--out", str(run), "--no-progress"])
    assert code == 0, err
    code, out, err = run_main(["extract", str(run), "--no-latency"])
    assert code == 0, err

    removed = load_checkpoint(run / "checkpoints" / "last.pt").get("removed") or {}
    units = json.loads((run / "extracted" / "model.json").read_text())["architecture"]["units"]
    width = {n: original.get_submodule(n).weight.shape[0] for n in {*units, *removed}}
    if spec.fit["remove_dead"]:  # units removed, and not all of a layer's (a real remapping)
        assert any(1 < len(u) < width[n] for n, u in removed.items()), removed
    for name, u in units.items():  # recorded in the indexing of the network as built
        assert u["n_units"] == width[name], name
        alive = removed[name].tolist() if name in removed else range(width[name])
        assert set(u["kept"]) <= set(alive), name
    assert set(removed) <= set(units)

    back = load(run / "extracted")
    small = saved["module"]
    assert not back.training
    assert back.state_dict().keys() == small.state_dict().keys()
    x = torch.randn(8, *shape)
    with torch.no_grad():
        torch.testing.assert_close(back(x), small.eval()(x), rtol=1e-6, atol=1e-6)
