"""``meanode doctor``: which ODE backends are usable here, and why not.

* scipy: always required; its version.
* torch: its version and whether CUDA is available (``device="cuda"`` for the expectations).
* julia: usable or the precise reason not (:func:`meanode.julia.julia_status`, which never starts
  Julia); ``--start-julia`` starts it (minutes on the very first use) and reports Julia's version.

Wire it into the command line with :func:`add_parser` (``subparsers`` of argparse) and dispatch
to :func:`run`.
"""

from __future__ import annotations

import argparse
import platform
import sys

__all__ = ["add_parser", "run", "backend_report"]


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``doctor`` sub-command to an argparse ``subparsers`` object; returns its parser."""
    p = subparsers.add_parser("doctor", help="report which ODE backends (scipy, torch, julia) are usable",
                              description=__doc__.splitlines()[0])
    p.add_argument("--start-julia", action="store_true",
                   help="also start Julia (may download Julia and install packages on first use: minutes)")
    p.set_defaults(func=run)
    return p


def backend_report(start_julia: bool = False) -> list[tuple[str, bool, str]]:
    """``[(backend, usable, detail), ...]`` for scipy, torch and julia."""
    rows: list[tuple[str, bool, str]] = []
    try:
        import scipy
        rows.append(("scipy", True, f"scipy {scipy.__version__}"))
    except Exception as e:  # pragma: no cover - a hard dependency
        rows.append(("scipy", False, f"import failed: {type(e).__name__}: {e}"))
    try:
        import torch
        cuda = torch.cuda.is_available()
        detail = f"torch {torch.__version__}, CUDA available: {'yes' if cuda else 'no'}"
        if cuda:
            detail += f" ({torch.cuda.device_count()} device(s), {torch.cuda.get_device_name(0)})"
        rows.append(("torch", True, detail))
    except Exception as e:  # pragma: no cover - a hard dependency
        rows.append(("torch", False, f"import failed: {type(e).__name__}: {e}"))
    from .julia import bridge
    ok, reason = bridge.julia_status()
    if ok and start_julia:
        try:
            runtime = bridge.start()
            version = runtime.version() if hasattr(runtime, "version") else "?"
            reason = f"started: Julia {version}; {reason}"
        except bridge.JuliaUnavailableError as e:
            ok, reason = False, str(e)
    elif not ok:
        reason = f"not available: {reason}"
    rows.append(("julia", ok, reason))
    return rows


def run(args: argparse.Namespace) -> int:
    """Print the report; 0 when the required backends (scipy, torch) work, else 1."""
    from . import __version__

    print(f"meanode {__version__}, Python {platform.python_version()} ({sys.executable})")
    rows = backend_report(start_julia=bool(getattr(args, "start_julia", False)))
    for name, ok, detail in rows:
        print(f"  {name:6s} {'usable' if ok else 'NOT usable':10s}  {detail}")
    required_ok = all(ok for name, ok, _ in rows if name in ("scipy", "torch"))
    return 0 if required_ok else 1
