from pathlib import Path

import pytest
import torch
from torch import nn

from bayesprune.export import ExportMismatchError, export_torchscript
from bayesprune.export.torchscript import assert_outputs_close
from tests.helpers import BakedBatch, SmallConvNet


class TwoOutputs(nn.Module):
    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x + y, x * y


def test_export_and_reload(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = SmallConvNet(dropout=0.5).train()  # exported in eval mode; flags restored afterwards
    path = export_torchscript(net, torch.randn(2, 1, 4, 4), tmp_path / "sub" / "net.pt")
    assert path == tmp_path / "sub" / "net.pt"
    assert all(m.training for m in net.modules())
    loaded = torch.jit.load(str(path))
    x = torch.randn(7, 1, 4, 4)  # another batch size
    net.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), net(x))
    assert sorted(p.name for p in path.parent.iterdir()) == ["net.pt"]


def test_multiple_inputs_and_outputs(tmp_path: Path) -> None:
    args = (torch.randn(3, 2), torch.randn(3, 2))
    path = export_torchscript(TwoOutputs(), args, tmp_path / "two.pt")
    a, b = torch.jit.load(str(path))(*args)
    torch.testing.assert_close(b, args[0] * args[1])


# tracing BakedBatch warns (TracerWarning) that the int is frozen: that is the bug under test
@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
def test_baked_batch_size_is_caught_and_nothing_written(tmp_path: Path) -> None:
    with pytest.raises(ExportMismatchError, match="doubled batch"):
        export_torchscript(BakedBatch(), torch.randn(2, 3), tmp_path / "baked.pt")
    assert list(tmp_path.iterdir()) == []
    # with the check off, the (faithful for this batch size) trace is written
    export_torchscript(BakedBatch(), torch.randn(2, 3), tmp_path / "baked.pt", check_batch=False)
    assert [p.name for p in tmp_path.iterdir()] == ["baked.pt"]


def test_assert_outputs_close() -> None:
    t = torch.ones(2, 3)
    assert_outputs_close((t, {"a": t}), [t, t], "x", 1e-5, 1e-6)
    with pytest.raises(ExportMismatchError, match="max"):
        assert_outputs_close(t + 1e-3, t, "x", 1e-5, 1e-6)
    with pytest.raises(ExportMismatchError, match="shape"):
        assert_outputs_close(t[:1], t, "x", 1e-5, 1e-6)
    with pytest.raises(ExportMismatchError, match="2 outputs"):
        assert_outputs_close((t, t), t, "x", 1e-5, 1e-6)
    assert issubclass(ExportMismatchError, ValueError)
