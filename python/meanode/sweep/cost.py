"""The cost model of a sweep: seconds and memory per point and reference, before anything runs.

Used by the dry run (``--dry-run``), by the progress bar (tasks weighted by their cost), and to
refuse a point that cannot fit in memory before it is submitted.
"""

from __future__ import annotations

import os

from .references import reference_identity
from .spec import MeasureSpec, SweepSpec
from .store import reference_key
from .training import point_memory_bytes, seed_chunk

__all__ = ["CPU_SECONDS_PER_UNIT", "POINT_OVERHEAD_S", "estimate_point_seconds", "estimate_reference_seconds",
           "plan_summary", "memory_limit_bytes", "point_memory_bytes"]

#: Seconds per (seed x step x sample x unit x (D + 4)) for the batched trainer on one CPU core
#: (float64, the compiled 2LP kernel; measured by benchmarks/bench_trainer.py on this project's
#: machines: 1.6e-9 to 2.7e-9 at the current and wide shapes; a GPU is typically 10-100x faster
#: at large sizes).
CPU_SECONDS_PER_UNIT = 2.2e-9
#: Seconds per (seed x step x layer): the per-layer cost that dominates small and deep-narrow
#: shapes (measured: ~0.8 microseconds, tiny and deep shapes of the same benchmark).
CPU_SECONDS_PER_LAYER = 8e-7
POINT_OVERHEAD_S = 0.05


def estimate_point_seconds(s: dict, n_seeds: int, measure: MeasureSpec | None = None) -> float:
    n = s["N"] + s["N_eval"]
    work = n_seeds * (s["K"] + 1) * n * s["L"] * s["M"] * (s["D"] + 4)
    layers = n_seeds * (s["K"] + 1) * s["L"]
    extra = 2.0 if measure is not None and (measure.linearisation or measure.preactivation) else 0.0
    return POINT_OVERHEAD_S + (CPU_SECONDS_PER_UNIT * work + CPU_SECONDS_PER_LAYER * layers) * (1.0 + extra)


def estimate_reference_seconds(ident: dict) -> float:
    """Seconds for a reference (measured rates of the closure, the lazy ODE and quadrature nodes;
    the node count is what the rule options say they will use)."""
    m = ident["method"]
    K1 = ident["K"] + 1
    n = ident["N"] + ident["N_eval"]
    if m == "closure":  # measured: 1.1 s at D = 64, K = 15 on one core, ~D^2
        return 0.3 + 1.1 * (ident["D"] / 64) ** 2 * K1 / 16
    if m == "lazy":
        return 1.0 * K1 ** 2 * n / 20
    if m == "network":
        s = dict(N=ident["N"], N_eval=ident["N_eval"], K=ident["K"], L=ident["L"], M=ident["M"], D=ident["D"])
        return estimate_point_seconds(s, len(ident["seeds"]))
    from ..blocks import TwoLayerBlock
    from ..limit.options import as_rule
    from .training import block as block_of

    block = block_of(dict(ident, d_head=ident.get("d_head", 1))) or TwoLayerBlock(ident["D"], ident["activation"])
    opts = {k: ident[k] for k in ("level", "coarse") if ident.get(k) is not None}
    rule = as_rule(ident.get("rule") or "auto", block, **opts)
    nodes = rule.num_nodes(block.dz) / (2 if block.odd_symmetric else 1)
    per_node = 2.5e-6 * (20.0 * ident.get("T", 1) ** 2 if ident.get("block") == "attention" else 1.0)
    return 0.5 + per_node * nodes * K1 ** 2 * n / 20


def memory_limit_bytes() -> int:
    """The most memory one point may plan to use: ``MEANODE_MAX_MEMORY_GB`` if set, else the machine's
    physical memory."""
    env = os.environ.get("MEANODE_MAX_MEMORY_GB")
    if env:
        return int(float(env) * 2**30)
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        return 1 << 62


def plan_summary(spec: SweepSpec, out_dir=None) -> dict:
    """Points, references and estimated cost of a sweep (for ``--dry-run``); ``too_large`` lists the
    points whose smallest training call (one seed) would not fit in :func:`memory_limit_bytes`."""
    from .point import point_file

    pts = spec.points()
    refs = {}
    cost = 0.0
    mem = 0
    done = 0
    limit = memory_limit_bytes()
    too_large = []
    for p in pts:
        s = spec.settings(p)
        E = len(spec.point_seeds(p))
        cost += estimate_point_seconds(s, E, spec.measure)
        need = point_memory_bytes(s, seed_chunk(s, E))
        mem = max(mem, need)
        if point_memory_bytes(s, 1) > limit:
            too_large.append(p.label)
        ident = reference_identity(spec, p)
        if ident is not None:
            refs[reference_key(ident)] = ident
        if out_dir is not None and point_file(spec, p, out_dir).exists():
            done += 1
    ref_cost = sum(estimate_reference_seconds(i) for i in refs.values())
    return dict(name=spec.name, points=len(pts), done=done, seeds=len(spec.seeds), references=len(refs),
                reference_methods=sorted({i["method"] for i in refs.values()}), point_seconds=cost,
                reference_seconds=ref_cost, max_point_memory=mem, memory_limit=limit, too_large=too_large)
