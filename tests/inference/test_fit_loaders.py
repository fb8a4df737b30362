"""``fit`` on DataLoaders: the plate scale, validation loaders, exact resume with shuffling
and random augmentation (with and without worker processes), and bad loaders."""

from __future__ import annotations

import importlib

import pytest
import torch
from conftest import Killed, kill_at_step  # noqa: I001
from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset

from bayesprune import fit, sparsify
from bayesprune.data import Split
from bayesprune.errors import DataError
from bayesprune.guides import MAP, MeanField
from bayesprune.inference import evaluate
from bayesprune.priors import HALO

fit_module = importlib.import_module("bayesprune.inference.fit")

KW = {"lr": 1e-2, "progress": False}


class Jittered(Dataset):
    """In-memory examples with random noise added on every read (an augmentation drawn
    from torch's RNG, as torchvision's transforms are)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        return self.x[i] + 0.1 * torch.randn_like(self.x[i]), self.y[i]


class Stream(IterableDataset):
    """An iterable data set without a length."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __iter__(self):
        return iter(zip(self.x, self.y, strict=True))


def make(nets, seed: int = 0, guide=MeanField):
    torch.manual_seed(seed)
    net = sparsify(nets["mlp"](), HALO(1e-3, 1e-3))
    return net, guide(net)


def loader(data, **kw) -> DataLoader:
    kw = {"batch_size": 16, "shuffle": True, **kw}
    return DataLoader(TensorDataset(data.train.x, data.train.y), **kw)


def same_state(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_the_plate_is_the_loaders_data_set(nets, class_data, monkeypatch):
    seen = []
    original = fit_module.loss_from_name

    def recording(name):
        estimator = original(name)

        def loss(net, guide, x, y, n_data):
            seen.append((x.shape[0], n_data))
            return estimator(net, guide, x, y, n_data)

        return loss

    monkeypatch.setattr(fit_module, "loss_from_name", recording)
    net, g = make(nets)
    result = fit(net, loader(class_data, batch_size=50), g, epochs=1, val=class_data.val, **KW)
    assert seen == [(50, 128), (50, 128), (28, 128)]
    assert 0 <= result.final["val_accuracy"] <= 1


def test_a_loader_fit_learns_like_the_tensor_fit(nets, class_data):
    net, g = make(nets, guide=MAP)
    before = evaluate(net, g, class_data.val)["nll"]
    result = fit(net, loader(class_data), g, epochs=8, val=class_data.val, **KW)
    assert result.final["val_nll"] < before
    assert result.final["val_accuracy"] > 0.6


def test_a_validation_loader_scores_like_the_split(nets, class_data):
    net, g = make(nets)
    val = class_data.val
    as_split = evaluate(net, g, val)
    as_loader = evaluate(net, g, DataLoader(TensorDataset(val.x, val.y), batch_size=7))
    assert as_loader == pytest.approx(as_split, rel=1e-5)
    assert evaluate(net, g, (val.x, val.y)) == pytest.approx(as_split, rel=1e-6)


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_with_a_shuffling_augmenting_loader_is_exact(
    nets, class_data, tmp_path, monkeypatch, workers
):
    data = Jittered(class_data.train.x, class_data.train.y)

    def run(**kw):
        net, g = make(nets)
        dl = DataLoader(data, batch_size=16, shuffle=True, num_workers=workers)
        return net, g, fit(net, dl, g, epochs=2, val=class_data.val, seed=3, **KW, **kw)

    straight_net, straight_g, straight = run()
    kill_at_step(monkeypatch, 11)  # epoch 2, after the checkpoint at step 9
    with pytest.raises(Killed):
        run(checkpoint=tmp_path, checkpoint_every=3)
    monkeypatch.undo()
    net, g, resumed = run(checkpoint=tmp_path, checkpoint_every=3, resume=True)
    assert same_state(straight_g, g) and same_state(straight_net, net)
    drop = ("seconds",)
    assert [{k: v for k, v in h.items() if k not in drop} for h in straight.history] == [
        {k: v for k, v in h.items() if k not in drop} for h in resumed.history
    ]


def test_the_order_follows_the_seed_and_a_generator_is_reseeded(nets, class_data):
    def run(seed, **kw):
        net, g = make(nets)
        fit(net, loader(class_data, **kw), g, epochs=1, seed=seed, validate=False, **KW)
        return g

    assert same_state(run(1), run(1))
    assert not same_state(run(1), run(2))
    gen = torch.Generator()
    assert same_state(run(1, generator=gen), run(1, generator=gen))


def test_a_loader_without_length_needs_n_data(nets, class_data):
    stream = DataLoader(Stream(class_data.train.x, class_data.train.y), batch_size=16)
    net, g = make(nets)
    with pytest.raises(ValueError, match="pass n_data="):
        fit(net, stream, g, epochs=1, **KW)
    result = fit(net, stream, g, epochs=1, n_data=128, **KW)
    assert result.elbo_steps == [8]
    with pytest.raises(ValueError, match="schedule='cosine'.*no len"):
        fit(net, stream, g, epochs=1, n_data=128, schedule="cosine", **KW)


def test_a_list_of_batches_is_a_loader(nets, class_data):
    x, y = class_data.train.x, class_data.train.y
    batches = [(x[i : i + 32], y[i : i + 32]) for i in range(0, 128, 32)]
    net, g = make(nets)
    result = fit(net, batches, g, epochs=2, n_data=128, **KW)
    assert result.elbo_steps == [4, 8]


def test_n_data_must_match_in_memory_tensors(nets, class_data):
    net, g = make(nets)
    with pytest.raises(ValueError, match="n_data=100 but the training tensors hold 128"):
        fit(net, class_data, g, epochs=1, n_data=100, **KW)


# --- bad loaders: a clear error before anything is trained or written ------------------------
class Triples(Dataset):
    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int):
        return torch.zeros(8), 0, 1


class Ragged:
    """Re-iterable batches whose second one has more targets than inputs."""

    def __iter__(self):
        yield torch.zeros(4, 8), torch.zeros(4, dtype=torch.long)
        yield torch.zeros(4, 8), torch.zeros(5, dtype=torch.long)


@pytest.mark.parametrize(
    ("data", "error", "match"),
    [
        (DataLoader(Triples(), batch_size=4), TypeError, r"\(x, y\) pairs; batch 0 is a list of 3"),
        (Ragged(), ValueError, "batch 1 of the training loader has 4 inputs but 5 targets"),
        (DataLoader(TensorDataset(torch.zeros(0, 8), torch.zeros(0)), batch_size=4), ValueError,
         "the training loader is empty"),
        (iter([(torch.zeros(4, 8), torch.zeros(4))]), TypeError, "an iterator that would be used up"),
        ({"x": 1}, TypeError, "data must be a bayesprune Dataset"),
    ],
)  # fmt: skip
def test_bad_loaders_are_named(nets, tmp_path, data, error, match):
    net, g = make(nets)
    with pytest.raises(error, match=match):
        fit(net, data, g, epochs=1, n_data=16, checkpoint=tmp_path, **KW)
    assert not (tmp_path / "last.pt").exists()


def test_a_loader_of_the_wrong_inputs_is_named(nets):
    net, g = make(nets)
    dl = DataLoader(TensorDataset(torch.zeros(8, 5), torch.zeros(8).long()), batch_size=4)
    with pytest.raises(
        ValueError, match=r"cannot take the training inputs: a batch of shape \(2, 5\)"
    ):
        fit(net, dl, g, epochs=1, **KW)


def test_validation_data_the_network_cannot_take_is_named_before_training(nets, tmp_path):
    net, g = make(nets)
    x, y = torch.randn(16, 8), torch.randint(0, 3, (16,))
    for val, match in [
        (
            (torch.zeros(4, 5), torch.zeros(4).long()),
            r"validation inputs: a batch of shape \(2, 5\)",
        ),
        ((torch.zeros(4, 8), torch.full((4,), 7)), "validation targets: .*label 7"),
    ]:
        with pytest.raises(DataError, match=match):
            fit(net, (x, y), g, epochs=1, val=val, checkpoint=tmp_path, **KW)
        assert not (tmp_path / "last.pt").exists()


@pytest.mark.parametrize(
    ("device", "match"),
    [("tpu", "device='tpu' is not a device torch knows"), ("cuda:7", "no CUDA|1 CUDA device")],
)
def test_bad_devices_are_named(nets, class_data, device, match):
    if device.startswith("cuda") and torch.cuda.device_count() > 7:
        pytest.skip("this machine has 8 GPUs")
    net, g = make(nets)
    with pytest.raises(ValueError, match=match):
        fit(net, class_data, g, epochs=1, device=device, **KW)


def test_evaluate_takes_a_pair_and_a_split_alike(nets, class_data):
    net, g = make(nets)
    val = class_data.val
    assert evaluate(net, g, Split(val.x, val.y)) == evaluate(net, g, [val.x, val.y])
