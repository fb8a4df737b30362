import pytest

import bayesprune.data as data
from bayesprune.data import get_dataset


@pytest.mark.parametrize("name", ["synthetic", "Synthetic", " synthetic "])
def test_synthetic_by_name(name):
    ds = get_dataset(name, n_train=16, n_val=4, n_test=4, seed=1)
    assert ds.name == "synthetic" and len(ds.train) == 16


def test_kwargs_reach_the_loader():
    assert get_dataset("synthetic", n_classes=3, n_train=9, n_val=0, n_test=0).n_classes == 3


def test_unknown_name_lists_known_ones():
    with pytest.raises(ValueError, match="fashion-mnist, synthetic") as info:
        get_dataset("cifar10")
    assert "'cifar10'" in str(info.value)


def test_public_api():
    for name in data.__all__:
        assert hasattr(data, name), name
    assert {"Split", "Dataset", "fashion_mnist", "synthetic_classification"} <= set(data.__all__)
    assert {"synthetic_regression", "load_idx", "get_dataset"} <= set(data.__all__)
