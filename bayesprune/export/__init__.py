"""Save, reload and export plain (extracted) networks.

- :func:`load`: load any network bayesprune saved (``bayesprune extract``,
  ``save_pruned``), no builder needed, in eval mode.
- :func:`save_network` / :func:`load_network`: safetensors weights plus a JSON
  description, no pickle, atomic writes, shape/dtype checks on load;
  ``load_network(path, like=module)`` reloads an extracted copy of one's own
  architecture into a fresh dense instance of it.
- :func:`export_torchscript`: traced TorchScript, checked against eager.
- :func:`export_onnx`: ONNX with a dynamic batch axis, checked with
  onnxruntime (optional extra ``bayesprune[export]``).

>>> sorted(__all__)[:3]
['ExportMismatchError', 'describe_layers', 'export_onnx']
"""

from __future__ import annotations

from bayesprune.export.loader import load
from bayesprune.export.onnx_export import export_onnx
from bayesprune.export.safetensors_io import describe_layers, load_network, save_network
from bayesprune.export.torchscript import ExportMismatchError, export_torchscript

__all__ = [
    "ExportMismatchError",
    "describe_layers",
    "export_onnx",
    "export_torchscript",
    "load",
    "load_network",
    "save_network",
]
