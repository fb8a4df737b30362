"""Read and write IDX files, the format of MNIST and Fashion-MNIST.

An IDX file is a 4-byte magic number ``0x00 0x00 <dtype> <ndim>``, then ``ndim``
big-endian ``uint32`` dimension sizes, then the data in C order, big-endian.
Files may be gzip-compressed (detected from the content, not the file name).

>>> import tempfile, pathlib, torch
>>> path = pathlib.Path(tempfile.mkdtemp()) / "x-idx3-ubyte.gz"
>>> save_idx(path, torch.arange(24, dtype=torch.uint8).reshape(2, 3, 4))
>>> load_idx(path).shape
torch.Size([2, 3, 4])
"""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from bayesprune.errors import ConfigError, DataError, UnsupportedError

__all__ = ["load_idx", "save_idx"]

# IDX type code -> (big-endian numpy dtype, torch dtype)
_IDX_TYPES: dict[int, tuple[str, torch.dtype]] = {
    0x08: (">u1", torch.uint8),
    0x09: (">i1", torch.int8),
    0x0B: (">i2", torch.int16),
    0x0C: (">i4", torch.int32),
    0x0D: (">f4", torch.float32),
    0x0E: (">f8", torch.float64),
}
_TORCH_TO_CODE = {tdtype: code for code, (_, tdtype) in _IDX_TYPES.items()}
_GZIP_MAGIC = b"\x1f\x8b"


def _read_bytes(path: Path) -> bytes:
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] != _GZIP_MAGIC:
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path}: corrupt or truncated gzip stream ({e})") from e


def load_idx(path: str | os.PathLike[str], *, ndim: int | None = None) -> Tensor:
    """Read an IDX file (plain or gzip-compressed) into a tensor.

    The tensor's dtype follows the file's type code (``uint8`` for MNIST images
    and labels); the shape is the file's dimensions.

    :param path: the file to read.
    :param ndim: if given, the number of dimensions the file must have.
    :returns: a tensor that owns its memory.
    :raises FileNotFoundError: if ``path`` does not exist.
    :raises ValueError: naming ``path`` if the file is not a well-formed IDX file
        (bad magic number, unknown type code, unexpected ``ndim``, truncated or
        trailing data, corrupt gzip stream).

    >>> import tempfile, pathlib, torch
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "labels-idx1-ubyte"
    >>> save_idx(path, torch.tensor([3, 1, 4], dtype=torch.uint8))
    >>> load_idx(path, ndim=1)
    tensor([3, 1, 4], dtype=torch.uint8)
    """
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4:
        raise DataError(f"{path}: too short for an IDX header ({len(data)} bytes)")
    zero0, zero1, code, nd = data[0], data[1], data[2], data[3]
    if zero0 != 0 or zero1 != 0:
        raise DataError(f"{path}: bad IDX magic number 0x{data[:4].hex()} (must start with 0x0000)")
    if code not in _IDX_TYPES:
        raise DataError(
            f"{path}: unknown IDX type code 0x{code:02x}; "
            f"expected one of {', '.join(f'0x{c:02x}' for c in _IDX_TYPES)}"
        )
    if nd == 0:
        raise DataError(f"{path}: IDX header declares 0 dimensions")
    if ndim is not None and nd != ndim:
        raise DataError(f"{path}: expected an IDX file with {ndim} dimension(s), found {nd}")
    header = 4 + 4 * nd
    if len(data) < header:
        raise DataError(f"{path}: truncated IDX header ({len(data)} bytes, need {header})")
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=nd, offset=4))
    np_dtype, torch_dtype = _IDX_TYPES[code]
    expected = int(np.prod(shape, dtype=np.int64)) * np.dtype(np_dtype).itemsize
    actual = len(data) - header
    if actual < expected:
        raise DataError(
            f"{path}: truncated IDX data: shape {shape} needs {expected} bytes, found {actual}"
        )
    if actual > expected:
        raise DataError(
            f"{path}: {actual - expected} unexpected trailing bytes after IDX data of shape {shape}"
        )
    arr = np.frombuffer(data, dtype=np_dtype, offset=header).reshape(shape)
    # A native-endian, writable copy (frombuffer over ``bytes`` is read-only).
    arr = arr.astype(np.dtype(np_dtype).newbyteorder("="), copy=True)
    return torch.from_numpy(arr).to(torch_dtype)


def save_idx(path: str | os.PathLike[str], tensor: Tensor, *, compress: bool | None = None) -> None:
    """Write ``tensor`` as an IDX file, gzip-compressed if ``compress`` (default: name ends in ``.gz``).

    :param path: the file to write.
    :param tensor: a tensor of dtype ``uint8``, ``int8``, ``int16``, ``int32``,
        ``float32`` or ``float64`` with at least one dimension.
    :param compress: gzip the file; ``None`` means "if ``path`` ends in ``.gz``".
    :raises TypeError: for an unsupported dtype.
    :raises ValueError: for a 0-dimensional tensor.

    >>> import tempfile, pathlib, torch
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "t-idx2-float"
    >>> save_idx(path, torch.ones(2, 2))
    >>> load_idx(path).dtype
    torch.float32
    """
    path = Path(path)
    if tensor.dtype not in _TORCH_TO_CODE:
        raise UnsupportedError(
            f"save_idx({path}): unsupported dtype {tensor.dtype}; "
            f"expected one of {sorted(str(d) for d in _TORCH_TO_CODE)}"
        )
    if tensor.dim() == 0 or tensor.dim() > 255:
        raise ConfigError(f"save_idx({path}): need 1 to 255 dimensions, got {tensor.dim()}")
    code = _TORCH_TO_CODE[tensor.dtype]
    np_dtype = _IDX_TYPES[code][0]
    header = bytes([0, 0, code, tensor.dim()]) + np.asarray(tensor.shape, dtype=">u4").tobytes()
    body = tensor.detach().cpu().contiguous().numpy().astype(np_dtype, copy=False).tobytes()
    if compress is None:
        compress = path.suffix == ".gz"
    payload = header + body
    if compress:
        payload = gzip.compress(payload, compresslevel=6, mtime=0)
    path.write_bytes(payload)
