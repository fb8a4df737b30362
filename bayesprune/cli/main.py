"""The ``bayesprune`` command line.

::

    bayesprune fit models/halo-lenet5.toml --epochs 3 --out runs/halo-lenet5
    bayesprune extract runs/halo-lenet5
    bayesprune report runs/halo-lenet5
    bayesprune --help

A mistake in the input (a bad spec, flag, checkpoint or data file) prints one line,
``bayesprune <command>: error: <what and where>``, and exits with code 2. Any other
exception is a bug and propagates with its traceback. ``--debug`` (before or after the
command) shows the traceback of input mistakes too.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from bayesprune.budget import Budget
from bayesprune.cli.budget_spec import budget_of, control_of, with_measure
from bayesprune.cli.fitted import load_fitted, starting_network
from bayesprune.cli.method_run import pretrain, run_method
from bayesprune.cli.pretrained import save_weights
from bayesprune.cli.report_cmd import add_report_parser, cmd_report
from bayesprune.cli.run_dir import RunDir
from bayesprune.cli.spec import Spec
from bayesprune.data import Dataset
from bayesprune.errors import (
    BayesPruneError,
    CheckpointError,
    ConfigError,
    ExportMismatchError,
    SpecError,
    UnsupportedError,
)
from bayesprune.export import load
from bayesprune.export.pruned_network import save_pruned
from bayesprune.inference import evaluate, fit
from bayesprune.inference.distributed import resolve_device
from bayesprune.metrics import paired_latency, summarize
from bayesprune.pruning import collapse, extract

log = logging.getLogger("bayesprune")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bayesprune",
        description="Prune neural networks by Bayesian inference: fit a sparsity posterior "
        "with SVI, then extract the smaller deterministic network.",
    )
    _global_flags(p, default=False)
    sub = p.add_subparsers(dest="command", required=True)

    f = sub.add_parser("fit", help="fit a model spec (models/*.toml) into a run folder")
    f.add_argument("spec", type=Path, help="a TOML model spec, e.g. models/halo-lenet5.toml")
    f.add_argument("--epochs", type=int, help="override [fit] epochs")
    f.add_argument("--device", help="cpu, cuda, cuda:1, ... (override [fit] device)")
    f.add_argument("--out", type=Path, help="run folder (default: runs/<spec name>)")
    f.add_argument(
        "--resume", action="store_true", help="continue from the run folder's checkpoint"
    )
    f.add_argument("--seed", type=int, help="override [fit] seed")
    f.add_argument(
        "--resume-override",
        nargs="+",
        default=(),
        metavar="SETTING",
        help="with --resume: settings that may differ from the checkpoint's (e.g. schedule "
        "to lengthen a cosine fit, seed); by default a difference is an error naming it",
    )
    f.add_argument("--data-root", type=Path, help="folder holding the data set files")
    f.add_argument("--no-progress", action="store_true", help="no progress bar")
    f.add_argument(
        "--augment",
        help="random image augmentation, comma-separated: crop,flip (override [data] augment; "
        "'none' for none); trains from a DataLoader",
    )
    f.add_argument("--workers", type=int, help="loader worker processes (override [data] workers)")
    f.add_argument(
        "--budget",
        metavar="MEASURE=FRACTION",
        help="fit to this size and collapse to it, e.g. flops=0.1 (measures: weights, units, "
        "params, flops); sets [budget]'s measure, keeps its settings, replaces [collapse]",
    )

    e = sub.add_parser("extract", help="collapse a fitted run and write the smaller network")
    e.add_argument("run", type=Path, help="a run folder written by 'bayesprune fit'")
    e.add_argument(
        "--keep", type=float, help="fraction of weights/units kept (override [collapse])"
    )
    e.add_argument("--threshold", type=float, help="keep elements scoring above this")
    e.add_argument(
        "--budget",
        metavar="MEASURE=FRACTION",
        help="cut the posterior to this size, e.g. flops=0.2 (override [collapse]/[budget])",
    )
    e.add_argument("--data-root", type=Path, help="folder holding the data set files")
    e.add_argument("--no-latency", action="store_true", help="skip latency measurement")
    add_report_parser(sub)
    for command in sub.choices.values():  # also accepted after the command
        _global_flags(command, default=argparse.SUPPRESS)
    return p


def _global_flags(p: argparse.ArgumentParser, default: Any) -> None:
    """``-v`` and ``--debug``; a subcommand's copies default to SUPPRESS so that they do not
    overwrite a flag given before the command."""
    p.add_argument("-v", "--verbose", action="store_true", default=default, help="log more")
    p.add_argument(
        "--debug",
        action="store_true",
        default=default,
        help="show the traceback of input errors too (they print one line otherwise)",
    )


def cmd_fit(args: argparse.Namespace) -> int:
    spec = Spec.load(args.spec)
    if args.epochs is not None:
        spec.fit["epochs"] = args.epochs
    if args.seed is not None:
        spec.fit["seed"] = args.seed
    if args.device is not None:
        spec.fit["device"] = args.device
    if args.augment is not None:
        spec.data["augment"] = [a for a in args.augment.split(",") if a and a != "none"]
    if args.workers is not None:
        spec.data["workers"] = args.workers
    budget = Budget.parse(args.budget) if args.budget is not None else None
    if budget is not None:  # the budget decides the cut: no [collapse] rule beside it
        spec.budget, spec.collapse = with_measure(spec.budget, budget), {}
    spec.validate()
    # under torchrun every process runs this; process 0 alone writes the run folder
    world, main_process = int(os.environ.get("WORLD_SIZE", "1")), os.environ.get("RANK", "0") == "0"
    run = RunDir(args.out or Path("runs") / args.spec.stem)
    if run.root.exists() and not run.root.is_dir():
        raise ConfigError(f"--out {run.root}: a file is in the way of the run folder")
    if run.checkpoint.exists() and not args.resume:
        raise SpecError(
            f"{run.root} already holds a fit (checkpoints/last.pt); pass --resume to continue it "
            "or --out to start a new run folder (nothing was overwritten)"
        )
    if args.resume:
        if not run.checkpoint.exists():
            raise CheckpointError(f"--resume: no checkpoint at {run.checkpoint}")
        saved = Spec.from_dict(run.read_json(run.spec), source=str(run.spec))
        saved.fit["epochs"] = spec.fit["epochs"]
        if args.seed is not None:  # the checkpoint's guard says whether it may differ
            saved.fit["seed"] = args.seed
        if args.device is not None:
            saved.fit["device"] = args.device
        for key in ("augment", "workers"):  # how batches are made, not what is fitted
            if key in spec.data:
                saved.data[key] = spec.data[key]
        spec = saved
        if spec.method:
            raise UnsupportedError(
                f"--resume: {run.root} is a finished [method] run ({spec.method['name']}): "
                "there is nothing to continue; pass --out to fit it again in a new run folder"
            )
        if budget is not None and (not spec.budget or budget_of(spec.budget) != budget):
            fitted = budget_of(spec.budget).config() if spec.budget else "no budget"
            raise ConfigError(
                f"--resume --budget {args.budget}: {run.root} was fitted with {fitted}; a "
                "resumed fit keeps its budget (its controller's state is in the checkpoint); "
                "pass --out to fit with the new budget in a new run folder"
            )
    # a device this machine lacks fails here, before the run folder is written
    resolve_device(spec.fit["device"], torch.device("cpu"))
    # build everything before writing anything: a bad spec leaves no half-made run folder
    data_kw = {"root": args.data_root} if args.data_root else {}
    data = spec.build_data(**data_kw)
    train = spec.training_data(data, world)
    if spec.method:
        return run_method(
            spec, run, data, train, progress=not args.no_progress, main_process=main_process
        )
    network, started = _starting_network(spec, run, data, train, args)
    start = copy.deepcopy(network) if started is not None else None  # before sparsify
    net = spec.build_net(network)
    guide = spec.build_guide(net)
    if spec.budget:  # the prior and guide must be able to hold the budget: before writing
        try:
            control_of(spec.budget).check(net, guide)
        except ConfigError as e:
            raise SpecError(f"{spec.source}: [budget] {str(e).removeprefix('Budget: ')}") from None
    if main_process:
        run.root.mkdir(parents=True, exist_ok=True)
        run.write_json(run.spec, spec.to_dict())
        if start is not None and started is not None:
            save_weights(start, run.pretrained, {"network": spec.network_config()})
            run.update_metrics("pretrain", started)
            acc = started.get("final", {}).get("val_accuracy")
            if "epochs" in started:  # trained here: [pretrain]
                print(
                    f"pretrain done: {started['epochs']} dense epochs in "
                    f"{started['seconds']:.1f}s"
                    + (f", validation accuracy {100 * acc:.2f}%" if acc is not None else "")
                )
    kw = spec.fit_kwargs()
    log.info(
        "fitting %s on %s: %d sites over layers %s",
        spec.source,
        data.name,
        len(net.sites),
        net.layer_names,
    )
    t0 = time.perf_counter()
    result = fit(
        net,
        train,
        guide,
        val=data.val,
        checkpoint=run.checkpoints,
        resume=args.resume,
        resume_override=tuple(args.resume_override),
        progress=not args.no_progress,
        **kw,
    )
    seconds = time.perf_counter() - t0
    if not main_process:
        return 0
    run.write_json(run.history, result.history)
    run.write_elbo(result.elbo_steps, result.elbo)
    final = result.final
    run.update_metrics(
        "fit",
        {
            "epochs": len(result.history),
            "seconds": seconds,
            "epoch_seconds": result.epoch_seconds,
            "final": final,
        },
    )
    acc = final.get("val_accuracy")
    print(f"fit done: {len(result.history)} epochs in {seconds:.1f}s", end="")
    print(f", validation accuracy {100 * acc:.2f}%" if acc is not None else "")
    if "budget" in final:  # the last epoch's record says where a budgeted fit ended
        print(_steered(final["budget"]))
    print(f"run folder: {run.root}")
    return 0


def _starting_network(
    spec: Spec, run: RunDir, data: Dataset, train: Any, args: argparse.Namespace
) -> tuple[torch.nn.Module, dict[str, Any] | None]:
    """The network the fit starts from, and -- when it starts from pre-trained weights not
    yet saved in the run folder -- what to record about them (``None`` otherwise).

    ``[network] pretrained`` loads saved weights; ``[pretrain]`` trains the dense network
    first (a resumed fit reloads them from ``RUN/pretrained`` instead)."""
    if args.resume and (run.pretrained / "model.json").is_file():
        return starting_network(spec, run), None
    network = spec.build_network()
    if not spec.pretrain:
        path = spec.network.get("pretrained")
        return network, ({"source": str(path)} if path is not None else None)
    t0 = time.perf_counter()
    history = pretrain(
        network,
        train,
        val=data.val,
        section=spec.pretrain,
        fit=spec.fit,
        progress=not args.no_progress,
    )
    return network, {
        "source": "[pretrain]",
        "epochs": len(history),
        "seconds": time.perf_counter() - t0,
        "final": history[-1] if history else {},
    }


def _steered(record: dict[str, Any]) -> str:
    """One line on where a budgeted fit ended (its last history record's ``budget``)."""
    line = f"budget {record['metric']} {record['target']}: "
    cut = record.get("cut_report")
    if cut is not None:
        return line + (
            f"the posterior kept {cut['posterior']:.4g} at step {cut['step']}, cut to "
            f"{cut['final']:.4g} ({cut['cut']} more removed) and held"
        )
    return line + f"the posterior keeps {_sizes(record['size'])} (not cut during the fit)"


def _sizes(size: float | list[float]) -> str:
    return f"{size:.4g}" if isinstance(size, float) else "[" + ", ".join(map(_sizes, size)) + "]"


def _pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def cmd_extract(args: argparse.Namespace) -> int:
    fitted = load_fitted(args.run, args.data_root)
    run, spec, net, guide, data = fitted.run, fitted.spec, fitted.net, fitted.guide, fitted.data

    if args.budget is not None and (args.keep is not None or args.threshold is not None):
        raise ConfigError("--budget decides the cut by itself: drop --keep/--threshold")
    if spec.method:  # a baseline: its keep-sets were decided when it was fitted
        if args.keep is not None or args.threshold is not None or args.budget is not None:
            raise ConfigError(
                f"--keep/--threshold/--budget: {run.root} is a [method] run "
                f"({spec.method['name']}) whose keep-set was fixed by [method] keep when it "
                "was fitted and fine-tuned; fit it again with another keep"
            )
        ckw: dict[str, Any] = {"method": dict(spec.method)}
        keep = fitted.method_keep()
        point = "pruned network"
    else:
        ckw = spec.collapse_kwargs()
        if args.budget is not None:
            ckw = {"budget": Budget.parse(args.budget)}
        elif args.keep is not None or args.threshold is not None:  # --keep wins
            ckw = {k: v for k, v in ckw.items() if k != "budget"}  # [collapse] scope, by stay
            ckw["keep"] = args.keep
            ckw["threshold"] = args.threshold if args.keep is None else None
        keep = collapse(net, guide, **ckw)
        point = "posterior point"
    small = extract(net, keep).eval()
    dense = net.module.eval()

    test = data.split("test") if data.test is not None else data.split("val")
    with torch.inference_mode():
        acc_small = float((small(test.x).argmax(-1) == test.y).float().mean())
    acc_collapsed_point = evaluate(net, guide, test)["accuracy"]
    example = data.train.x[:1]
    measure = not args.no_latency
    # "before" is the network as the spec builds it: the same architecture the fit started
    # from, even when units were removed during training (remove_dead)
    original = spec.build_network().eval()
    before = summarize(original, example, measure=False)
    after = summarize(small, example, measure=False)
    if measure:  # timed interleaved, so that machine load hits both networks alike
        before["latency"], after["latency"] = paired_latency(original, small, example)
    layers = {
        name: {"kept": ks.n_kept, "of": _original_size(original, name, ks)}
        for name, ks in keep.items()
    }
    weights_total = sum(v["of"] for v in layers.values())
    weights_kept = sum(v["kept"] for v in layers.values())
    cut = getattr(keep, "budget", None)
    if "budget" in ckw:  # as JSON: {"budget": {"flops": 0.1}}
        ckw = {"budget": ckw["budget"].config()}
    summary: dict[str, Any] = {
        "collapse": ckw,
        **({"budget": dataclasses.asdict(cut)} if cut is not None else {}),
        "test_split": "test" if data.test is not None else "val",
        "accuracy_posterior_point": acc_collapsed_point,
        "accuracy_extracted": acc_small,
        "kept_fraction": weights_kept / max(weights_total, 1),
        "layers": layers,
        "before": before,
        "after": after,
    }
    paths = save_pruned(
        small,
        run.extracted,
        net=net,  # units removed during the fit are recorded in the original indexing
        network_config=getattr(dense, "config", {"name": type(dense).__name__}),
        keep=keep,
        input_shape=tuple(example.shape[1:]),
        extra={"metrics": summary},
    )
    run.update_metrics("extract", summary)
    print(
        f"{summary['test_split']} accuracy: {point} {_pct(acc_collapsed_point)}  ->  "
        f"extracted {_pct(acc_small)}"
    )
    print(
        "kept: "
        + _pct(summary["kept_fraction"])
        + " of prunable elements ("
        + ", ".join(f"{n} {v['kept']}/{v['of']}" for n, v in layers.items())
        + ")"
    )
    if cut is not None:
        print(str(cut))
    widths = _widths(original, small, keep)
    if widths:
        print("units per layer: " + ", ".join(f"{n} {a} -> {b}" for n, (a, b) in widths.items()))
    print(
        f"params: {before['params']:,} -> {after['params']:,} stored, {after['nonzeros']:,} nonzero"
    )
    print(
        f"FLOPs per example: {before['flops']:,} -> {after['flops']:,} dense, "
        f"{2 * after['sparse_macs']:,} counting nonzero weights only"
    )
    for b, a in zip(before["latency"], after["latency"], strict=False):
        print(
            f"CPU latency at batch {a['batch_size']}: {1e3 * b['median']:.3f} ms -> {1e3 * a['median']:.3f} ms"
        )
    print(f"extracted network: {paths[0]}")
    print(_reload_check(run.extracted, small, test.x[:512]))
    return 0


def _reload_check(path: Path, small: torch.nn.Module, x: torch.Tensor) -> str:
    """Load the saved network back from disk and compare its outputs with the in-memory one:
    what a user ships must be what was measured."""
    reloaded = load(path)
    with torch.inference_mode():
        a, b = small(x), reloaded(x)
    if torch.equal(a, b):
        return f"reloaded from {path}: outputs bitwise equal to the extracted network"
    diff = float((a - b).abs().max())
    if diff > 1e-5 * max(1.0, float(a.abs().max())):
        raise ExportMismatchError(
            f"{path}: the network loaded back differs from the one extracted (max |diff| {diff:.3g})"
        )
    return f"reloaded from {path}: outputs equal to the extracted network (max |diff| {diff:.1e})"


def _widths(
    original: torch.nn.Module, small: torch.nn.Module, keep: dict[str, Any]
) -> dict[str, tuple[int, int]]:
    """Output units of each structurally pruned layer, in the original and extracted nets."""
    out = {}
    for name, ks in keep.items():
        if ks.units is None:
            continue
        a = getattr(original.get_submodule(name), "weight", None)
        b = getattr(small.get_submodule(name), "weight", None)
        if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
            out[name] = (int(a.shape[0]), int(b.shape[0]))
    return out


def _original_size(original: torch.nn.Module, name: str, ks: Any) -> int:
    """How many prunable elements layer ``name`` had before any pruning."""
    if ks.weight_mask is not None:
        return ks.weight_mask.numel()
    weight = getattr(original.get_submodule(name), "weight", None)
    if ks.units is not None and isinstance(weight, torch.Tensor):
        return int(weight.shape[0])
    return int(ks.n_units or 1)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    commands = {"fit": cmd_fit, "extract": cmd_extract, "report": cmd_report}
    try:
        return commands[args.command](args)
    except (BayesPruneError, FileNotFoundError) as e:
        if args.debug:
            raise
        message = " ".join(str(e).splitlines())  # one line, whatever the message holds
        print(f"bayesprune {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
