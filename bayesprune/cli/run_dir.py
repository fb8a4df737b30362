"""The run directory written by ``bayesprune fit`` and read by ``bayesprune extract``.

Layout::

    RUN/
      spec.json            the spec as run (overrides applied)
      checkpoints/last.pt  atomic checkpoint, rewritten every epoch
      history.json         one record per epoch (loss, seconds, validation, kept)
      elbo.csv             step, per-example negative ELBO
      metrics.json         fit summary; ``extract`` adds its figures
      extracted/           model.safetensors + model.json (no pickle)
      pretrained/          the starting weights, with [pretrain] or [network] pretrained
      dense/               a [method] run: the network after its dense training

A ``[method]`` run (magnitude, L1-structured) has no ``elbo.csv``; its ``checkpoints/last.pt``
holds the pruned, fine-tuned network and its keep-sets (:mod:`bayesprune.cli.method_run`),
and ``history.json`` the records of every stage (``"stage"``: dense, finetune).
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Any

from bayesprune.atomic import atomic_write
from bayesprune.errors import CheckpointError


class RunDir:
    """Paths and small JSON helpers of one run folder."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)

    @property
    def spec(self) -> Path:
        return self.root / "spec.json"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def checkpoint(self) -> Path:
        return self.checkpoints / "last.pt"

    @property
    def history(self) -> Path:
        return self.root / "history.json"

    @property
    def elbo(self) -> Path:
        return self.root / "elbo.csv"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.json"

    @property
    def extracted(self) -> Path:
        return self.root / "extracted"

    @property
    def pretrained(self) -> Path:
        return self.root / "pretrained"

    @property
    def dense(self) -> Path:
        return self.root / "dense"

    def write_json(self, path: Path, obj: Any) -> None:
        atomic_write(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())

    def read_json(self, path: Path) -> Any:
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing; is {self.root} a bayesprune run folder?")
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{path} is not valid JSON: {e}") from None

    def update_metrics(self, section: str, values: dict[str, Any]) -> dict[str, Any]:
        metrics = self.read_json(self.metrics) if self.metrics.is_file() else {}
        metrics[section] = values
        self.write_json(self.metrics, metrics)
        return metrics

    def write_elbo(self, steps: list[int], values: list[float]) -> None:
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["step", "neg_elbo_per_example"])
        w.writerows(zip(steps, values, strict=True))
        atomic_write(self.elbo, buf.getvalue().encode())
