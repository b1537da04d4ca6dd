"""Parameter sweeps: a frozen spec (YAML or Python), a pure point computation, pluggable executors,
one labelled file per point, and the merged dataset.

Spec
----
A :class:`SweepSpec` names the swept parameters and the fixed settings. Sweepable:
``L, M, D, alpha, eta, a, b, activation, seed`` and ``gamma`` (the residual-scale exponent in D,
see below). ``grid`` is a Cartesian product; ``zip`` rows vary together (e.g. the splits
``(L, M)`` of a fixed ``L M``); the points are ``product(grid) x zip rows``. Example file::

    name: width
    description: output error vs L for several M
    fixed: {D: 2, K: 3, alpha: 1.0, eta: 0.2, activation: tanh, N: 10, N_eval: 10}
    grid: {L: [4, 16, 64], M: [1, 4, 16]}
    zip: {L: [8, 64], M: [8, 64]}          # or a list of rows: [{L: 8, M: 8}, ...]
    seeds: 16                               # seeds 0..15 (or a list), batched on the ensemble axis
    reference: {method: quadrature}             # auto | quadrature | closure | lazy | network | none
    measure: {store_h: auto, linearisation: false, preactivation: false}

Fixed settings (defaults in :data:`DEFAULTS`): ``K`` (GD steps), ``N``, ``N_eval`` (held-out
inputs), ``d_in``, ``d_out``, ``data_seed``, ``embed_seed``, ``D_max`` (coupled embeddings are
drawn at ``D_max``, default the largest D of the sweep, SPEC §1), ``divergence_threshold``,
``device`` (``cpu``, ``cuda`` or ``auto``), ``dtype`` (``float64``). A bad file raises
:class:`SweepSpecError` naming the field (``grid.L: ...``).

``gamma`` (residual-scale exponent in D). SPEC §1's residual branch is ``(alpha/(L M)) sum_j v
sigma(u.h/D)`` with ``v ~ N(0, D I)``: per coordinate the residual scale is ``alpha sqrt(D)/(L M)``,
i.e. ``D^(1/2)/(L M)`` at ``alpha = 1``. A residual scale ``D^gamma/(L M)`` is obtained through the
multiplier: the point runs with ``alpha_eff = alpha D^(gamma - 1/2)`` (so ``gamma = 1/2`` is SPEC
§1). SPEC's rate ``eta L M D / alpha_eff^2`` keeps the per-step output change Theta(1) for every
gamma, so what gamma changes is how far the units must move: relative unit movement
``~ D^-gamma``, pre-activation movement ``~ D^(1/2 - gamma)`` (only gamma = 1/2 moves
pre-activations Theta(1) as D grows: complete feature learning), feature movement ``~ D^0``.

References (one per data, embedding, alpha, eta, K, activation, D, cached on disk): ``quadrature``
/ ``closure`` / ``auto`` call :func:`meanode.limit.mean_ode_limit`; ``lazy`` calls
:func:`meanode.limit.lazy_limit` (alpha-independent); ``network`` is the seed mean of a large
finite network ``(L, M, D)`` of the reference spec with its own seeds (SPEC §6: "the largest
network as reference"; hidden states are compared on the first D coordinates, the embeddings
being coupled), with error estimate its seed standard error; ``none`` measures only the
reference-free observables. The reference's ``error_estimate`` is stored with every point.

Point files (format ``meanode-sweep-point/1``; netCDF3 via scipy, see :mod:`.store`)
-------------------------------------------------------------------------------
``OUT/points/<label>__<key>.nc``; ``key`` hashes everything that determines the numbers
(settings, seeds, reference and measure specs, format version). A file is written to a
temporary name, fsynced and moved into place with :func:`os.replace`, so a file that exists is
complete; it carries a checksum of its contents, verified whenever it is read: a damaged file
is moved into ``damaged/`` and recomputed.
Dimensions: one length-1 dimension per swept parameter (``seed`` excepted), ``seed``, ``step``
(0..K, before the k-th update), ``sample`` (N), ``sample_eval`` (N_eval), ``out`` (d_out),
``coord`` (D, only when hidden states are stored). Variables (``*_eval``: held-out inputs):

==================  =========================  ==================================================
name                dims                       meaning
==================  =========================  ==================================================
loss                seed, step                 training loss R
f, f_eval           seed, step, sample, out    outputs
h, h_eval           seed, step, sample, coord  h^L (``measure.store_h``; ``auto``: D <= 64)
diverged            seed                       int8, 1 if the run diverged (never dropped)
diverged_step       seed                       int32, step where detected, -1 never
init_dev            seed                       RMS of h^L - h^0 at k = 0 (exact: the limit is h^0)
out_change          seed                       RMS of f_K - f_0
feature_change      seed                       RMS(h^L_K - h^L_0) / RMS(h^0)
unit_movement       seed                       |z_K - z_0| / |z_0|
lin_dist            seed                       distance to own linearisation (``measure``)
preact_move         seed                       pre-activation movement (``measure``)
fluct_{f,h}[_eval]  step                       seed standard deviation, RMS over samples/coords
f_ref, f_eval_ref   step, sample, out          the reference (absent with method none)
h_ref, h_eval_ref   step, sample, coord        (when h is stored)
ref_error           ()                         the reference's own error estimate (its norm: the
                                               file's ``reference_error_norm``: max-abs for limits,
                                               RMS standard error for networks)
ref_diverged        ()                         int8, only where the reference diverged (1) or its
                                               solve failed (2): no errors are measured there
err_{f,h}[_eval]    seed, step                 per-seed RMS error against the reference
total_{f,h}[_eval]  step                       RMS over seeds, samples, coords (SPEC §7)
euler_{f,h}[_eval]  step                       RMS of the seed mean of the error (SPEC §7)
wall_time           ()                         seconds for the point
computed            ()                         True (False where a merged cell has no point)
==================  =========================  ==================================================

Diverged seeds carry NaN after their divergence step, so every aggregate that involves them is
NaN: never zeroed or dropped (SPEC §7/§8). The merged dataset (``OUT/merged.nc``) has the same
variables with the swept parameters as full dimensions (cells not in the sweep: ``computed``
False, floats NaN, ``diverged`` -1, ``diverged_step`` -2).

Execution
---------
:func:`run_point` ``(spec, point, out_dir, ref_dir=None) -> path`` is a pure function of its
arguments (deterministic given the seeds) that writes one point file; :func:`run_reference` does
the same for a reference. :func:`run_sweeps` runs them on any :class:`concurrent.futures.Executor`
or a Dask ``distributed.Client``, or an executor it builds from a scheduler string (``serial``,
``pool:N``, ``local:N``, ``tcp://HOST:PORT``; :mod:`.executors`). It submits the missing
references first (with the points that need none) and each dependent point as soon as its
reference is on disk; points already on disk are skipped, so a killed sweep restarted with the
same spec computes only what is missing.

Modules: :mod:`.spec` (the spec and its validation), :mod:`.store` (keys, paths, checksummed
files), :mod:`.training`, :mod:`.references`, :mod:`.point`, :mod:`.merge`, :mod:`.cost` (the
cost model), :mod:`.executors`, :mod:`.driver`.
"""

from .cost import (CPU_SECONDS_PER_UNIT, estimate_point_seconds, estimate_reference_seconds, memory_limit_bytes,
                   plan_summary)
from .driver import SweepResult, run_sweep, run_sweeps
from .executors import (EXECUTORS, LocalExecutor, ProcessPool, SerialExecutor, WorkerDied, call_task, ensure_executor,
                        make_executor, register_executor)
from .merge import load_sweep, merge_points
from .point import compute_point, point_file, run_point
from .point import key as point_key
from .references import load_reference, reference_file, reference_identity, run_reference
from .spec import (DEFAULTS, FORMAT, SWEEPABLE, MeasureSpec, Point, ReferenceSpec, SweepError, SweepSpec,
                   SweepSpecError, alpha_eff)
from .store import DamagedFile
from .training import MAX_POINT_BYTES, device_name, point_memory_bytes, seed_chunk

#: the names of earlier versions
point_path = point_file
reference_path = reference_file

__all__ = [
    "SWEEPABLE", "DEFAULTS", "FORMAT", "SweepSpecError", "SweepError", "ReferenceSpec", "MeasureSpec", "SweepSpec",
    "Point", "alpha_eff", "run_point", "run_reference", "compute_point", "run_sweep", "run_sweeps", "SweepResult",
    "merge_points", "load_sweep", "load_reference", "reference_identity", "point_file", "reference_file",
    "point_path", "reference_path", "point_key", "DamagedFile", "SerialExecutor", "ProcessPool", "LocalExecutor", "WorkerDied",
    "call_task", "make_executor", "ensure_executor", "register_executor", "EXECUTORS", "estimate_point_seconds",
    "estimate_reference_seconds", "point_memory_bytes", "plan_summary", "memory_limit_bytes", "seed_chunk",
    "MAX_POINT_BYTES", "CPU_SECONDS_PER_UNIT", "device_name",
]
