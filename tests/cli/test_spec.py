"""Spec: the shipped model specs load, and malformed ones fail naming file, section and key."""

from pathlib import Path

import pytest
import torch.nn as nn

from bayesprune.cli.spec import FIT_DEFAULTS, Spec, SpecError, _layers
from bayesprune.nn import BayesianNet
from bayesprune.priors import HALO

MODELS = Path(__file__).resolve().parents[2] / "models"
SHIPPED = sorted(MODELS.glob("*.toml"))

GOOD = """\
[network]
name = "lenet300"
width = 0.1

[data]
name = "synthetic"
n_train = 16

[prior]
name = "halo"
xi = 1e-4
psi = 1e-4
layers = ["Linear"]

[guide]
name = "map"

[fit]
epochs = 2

[collapse]
keep = 0.5
"""


def write(tmp_path: Path, text: str, name: str = "spec.toml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def replace(text: str, old: str, new: str) -> str:
    assert old in text, old
    return text.replace(old, new)


# --- the shipped specs ----------------------------------------------------------------------


def test_models_folder_has_specs():
    assert len(SHIPPED) >= 2


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_shipped_specs_load_and_validate(path):
    spec = Spec.load(path)
    assert spec.source == str(path)
    assert set(spec.fit) == set(FIT_DEFAULTS)
    spec.validate()
    prior = spec.build_prior()
    assert prior.name == spec.prior["name"]
    net = spec.build_net()  # network and prior selectors fit together
    assert isinstance(net, BayesianNet) and net.layer_names
    guide = spec.build_guide(net)
    assert guide.name == spec.guide.get("name", prior.default_guide)


def test_good_spec_round_trips_through_to_dict(tmp_path):
    spec = Spec.load(write(tmp_path, GOOD))
    again = Spec.from_dict(spec.to_dict())
    assert again.to_dict() == spec.to_dict()
    assert spec.fit["epochs"] == 2 and spec.fit["batch_size"] == FIT_DEFAULTS["batch_size"]
    assert spec.collapse == {"keep": 0.5}


def test_defaults_fill_missing_sections():
    spec = Spec.from_dict({"network": {"name": "lenet300"}, "prior": {"name": "halo"}})
    assert spec.data == {"name": "fashion-mnist"}
    assert spec.fit == FIT_DEFAULTS
    assert spec.collapse == {} and spec.guide == {}


def test_from_dict_does_not_share_the_callers_dicts():
    raw = {"network": {"name": "lenet300"}, "prior": {"name": "halo"}}
    spec = Spec.from_dict(raw)
    spec.network["width"] = 0.5
    assert raw["network"] == {"name": "lenet300"}


# --- layer selectors ------------------------------------------------------------------------


def test_nn_class_names_become_types():
    assert _layers(["Linear", "Conv2d", "fc1", "features.*"], "x.toml") == [
        nn.Linear,
        nn.Conv2d,
        "fc1",
        "features.*",
    ]
    assert _layers("Linear", "x.toml") == [nn.Linear]
    assert _layers(None, "x.toml") is None
    assert _layers(["functional"], "x.toml") == ["functional"]  # a module, not a class


def test_layer_types_select_layers(tmp_path):
    spec = Spec.load(write(tmp_path, GOOD))
    assert spec.build_net().layer_names == ("fc1", "fc2", "fc3")
    spec = Spec.load(write(tmp_path, replace(GOOD, '["Linear"]', '["fc1", "fc2"]')))
    assert spec.build_net().layer_names == ("fc1", "fc2")


def test_selector_matching_nothing_is_a_spec_error(tmp_path):
    spec = Spec.load(write(tmp_path, replace(GOOD, '["Linear"]', '["Conv2d"]')))
    with pytest.raises(SpecError, match=r"spec.toml: \[prior\].*chose no module"):
        spec.build_net()


# --- malformed specs: SpecError naming the file and the section / key ---------------------

BAD = [
    ("toml syntax", replace(GOOD, 'name = "map"', "name = map"), r"spec.toml.*not valid TOML"),
    (
        "unknown section",
        GOOD + "\n[optimizer]\nlr = 1\n",
        r"spec.toml.*unknown section.*'optimizer'",
    ),
    (
        "fit key",
        replace(GOOD, "epochs = 2", "epochs = 2\nlearning_rate = 0.1"),
        r"spec.toml.*'learning_rate'.*\[fit\]",
    ),
    (
        "collapse key",
        replace(GOOD, "keep = 0.5", "keep = 0.5\nkeeep = 0.1"),
        r"spec.toml.*'keeep'.*\[collapse\]",
    ),
    (
        "network name",
        replace(GOOD, 'name = "lenet300"\n', ""),
        r"spec.toml.*\[network\] needs a name",
    ),
    (
        "no network",
        GOOD.split("[data]")[1].join(["[data]", ""]),
        r"spec.toml.*\[network\] needs a name",
    ),
    ("prior name", replace(GOOD, 'name = "halo"\n', ""), r"spec.toml.*\[prior\] needs a name"),
    ("data name", replace(GOOD, 'name = "synthetic"\n', ""), r"spec.toml.*\[data\] needs a name"),
    (
        "prior unknown",
        replace(GOOD, 'name = "halo"', 'name = "horseshoe"'),
        r"spec.toml.*\[prior\].*'horseshoe'",
    ),
    ("prior xi < 0", replace(GOOD, "xi = 1e-4", "xi = -1.0"), r"spec.toml.*\[prior\].*xi must be"),
    ("prior xi str", replace(GOOD, "xi = 1e-4", 'xi = "small"'), r"spec.toml.*\[prior\].*xi"),
    (
        "prior per",
        replace(GOOD, "psi = 1e-4", 'psi = 1e-4\nper = "layer"'),
        r"spec.toml.*\[prior\].*per",
    ),
    ("prior key", replace(GOOD, "psi = 1e-4", "psi = 1e-4\nrho = 2"), r"spec.toml.*\[prior\].*rho"),
    ("layers int", replace(GOOD, '["Linear"]', "3"), r"spec.toml.*prior.layers.*3"),
    ("layers mixed", replace(GOOD, '["Linear"]', '["Linear", 2]'), r"spec.toml.*prior.layers"),
    (
        "section not table",
        "fit = 3\n" + replace(GOOD, "[fit]\nepochs = 2\n", ""),
        r"spec.toml.*\[fit\] must be a table",
    ),
    ("epochs", replace(GOOD, "epochs = 2", "epochs = -1"), r"spec.toml.*\[fit\] epochs"),
    ("epochs float", replace(GOOD, "epochs = 2", "epochs = 2.5"), r"spec.toml.*\[fit\] epochs"),
    (
        "batch size",
        replace(GOOD, "epochs = 2", "epochs = 2\nbatch_size = 0"),
        r"spec.toml.*\[fit\] batch_size",
    ),
    ("lr", replace(GOOD, "epochs = 2", 'epochs = 2\nlr = "fast"'), r"spec.toml.*\[fit\] lr"),
    ("keep > 1", replace(GOOD, "keep = 0.5", "keep = 1.5"), r"spec.toml.*\[collapse\] keep"),
    ("keep bool", replace(GOOD, "keep = 0.5", "keep = true"), r"spec.toml.*\[collapse\] keep"),
    (
        "scope",
        replace(GOOD, "keep = 0.5", 'keep = 0.5\nscope = "model"'),
        r"spec.toml.*\[collapse\] scope",
    ),
    (
        "threshold",
        replace(GOOD, "keep = 0.5", 'threshold = "high"'),
        r"spec.toml.*\[collapse\] threshold",
    ),
]


@pytest.mark.parametrize(("text", "match"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_malformed_spec_is_a_spec_error(tmp_path, text, match):
    with pytest.raises(SpecError, match=match):
        Spec.load(write(tmp_path, text))


def test_spec_error_is_a_value_error():
    assert issubclass(SpecError, ValueError)


def test_missing_file(tmp_path):
    with pytest.raises(SpecError, match="nope.toml does not exist"):
        Spec.load(tmp_path / "nope.toml")


def test_not_utf8(tmp_path):
    p = tmp_path / "spec.toml"
    p.write_bytes(b'[network]\nname = "\xff\xfe"\n')
    with pytest.raises(SpecError, match="spec.toml.*not valid TOML"):
        Spec.load(p)


def test_from_dict_names_its_source():
    with pytest.raises(SpecError, match=r"^run/spec.json: \[network\]"):
        Spec.from_dict({"prior": {"name": "halo"}}, source="run/spec.json")
    with pytest.raises(SpecError, match="run/spec.json: a spec is a table"):
        Spec.from_dict(["network"], source="run/spec.json")


def test_unknown_network_fails_when_built(tmp_path):
    spec = Spec.load(write(tmp_path, replace(GOOD, '"lenet300"', '"lenet9000"')))
    with pytest.raises(SpecError, match=r"spec.toml: \[network\].*'lenet9000'"):
        spec.build_network()


def test_bad_network_option_fails_when_built(tmp_path):
    spec = Spec.load(write(tmp_path, replace(GOOD, "width = 0.1", "depth = 3")))
    with pytest.raises(SpecError, match=r"spec.toml: \[network\].*depth"):
        spec.build_network()


def test_unknown_guide_fails_when_built(tmp_path):
    spec = Spec.load(write(tmp_path, replace(GOOD, 'name = "map"', 'name = "laplace"')))
    with pytest.raises(SpecError, match=r"spec.toml: \[guide\].*'laplace'"):
        spec.build_guide(spec.build_net())


def test_bad_data_option_fails_when_built(tmp_path):
    spec = Spec.load(write(tmp_path, replace(GOOD, "n_train = 16", "n_trains = 16")))
    with pytest.raises(SpecError, match=r"spec.toml: \[data\].*n_trains"):
        spec.build_data()


def test_prior_hyperparameters_reach_the_prior(tmp_path):
    spec = Spec.load(write(tmp_path, replace(GOOD, "psi = 1e-4", 'psi = 2e-4\nper = "unit"')))
    prior = spec.build_prior()
    assert isinstance(prior, HALO)
    assert (prior.xi, prior.psi, prior.per) == (1e-4, 2e-4, "unit")
