"""``python -m flowfem``: the flowfem command (:func:`flowfem.cli.main`), where the console script
``flowfem`` is not on PATH (e.g. ``mpirun -n 2 python -m flowfem solve ...`` from a bare environment)."""

import sys

from flowfem.cli import main

sys.exit(main())
