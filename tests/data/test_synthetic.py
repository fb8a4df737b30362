import pytest
import torch
from torch import nn

from bayesprune.data import synthetic_classification, synthetic_regression


@pytest.mark.parametrize(
    ("input_shape", "n_classes"), [((1, 8, 8), 4), ((16,), 2), ((3, 4, 4), 10)]
)
def test_classification_shapes_and_dtypes(input_shape, n_classes):
    ds = synthetic_classification(40, 10, 12, input_shape=input_shape, n_classes=n_classes)
    assert ds.name == "synthetic" and ds.n_classes == n_classes
    assert ds.input_shape == input_shape
    assert (len(ds.train), len(ds.val), len(ds.test)) == (40, 10, 12)
    for split in (ds.train, ds.val, ds.test):
        assert split.x.dtype == torch.float32 and split.y.dtype == torch.int64
        assert int(split.y.min()) >= 0 and int(split.y.max()) < n_classes


def test_classification_labels_are_balanced():
    ds = synthetic_classification(40, 0, 0, n_classes=4)
    assert torch.bincount(ds.train.y).tolist() == [10, 10, 10, 10]
    assert ds.val is None and ds.test is None


def test_classification_is_deterministic_per_seed():
    a, b = synthetic_classification(seed=5), synthetic_classification(seed=5)
    c = synthetic_classification(seed=6)
    assert torch.equal(a.train.x, b.train.x) and torch.equal(a.test.y, b.test.y)
    assert not torch.equal(a.train.x, c.train.x)


def test_classification_is_learnable_in_a_few_steps():
    torch.manual_seed(0)
    ds = synthetic_classification()
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, ds.n_classes))
    opt = torch.optim.Adam(net.parameters(), lr=0.05)
    for step in range(30):
        for x, y in ds.batches(128, epoch=step):
            opt.zero_grad()
            nn.functional.cross_entropy(net(x), y).backward()
            opt.step()
    with torch.no_grad():
        acc = (net(ds.test.x).argmax(1) == ds.test.y).float().mean()
    assert acc > 0.95


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_train": 0}, "n_train"),
        ({"n_val": -1}, "n_val"),
        ({"n_classes": 1}, "n_classes"),
        ({"input_shape": ()}, "input_shape"),
        ({"input_shape": (0, 3)}, "input_shape"),
        ({"noise": -0.1}, "noise"),
    ],
)
def test_classification_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        synthetic_classification(**kwargs)


def test_regression_shapes():
    ds, w = synthetic_regression(50, 6, n_val=5, n_test=7)
    assert ds.n_classes is None
    assert ds.train.x.shape == (50, 6) and ds.train.y.shape == (50,)
    assert ds.train.y.dtype == torch.float32 and w.shape == (6,)
    assert (len(ds.val), len(ds.test)) == (5, 7)


def test_regression_default_has_no_val_or_test():
    ds, _ = synthetic_regression()
    assert ds.val is None and ds.test is None


def test_regression_noise_free_targets_are_exact():
    ds, w = synthetic_regression(30, 4, noise_scale=0.0)
    torch.testing.assert_close(ds.train.x @ w, ds.train.y)


def test_regression_noise_has_requested_scale():
    ds, w = synthetic_regression(4000, 3, noise_scale=0.5)
    residual = ds.train.y - ds.train.x @ w
    assert float(residual.std()) == pytest.approx(0.5, rel=0.05)


@pytest.mark.parametrize("k", [0, 2, 5])
def test_regression_sparse_weights(k):
    _, w = synthetic_regression(10, 5, n_informative=k)
    assert int((w != 0).sum()) == k
    assert torch.all(w[k:] == 0)


def test_least_squares_recovers_weights():
    ds, w = synthetic_regression(500, 5, noise_scale=0.05, seed=3)
    w_hat = torch.linalg.lstsq(ds.train.x, ds.train.y.unsqueeze(1)).solution.squeeze(1)
    torch.testing.assert_close(w_hat, w, atol=0.02, rtol=0)


def test_regression_is_deterministic_per_seed():
    (a, wa), (b, wb) = synthetic_regression(seed=1), synthetic_regression(seed=1)
    assert torch.equal(wa, wb) and torch.equal(a.train.y, b.train.y)
    assert not torch.equal(wa, synthetic_regression(seed=2)[1])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n": 0}, "n must"),
        ({"n_features": 0}, "n_features"),
        ({"n_informative": 9}, "n_informative"),
        ({"n_informative": -1}, "n_informative"),
        ({"noise_scale": -1.0}, "noise_scale"),
        ({"n_test": -2}, "n_test"),
    ],
)
def test_regression_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        synthetic_regression(**kwargs)
