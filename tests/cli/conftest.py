"""Fixtures of the CLI tests."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    """Many tiny ops: with 2 intra-op threads per xdist worker on a busy 2-core machine,
    every op waits on a descheduled thread. One thread each."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def spec_file(tmp_path: Path, request: pytest.FixtureRequest) -> Path:
    """The test module's ``SPEC`` text written to ``tmp_path/tiny.toml``."""
    path = tmp_path / "tiny.toml"
    path.write_text(request.module.SPEC)
    return path
