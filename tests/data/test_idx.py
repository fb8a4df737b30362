import gzip
import struct

import numpy as np
import pytest
import torch

from bayesprune.data import load_idx, save_idx

DTYPES = [torch.uint8, torch.int8, torch.int16, torch.int32, torch.float32, torch.float64]


def mnist_bytes(images: np.ndarray) -> bytes:
    """An idx3-ubyte file written by hand, as in the MNIST spec."""
    n, h, w = images.shape
    return struct.pack(">IIII", 0x00000803, n, h, w) + images.astype(np.uint8).tobytes()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(5,), (2, 3), (2, 3, 4), (1, 2, 1, 3)])
@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_round_trip(tmp_path, dtype, shape, suffix):
    g = torch.Generator().manual_seed(0)
    t = (torch.randn(shape, generator=g) * 50).to(dtype)
    path = tmp_path / f"t-idx{suffix}"
    save_idx(path, t)
    out = load_idx(path)
    assert out.dtype == dtype
    assert torch.equal(out, t)


def test_reads_hand_written_mnist_file(tmp_path):
    images = np.arange(2 * 3 * 4).reshape(2, 3, 4)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(mnist_bytes(images))
    x = load_idx(path, ndim=3)
    assert x.dtype == torch.uint8
    assert x.tolist() == images.tolist()


def test_big_endian_multibyte_values(tmp_path):
    path = tmp_path / "ints"
    path.write_bytes(bytes([0, 0, 0x0C, 1]) + struct.pack(">I", 2) + struct.pack(">ii", 1, -2))
    assert load_idx(path).tolist() == [1, -2]


def test_gzip_detected_by_content_not_name(tmp_path):
    path = tmp_path / "no-suffix"
    path.write_bytes(gzip.compress(mnist_bytes(np.ones((1, 2, 2)))))
    assert load_idx(path).shape == (1, 2, 2)


def test_result_is_writable_and_owns_memory(tmp_path):
    path = tmp_path / "x.gz"
    save_idx(path, torch.zeros(3, dtype=torch.uint8))
    x = load_idx(path)
    x += 1  # would fail or warn on a read-only buffer
    assert x.tolist() == [1, 1, 1]


GOOD = mnist_bytes(np.zeros((2, 3, 3)))

CORRUPT = {
    "empty": (b"", "too short"),
    "short header": (b"\x00\x00", "too short"),
    "bad magic": (b"\x01\x00" + GOOD[2:], "magic"),
    "unknown type": (b"\x00\x00\x07\x03" + GOOD[4:], "type code"),
    "zero dims": (b"\x00\x00\x08\x00", "0 dimensions"),
    "truncated dims": (GOOD[:10], "truncated IDX header"),
    "truncated data": (GOOD[:-1], "truncated IDX data"),
    "trailing bytes": (GOOD + b"\x00", "trailing"),
}


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("case", sorted(CORRUPT))
def test_corrupt_files_raise_value_error_naming_file(tmp_path, case, compress):
    content, message = CORRUPT[case]
    path = tmp_path / f"broken-{case.replace(' ', '_')}"
    path.write_bytes(gzip.compress(content) if compress else content)
    with pytest.raises(ValueError, match=message) as info:
        load_idx(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("cut", [5, 20, -8, -1])
def test_truncated_gzip_stream(tmp_path, cut):
    path = tmp_path / "cut.gz"
    path.write_bytes(gzip.compress(GOOD)[:cut])
    with pytest.raises(ValueError, match="cut.gz"):
        load_idx(path)


def test_ndim_mismatch(tmp_path):
    path = tmp_path / "labels"
    save_idx(path, torch.zeros(4, dtype=torch.uint8))
    with pytest.raises(ValueError, match="3 dimension"):
        load_idx(path, ndim=3)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_idx(tmp_path / "absent")


def test_save_rejects_unsupported(tmp_path):
    with pytest.raises(TypeError, match="unsupported dtype"):
        save_idx(tmp_path / "b", torch.zeros(2, dtype=torch.bool))
    with pytest.raises(ValueError, match="dimensions"):
        save_idx(tmp_path / "s", torch.tensor(1, dtype=torch.uint8))
