"""``python -m bayesprune ...`` (and ``torchrun ... -m bayesprune fit SPEC.toml``): the CLI."""

import sys

from bayesprune.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
