import logging
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from bayesprune.export import ExportMismatchError, export_onnx, onnx_export
from tests.helpers import BakedBatch, SmallConvNet

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


class TwoInOut(nn.Module):
    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x + y, (x * y).sum(dim=1)


def _run(path: Path, **feed: torch.Tensor) -> list:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {k: v.numpy() for k, v in feed.items()})


def test_export_dynamic_batch(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = SmallConvNet().train()
    path = export_onnx(net, torch.randn(1, 1, 4, 4), tmp_path / "net.onnx")  # batch 1 example
    assert all(m.training for m in net.modules())
    model = onnx.load(str(path))
    assert [i.name for i in model.graph.input] == ["input"]
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    x = torch.randn(9, 1, 4, 4)
    (out,) = _run(path, input=x)
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(out), net.eval()(x), rtol=1e-4, atol=1e-5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["net.onnx"]


def test_names_for_several_inputs_and_outputs(tmp_path: Path) -> None:
    args = (torch.randn(2, 3), torch.randn(2, 3))
    path = export_onnx(TwoInOut(), args, tmp_path / "two.onnx")
    model = onnx.load(str(path))
    assert [i.name for i in model.graph.input] == ["input_0", "input_1"]
    assert [o.name for o in model.graph.output] == ["output_0", "output_1"]
    path = export_onnx(
        TwoInOut(), args, tmp_path / "named.onnx", input_names=["a", "b"], output_names=["s", "p"]
    )
    s, p = _run(path, a=args[0], b=args[1])
    torch.testing.assert_close(torch.from_numpy(p), (args[0] * args[1]).sum(1))
    with pytest.raises(ValueError, match="2 input names"):
        export_onnx(TwoInOut(), args, tmp_path / "bad.onnx", input_names=["a"])


# tracing BakedBatch warns (TracerWarning) that the int is frozen: that is the bug under test
@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
def test_baked_batch_size_is_caught_and_nothing_written(tmp_path: Path) -> None:
    with pytest.raises(ExportMismatchError, match="doubled batch"):
        export_onnx(BakedBatch(), torch.randn(2, 3), tmp_path / "baked.onnx")
    assert list(tmp_path.iterdir()) == []


def test_without_onnxruntime_warns_and_exports(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes `import onnxruntime` fail
    with caplog.at_level(logging.WARNING, logger="bayesprune.export.onnx_export"):
        path = export_onnx(SmallConvNet(), torch.randn(2, 1, 4, 4), tmp_path / "n.onnx")
    assert path.exists()
    assert "onnxruntime is not installed" in caplog.text


def test_without_onnx_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(ImportError, match=r"bayesprune\[export\]"):
        export_onnx(SmallConvNet(), torch.randn(2, 1, 4, 4), tmp_path / "n.onnx")


def test_fallback_after_classic_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("unsupported operator")

    monkeypatch.setattr(onnx_export, "_export_classic", broken)
    called = []
    monkeypatch.setattr(onnx_export, "_export_dynamo", lambda *a, **k: called.append(True))
    monkeypatch.setitem(sys.modules, "onnxscript", None)
    with pytest.raises(RuntimeError, match="unsupported operator.*onnxscript"):
        export_onnx(SmallConvNet(), torch.randn(2, 1, 4, 4), tmp_path / "n.onnx")
    with pytest.raises(RuntimeError, match="classic exporter"):
        export_onnx(
            SmallConvNet(), torch.randn(2, 1, 4, 4), tmp_path / "n.onnx", exporter="torchscript"
        )
    with pytest.raises(ImportError, match="onnxscript"):
        export_onnx(SmallConvNet(), torch.randn(2, 1, 4, 4), tmp_path / "n.onnx", exporter="dynamo")
    assert not called
    assert list(tmp_path.iterdir()) == []


def test_rejects_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="exporter"):
        export_onnx(SmallConvNet(), torch.randn(1, 1, 4, 4), tmp_path / "n.onnx", exporter="tf")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="input 1"):
        export_onnx(TwoInOut(), (torch.randn(1, 2), 3.0), tmp_path / "n.onnx")
