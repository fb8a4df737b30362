"""What a fit shows while it runs: the step bar, one line per epoch, and the NaN guard.

>>> format_record({"epoch": 1, "loss": 0.5, "seconds": 2.0, "val_accuracy": 0.9}, epochs=3)
'epoch 1/3  -elbo/n 0.5000  2.0s  val acc 90.00%'
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from bayesprune.errors import NonFiniteLossError


def step_bar(total: int | None, initial: int, epoch: int, epochs: int, show: bool) -> tqdm:
    """The per-epoch step bar; only drawn on a terminal (logs and CI get one line per epoch)."""
    return tqdm(
        total=total,
        initial=initial,
        desc=f"epoch {epoch + 1}/{epochs}",
        disable=not show or not sys.stderr.isatty(),
        leave=False,
        dynamic_ncols=True,
    )


def postfix(loss: float, history: list[dict[str, Any]]) -> dict[str, str]:
    """The bar's live figures: the ELBO window, and the last epoch's validation accuracy,
    kept fraction and units alive."""
    out = {"-elbo/n": f"{loss:.4g}"}
    if history:
        last = history[-1]
        if "val_accuracy" in last:
            out["val"] = f"{100 * last['val_accuracy']:.1f}%"
        if "kept" in last:
            out["kept"] = f"{100 * last['kept']:.1f}%"
        if "units" in last:
            out["units"] = "-".join(str(v) for v in last["units"].values())
    return out


def format_record(r: dict[str, Any], epochs: int) -> str:
    """One epoch's line."""
    parts = [f"epoch {r['epoch']}/{epochs}", f"-elbo/n {r['loss']:.4f}", f"{r['seconds']:.1f}s"]
    if "val_accuracy" in r:
        parts.append(f"val acc {100 * r['val_accuracy']:.2f}%")
    if "kept" in r:
        parts.append(f"kept {100 * r['kept']:.2f}%")
    if "units" in r:
        parts.append("units " + "-".join(str(v) for v in r["units"].values()))
    return "  ".join(parts)


def guard(mean: float, epoch: int, step: int, ckpt_dir: Path | None) -> None:
    """Stop the fit with a :class:`NonFiniteLossError` when the window's mean loss is not
    finite, saying where and whether a good checkpoint is left."""
    if math.isfinite(mean):
        return
    if ckpt_dir is not None and (ckpt_dir / "last.pt").exists():
        keep = (
            f"the last good checkpoint {ckpt_dir / 'last.pt'} is intact "
            "(resume=True continues from it)"
        )
    else:
        keep = "no checkpoint was written (pass checkpoint=<folder> to keep progress)"
    raise NonFiniteLossError(
        f"fit: the loss became {mean} at epoch {epoch + 1}, step {step}; stopping. {keep}. "
        "Lower the learning rate or check the data and hyper-parameters."
    )
