"""``python -m medkernels.compat [options] script.py args...`` (or ``-m module args...``).

Installs :mod:`medkernels.compat`, then runs the script (or module) as ``__main__`` with ``sys.argv`` set
to what follows it, as ``python script.py args...`` would.
"""

from __future__ import annotations

import argparse
import os
import runpy
import sys

from . import install


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m medkernels.compat",
        description="Run a script written against natten / mamba_ssm / causal_conv1d on medkernels' kernels.",
    )
    p.add_argument(
        "--natten",
        default=None,
        metavar="VERSION",
        help="natten API generation to impersonate: auto (default: every generation, each call read as the "
        "newest API it fits), 0.14, 0.15, 0.17, 0.21, or a version such as 0.17.3",
    )
    p.add_argument(
        "--packages",
        default="all",
        help="comma-separated: natten, mamba_ssm, causal_conv1d, mamba (both), all (default)",
    )
    p.add_argument(
        "--prefer",
        choices=("real", "medkernels"),
        default="real",
        help="an installed, working real package wins (real, default) or is shadowed (medkernels)",
    )
    p.add_argument("-m", dest="module", default=None, help="run a module as a script (like python -m)")
    p.add_argument("script", nargs="?", help="the script to run")
    p.add_argument("args", nargs=argparse.REMAINDER, help="its arguments")
    return p


def main(argv: list[str] | None = None) -> None:
    """Parses ``argv`` (default ``sys.argv[1:]``), installs the finder, runs the target."""
    args = _parser().parse_args(argv)
    if args.module is None and args.script is None:
        _parser().error("a script (or -m module) to run is required")
    packages = [p for p in args.packages.split(",") if p.strip()]
    try:
        install(packages, natten=args.natten, prefer=args.prefer)
    except (ValueError, TypeError) as exc:
        _parser().error(str(exc))
    if args.module is not None:
        rest = ([args.script] if args.script is not None else []) + args.args
        sys.argv = [args.module, *rest]
        runpy.run_module(args.module, run_name="__main__", alter_sys=True)
    else:
        sys.argv = [args.script, *args.args]
        sys.path.insert(0, os.path.dirname(os.path.abspath(args.script)))  # as `python script.py` does
        runpy.run_path(args.script, run_name="__main__")


if __name__ == "__main__":
    main()
