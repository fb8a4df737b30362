"""Every script in ``examples/`` runs in smoke mode (``BAYESPRUNE_SMOKE=1``: tiny synthetic
data, a few steps) as a user would run it -- a fresh interpreter in an empty folder -- and
ends with the line it promises. A new example is one line in ``EXAMPLES``."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES_DIR = Path(__file__).resolve().parents[2] / "examples"

# script -> regular expression its last printed line must match in full
EXAMPLES = {
    "budget_flops_lenet5.py": r"\d+\.\d\d% of the dense FLOPs \(budget 10%\), test accuracy \d+\.\d\d%",
    "gates_lenet5_report.py": r"report: \S+report\.html",
    "halo_sequential.py": r"test accuracy \d+\.\d\d% with 2\.00% of the weights kept",
    "pyro_svi_loop.py": r"posterior predictive accuracy on \d+ test images: \d+\.\d\d%",
    "resnet18_torchvision.py": r"extracted matches masked: True \(max \|diff\| \S+ on \d+ test images\)",
}


def test_every_example_is_listed():
    assert sorted(p.name for p in EXAMPLES_DIR.glob("*.py")) == sorted(EXAMPLES)


@pytest.mark.parametrize("script", sorted(EXAMPLES))
def test_example_runs_in_smoke_mode(script, tmp_path):
    env = {**os.environ, "BAYESPRUNE_SMOKE": "1", "PYTHONUNBUFFERED": "1"}
    done = subprocess.run(
        [sys.executable, str(EXAMPLES_DIR / script)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    assert lines, f"{script} printed nothing; stderr: {done.stderr[-2000:]}"
    assert re.fullmatch(EXAMPLES[script], lines[-1]), lines[-1]
    assert not list(tmp_path.iterdir()), "an example left files in its working folder"
