"""What the CLI does with an exception: input mistakes (a ``BayesPruneError`` or a missing
file) print one line and exit 2; every other exception is a bug and propagates with its
traceback; ``--debug`` lets input mistakes propagate too."""

from __future__ import annotations

import shutil

import pytest

import bayesprune.cli.main as cli
from bayesprune.errors import BayesPruneError, CheckpointError, SpecError
from tests.helpers import TINY_SPEC_HEAD, run_main

PRIOR = """
[prior]
name = "halo"
per = "unit"
layers = ["fc1"]
"""
SPEC = TINY_SPEC_HEAD + PRIOR + "\n[fit]\nepochs = 1\nbatch_size = 64\n"


@pytest.fixture(scope="module")
def fitted_run(tmp_path_factory):
    """A run folder after a one-epoch fit (shared: tests only read it)."""
    root = tmp_path_factory.mktemp("errors")
    spec = root / "tiny.toml"
    spec.write_text(SPEC)
    code, _, err = run_main(["fit", str(spec), "--out", str(root / "run"), "--no-progress"])
    assert code == 0, err
    return root / "run"


def assert_one_line(err: str, command: str) -> None:
    assert err.count("\n") == 1 and err.startswith(f"bayesprune {command}: error: "), err
    assert "Traceback" not in err


def test_a_bad_spec_prints_one_line_and_exits_2(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text(SPEC.replace('name = "halo"', 'name = "nope"'))
    code, out, err = run_main(["fit", str(bad), "--out", str(tmp_path / "run")])
    assert code == 2 and out == ""
    assert_one_line(err, "fit")
    assert str(bad) in err and "'nope'" in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("where", ["before", "after"])
def test_debug_lets_the_error_propagate(tmp_path, where):
    bad = tmp_path / "bad.toml"
    bad.write_text("[network\n")
    argv = ["fit", str(bad)]
    argv = ["--debug", *argv] if where == "before" else [*argv, "--debug"]
    with pytest.raises(SpecError, match="not valid TOML"):
        run_main(argv)


def test_global_flags_are_read_before_and_after_the_command():
    parse = cli._parser().parse_args
    assert not parse(["fit", "x.toml"]).debug and not parse(["fit", "x.toml"]).verbose
    assert parse(["--debug", "-v", "report", "run"]).debug
    args = parse(["extract", "run", "-v", "--debug"])
    assert args.debug and args.verbose


@pytest.mark.parametrize("bug", [ZeroDivisionError("bug"), TypeError("bug"), ValueError("bug")])
def test_a_bug_inside_fit_is_not_swallowed(spec_file, tmp_path, monkeypatch, bug):
    def broken(*args, **kwargs):
        raise bug

    monkeypatch.setattr(cli, "fit", broken)
    with pytest.raises(type(bug), match="bug") as e:
        run_main(["fit", str(spec_file), "--out", str(tmp_path / "run"), "--no-progress"])
    assert not isinstance(e.value, BayesPruneError)


def test_a_bug_inside_extract_is_not_swallowed(fitted_run, monkeypatch):
    def broken(*args, **kwargs):
        raise TypeError("unsupported operand")

    monkeypatch.setattr(cli, "collapse", broken)
    with pytest.raises(TypeError, match="unsupported operand"):
        run_main(["extract", str(fitted_run), "--no-latency"])


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("optimizer", '"adagrad"'),
        ("schedule", '"linear"'),
        ("loss", '"elbo"'),
        ("weight_decay", "-1.0"),
        ("role_lr", "{ weights = 0 }"),
        ("seed", '"zero"'),
        ("checkpoint_every", "0"),
        ("device", '"gpu:x"'),
    ],
)
def test_bad_fit_options_are_spec_errors_before_anything_is_written(tmp_path, key, value):
    bad = tmp_path / "bad.toml"
    bad.write_text(SPEC + f"{key} = {value}\n")
    code, _, err = run_main(["fit", str(bad), "--out", str(tmp_path / "run")])
    assert code == 2
    assert_one_line(err, "fit")
    assert f"[fit] {key}" in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (["--device", "cuda:99"], "device='cuda:99'"),
        (["--device", "nonsense"], "[fit] device"),
        (["--augment", "rotate"], "[data] augment"),
        (["--epochs", "-1"], "[fit] epochs"),
        (["--workers", "-2"], "[data] workers"),
        (["--data-root", "/nonexistent/folder"], "[data]"),
    ],
)
def test_bad_fit_flags_print_one_line(spec_file, tmp_path, flags, says):
    code, _, err = run_main(["fit", str(spec_file), "--out", str(tmp_path / "run"), *flags])
    assert code == 2
    assert_one_line(err, "fit")
    assert says in err
    assert not (tmp_path / "run").exists()


def test_an_out_path_that_is_a_file_is_refused(spec_file, tmp_path):
    code, _, err = run_main(["fit", str(spec_file), "--out", str(spec_file)])
    assert code == 2 and "a file is in the way" in err
    assert spec_file.read_text() == SPEC


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["extract", "{run}", "--no-latency", "--keep", "1.5"], "keep must be a fraction"),
        (["report", "{run}", "--num-samples", "0"], "--num-samples"),
        (["report", "{run}", "--max-examples", "0"], "max_examples"),
        (["extract", "{run}/nothing-here"], "spec.json"),
    ],
)
def test_bad_values_after_a_fit_print_one_line(fitted_run, argv, says):
    code, _, err = run_main([a.format(run=fitted_run) for a in argv])
    assert code == 2
    assert_one_line(err, argv[0])
    assert says in err


def test_a_corrupt_run_file_is_a_checkpoint_error(fitted_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(fitted_run, run)
    (run / "spec.json").write_text("{not json")
    code, _, err = run_main(["extract", str(run), "--no-latency"])
    assert code == 2 and "spec.json is not valid JSON" in err
    with pytest.raises(CheckpointError, match="spec.json"):
        run_main(["--debug", "extract", str(run), "--no-latency"])
