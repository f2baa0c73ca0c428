"""The command line the benchmark scripts share (they run as scripts: ``python benchmarks/NAME.py``)."""

import argparse


def parser(doc: str) -> argparse.ArgumentParser:
    """An argument parser showing the script's docstring, with ``--quick`` (small sizes, for a smoke test)."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small sizes (seconds), for a smoke test")
    return p
