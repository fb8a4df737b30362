"""``bayesprune report RUN_DIR``: diagnose a fitted run and write its report.

::

    bayesprune report runs/halo-lenet5 --num-samples 100

Rebuilds the net and guide from the run folder (as ``extract`` does), runs
:func:`bayesprune.diagnostics.diagnose` on the test split (the validation split if there
is none), saves ``RUN_DIR/idata.nc``, collapses with the spec's ``[collapse]`` settings
or to its ``[budget]`` (the same network ``extract`` writes) and writes ``RUN_DIR/report/report.html``,
``report.md`` and the PNG figures. A ``[method]`` run (a baseline, no posterior) is
refused with a one-line error.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

from bayesprune.atomic import atomic_output
from bayesprune.cli.fitted import load_fitted, read_spec
from bayesprune.cli.run_dir import RunDir
from bayesprune.data import Dataset, Split
from bayesprune.errors import ConfigError, UnsupportedError
from bayesprune.pruning import collapse

__all__ = ["add_report_parser", "cmd_report"]


def add_report_parser(sub: Any) -> argparse.ArgumentParser:
    """Add the ``report`` subcommand to the ``bayesprune`` subparsers ``sub``."""
    r = sub.add_parser("report", help="diagnose a fitted run and write report.html")
    r.add_argument("run", type=Path, help="a run folder written by 'bayesprune fit'")
    r.add_argument(
        "--num-samples", type=int, default=100, help="posterior draws for diagnostics (100)"
    )
    r.add_argument(
        "--max-examples",
        type=int,
        help="diagnose only the first N examples of the split (default: all; each draw is "
        "one pass over them)",
    )
    r.add_argument(
        "--forecast-samples",
        type=int,
        default=16,
        help="posterior draws for the pruning forecast on the validation split (16; 0: none)",
    )
    r.add_argument("--data-root", type=Path, help="folder holding the data set files")
    r.add_argument("--no-latency", action="store_true", help="skip latency measurement")
    return r


def cmd_report(args: argparse.Namespace) -> int:
    from bayesprune.diagnostics import diagnose
    from bayesprune.report import report

    if args.num_samples < 1:
        raise ConfigError(f"--num-samples must be >= 1, got {args.num_samples}")
    if args.forecast_samples < 0:
        raise ConfigError(f"--forecast-samples must be >= 0, got {args.forecast_samples}")
    method = read_spec(RunDir(args.run)).method
    if method:
        raise UnsupportedError(
            f"{args.run} is a [method] run ({method['name']}): a baseline has no posterior "
            "to diagnose or report; 'bayesprune extract' gives its accuracy, size and FLOPs"
        )
    fitted = load_fitted(args.run, args.data_root)
    run, spec, net, guide = fitted.run, fitted.spec, fitted.net, fitted.guide
    result = fitted.result()
    idata = diagnose(
        net,
        guide,
        fitted.data,
        num_samples=args.num_samples,
        result=result,
        max_examples=args.max_examples,
    )
    with atomic_output(run.root / "idata.nc") as tmp:
        idata.to_netcdf(str(tmp))
    keep = collapse(net, guide, **spec.collapse_kwargs())
    html = report(
        net,
        result,
        idata,
        out=run.root / "report",
        keep=keep,
        original=spec.build_network(),
        data=_forecast_data(fitted.data, args.max_examples) if args.forecast_samples else None,
        forecast_samples=args.forecast_samples,
        measure_latency=not args.no_latency,
        title=f"bayesprune report: {run.root.name} ({type(net.module).__name__}, "
        f"{net.prior.name} prior, {guide.name} guide)",
    )
    a = idata.posterior.attrs
    if "accuracy_point" in a:  # classification
        print(
            f"diagnostics ({a['num_samples']} draws from q on {a['n_examples']} {a['split']} "
            f"examples): accuracy posterior point {100 * a['accuracy_point']:.2f}%, "
            f"posterior predictive {100 * a['accuracy_predictive']:.2f}%; "
            f"ECE {100 * a['ece_predictive']:.2f}%; PSIS k-hat {a['psis_khat']:.2f}"
        )
    print(f"ArviZ InferenceData: {run.root / 'idata.nc'}")
    print(f"report: {html}")
    return 0


def _forecast_data(data: Dataset, max_examples: int | None) -> Dataset:
    """The data the forecast is scored on (its validation split, else test), each held-out
    split cut to ``max_examples``."""
    if max_examples is None:
        return data
    cut = {
        name: Split(part.x[:max_examples], part.y[:max_examples])
        for name in ("val", "test")
        if (part := getattr(data, name)) is not None
    }
    return dataclasses.replace(data, **cut)
