"""Does memory stay flat over a long fit? Peak and current RSS, Pyro's param store and the
fit's own records after epochs 1, 10 and 50 of a LeNet-300-100 HALO fit.

One ``fit`` call on a Fashion-MNIST subset; a callback reads, at the end of the chosen
epochs: the peak RSS (``resource.getrusage(...).ru_maxrss``), the current RSS (VmRSS from
``/proc/self/status``, Linux), the number of entries in Pyro's param store, the history
length and the length of the ELBO trace. Growth of any of them beyond what the epochs
explain (one history record per epoch, one ELBO value per ``log_every`` steps) would show
a leak.

    python benchmarks/memory.py [--n-train 5000] [--epochs 50] [--guide map|mean_field]
        [--loss fused|trace] [--at 1 10 50]

Prints one line per chosen epoch and writes ``benchmarks/results/memory.json``.
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import time
from pathlib import Path

import pyro
import torch

import bayesprune as bp
from bayesprune.data import fashion_mnist
from bayesprune.guides import MAP, MeanField
from bayesprune.priors import HALO
from bayesprune.zoo import build


def current_rss_mib() -> float | None:
    """The process's resident set size now (Linux ``/proc``), in MiB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


class Probe:
    """Records memory figures at the end of the chosen epochs (1-based)."""

    def __init__(self, at: set[int]) -> None:
        self.at, self.rows, self.t0 = at, [], time.perf_counter()

    def on_epoch_end(self, state) -> None:
        if state.epoch not in self.at:  # state.epoch counts the epochs done
            return
        gc.collect()
        row = {
            "epoch": state.epoch,
            "peak_rss_mib": round(peak_rss_mib(), 1),
            "rss_mib": None if (r := current_rss_mib()) is None else round(r, 1),
            "param_store": len(list(pyro.get_param_store().keys())),
            "history": len(state.history),
            "elbo_trace": len(state.elbo),
            "seconds": round(time.perf_counter() - self.t0, 1),
        }
        self.rows.append(row)
        print(
            f"epoch {row['epoch']:3d}  peak RSS {row['peak_rss_mib']:7.1f} MiB  "
            f"RSS {row['rss_mib']} MiB  param store {row['param_store']}  "
            f"history {row['history']}  ELBO trace {row['elbo_trace']}  "
            f"{row['seconds']:.1f}s",
            flush=True,
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-train", type=int, default=5000)
    ap.add_argument("--epochs", type=int, default=50)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--guide", choices=["map", "mean_field"], default="map")
    ap.add_argument("--loss", choices=["fused", "trace"], default="fused")
    ap.add_argument("--at", type=int, nargs="+", default=[1, 10, 50])
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "memory.json")
    args = ap.parse_args()
    torch.manual_seed(0)
    data = fashion_mnist().first(args.n_train)
    net = bp.sparsify(build("lenet300"), HALO())
    guide = MAP(net) if args.guide == "map" else MeanField(net)
    rss = current_rss_mib()
    print(f"before the fit: peak RSS {peak_rss_mib():.1f} MiB, RSS {rss and round(rss, 1)} MiB")
    probe = Probe(set(args.at))
    bp.fit(
        net,
        data,
        guide,
        epochs=args.epochs,
        batch_size=args.batch_size,
        loss=args.loss,
        callbacks=[probe],
        progress=False,
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = {"args": {k: str(v) for k, v in vars(args).items()}, "rows": probe.rows}
    args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
