"""Quadrature options as objects: which node rule computes ``E_{z ~ mu0}`` in the Mean ODE, at which levels.

In the style of diffrax (``solver=Tsit5()``), each option object validates itself when built,
fills in its defaults for a block (:meth:`RuleOptions.resolve`), knows its node count
(:meth:`RuleOptions.num_nodes`, used by the sweeps' cost model) and builds its node sets::

    mean_ode_limit(..., rule=Lattice(level=12))              # step spacing / 12, pilot-oriented
    mean_ode_limit(..., rule=GaussHermite(level=20, coarse=14))
    mean_ode_limit(..., rule=RQMC(level=15, replicates=16))
    mean_ode_limit(..., rule="lattice", level=12)             # string shortcut, same thing

The error estimate compares the ``level`` rule with the ``coarse`` one (RQMC: the spread of the
replicates); see :func:`meanode.limit.mean_ode_limit`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable, ClassVar

from .._checks import integer, real
from . import quadrature as q
from .quadrature.lattice import DEFAULT_TAIL, _check_tail

__all__ = ["RuleOptions", "Lattice", "GaussHermite", "Smolyak", "RQMC", "RuleFamily", "as_rule", "RULES",
           "ORIENTS", "LATTICE_DEFAULTS"]

ORIENTS = ("pilot", "screened")

#: lattice rule defaults by unit dimension dz: (spacing, level), step h = spacing / level. Chosen
#: on the default problem (tanh, alpha = 1, eta = 0.2): about 1e-6 (dz = 4, K = 5) to 2e-3
#: (dz = 8, K = 15) in seconds to a minute; the coarser the lattice in high dz, the larger the
#: spacing that keeps the node count (~ (level / spacing)^dz) in reach
LATTICE_DEFAULTS = {1: (3.0, 40), 2: (3.0, 40), 3: (3.0, 12), 4: (3.0, 10), 5: (6.0, 10), 6: (6.0, 9),
                    7: (10.0, 12), 8: (10.0, 11)}
#: the coarse lattice of the estimate leaves out this many times the fine level's Gaussian mass:
#: the truncation error is then part of the gap (measured: with one tail for both levels, the D = 1
#: default estimate fell to 0.97 x its distance to a reference with tail 1e-11; tests/test_estimates.py)
COARSE_TAIL_FACTOR = 10.0


def _opt_int(name: str, value, minimum: int) -> int | None:
    return None if value is None else integer(name, value, minimum)


@dataclass(frozen=True)
class RuleOptions:
    """A family of node rules ``level -> Rule`` for ``z ~ N(0, var I_dz)`` (SPEC §4.3).

    level: the rule of the result; coarse: the rule it is compared with for the error estimate
    (None: the family's default, filled in by :meth:`resolve`); seed: rotations or scramblings.
    """

    level: int | None = None
    coarse: int | None = None
    seed: int = 0
    name: ClassVar[str] = "rule"
    #: independent node sets (rotations, scramblings) at the ``level``; 1 for deterministic rules
    replicates: ClassVar[int] = 1

    def __post_init__(self) -> None:
        _opt_int("level", self.level, 1)
        _opt_int("coarse", self.coarse, 1)
        integer("seed", self.seed, 0)
        if self.level is not None and self.coarse is not None and self.coarse >= self.level:
            raise ValueError(f"need coarse < level, got level={self.level}, coarse={self.coarse}")

    def resolve(self, block) -> "RuleOptions":
        """A copy with every default filled in for ``block`` (its ``dz``; checked)."""
        level = self.level if self.level is not None else self.default_level(block.dz)
        coarse = self.coarse if self.coarse is not None else self.default_coarse(level)
        return dataclasses.replace(self, level=level, coarse=coarse)

    def default_level(self, dz: int) -> int:
        raise NotImplementedError

    #: the error estimate falls about geometrically in ``level`` (``tol=`` may then jump levels)
    geometric: ClassVar[bool] = False

    def default_coarse(self, level: int) -> int:
        return max(1, level - 1)

    def family(self) -> Callable[[int, int, float], q.Rule]:
        """``rule(level, d, var) -> Rule``."""
        raise NotImplementedError

    def node_set(self, level: int, replicate: int, dz: int, var: float, ridges=None, coarse: bool = False) -> q.Rule:
        """The ``replicate``-th independent node set of ``level`` (deterministic rules: replicate 0
        only); ``coarse``: the node set that the estimate compares the level with."""
        return self.family()(level, dz, var)

    def num_nodes(self, dz: int) -> int:
        """Node count of the ``level`` rule before folding (resolved options), one replicate."""
        return self.family()(self.level, dz, 1.0).num_nodes

    def refined(self, block) -> "RuleOptions":
        """The next finer options (``tol=``): the ``level`` becomes the ``coarse`` one."""
        return dataclasses.replace(self, level=self.level + 1, coarse=self.level)

    def at_level(self, level: int) -> "RuleOptions":
        """These options at another ``level``, with that level's default ``coarse``."""
        return dataclasses.replace(self, level=int(level), coarse=self.default_coarse(int(level)))

    def label(self) -> str:
        return f"{self.name}({self.level} vs {self.coarse})"


@dataclass(frozen=True)
class Lattice(RuleOptions):
    """Rotated, radially stretched lattice rules (:func:`~meanode.limit.quadrature.lattice`), step
    ``h = spacing / level``, each level with its own rotation.

    spacing: default by dz (:data:`LATTICE_DEFAULTS`: 3 up to dz = 4, 6 at dz = 5-6, 10 at dz = 7-8;
    required beyond dz = 8). orient: ``"pilot"`` (default for 2LP blocks with a nonlinear sigma:
    a cheap run at ~0.6 x the level finds the directions of the integrand's ridges and each level's
    rotation is the one of 32 that aliases them least, :mod:`meanode.limit.adapt`) or
    ``"screened"`` (rotations screened against the u/v coordinate planes only; the default
    otherwise). replicates: independent rotations at the ``level`` (default 2): the result is their
    mean and their spread enters the error estimate beside the gap to the ``coarse`` level.
    tail: the Gaussian mass left out by the radial map (default 5e-8,
    :data:`~meanode.limit.quadrature.lattice.DEFAULT_TAIL`; a smaller mass costs nodes far out where
    the weight is small; ``tol=`` lowers it to at most tol / 1000). The coarse level of the estimate
    leaves out :data:`COARSE_TAIL_FACTOR` x as much, so that the gap includes the truncation.
    anisotropy (>= 1, needs ``orient="pilot"``): the step times this across the principal direction
    of the pilot's ridges (:meth:`~meanode.limit.quadrature.Ridges.scale`), so 1/anisotropy^(dz-1)
    of the nodes. Opt-in: on the hardest draw of ``docs/error_estimates.md`` (D = 2, K = 15) two
    lattices with 1.5 and 71,051 nodes differed by 2.7e-4, two isotropic ones of 46,741 nodes by
    2.5e-3 (``docs/limit_quadrature.md``); the battery ran without it.
    """

    spacing: float | None = None
    orient: str | None = None
    replicates: int = 2
    tail: float | None = None
    anisotropy: float = 1.0
    name: ClassVar[str] = "lattice"
    geometric: ClassVar[bool] = True  # exponential in 1 / h = level / spacing for analytic integrands

    def __post_init__(self) -> None:
        super().__post_init__()
        integer("replicates", self.replicates, 1)
        if self.spacing is not None:
            real("spacing", self.spacing, minimum=0.0, strict=True)
        if self.orient is not None and self.orient not in ORIENTS:
            raise ValueError(f"orient must be one of {ORIENTS}, got {self.orient!r}")
        if self.tail is not None:
            _check_tail(self.tail)
        real("anisotropy", self.anisotropy, minimum=1.0)
        if self.anisotropy != 1.0 and self.orient == "screened":
            raise ValueError("anisotropy follows the pilot's ridges: it needs orient='pilot', not 'screened'")

    def resolve(self, block) -> "Lattice":
        spacing, level = self.spacing, self.level
        if spacing is None or level is None:
            if block.dz not in LATTICE_DEFAULTS:
                raise ValueError(f"no default lattice for dz = {block.dz} > 8 unit dimensions: pass spacing= and "
                                 "level= (quadrature.lattice_size gives the node count) or use rule='rqmc'")
            d_spacing, d_level = LATTICE_DEFAULTS[block.dz]
            spacing = d_spacing if spacing is None else spacing
            level = d_level if level is None else level
        is_2lp = _is_2lp(block)
        orient = self.orient or ("pilot" if is_2lp and not block.closure_exact else "screened")
        if orient == "pilot" and not is_2lp:
            raise ValueError("orient='pilot' reads the ridges of 2LP units; use orient='screened' for other blocks")
        if self.anisotropy != 1.0 and orient != "pilot":
            raise ValueError("anisotropy follows the pilot's ridges (2LP blocks with a nonlinear sigma, "
                             f"orient='pilot'); this block's lattice is orient={orient!r}")
        coarse = self.coarse if self.coarse is not None else self.default_coarse(level)
        tail = self.tail if self.tail is not None else DEFAULT_TAIL
        return dataclasses.replace(self, level=level, coarse=coarse, spacing=float(spacing), orient=orient,
                                   tail=float(tail))

    def family(self, ridges=None) -> Callable[[int, int, float], q.Rule]:
        return q.lattice_family(self.spacing, seed=self.seed, ridges=ridges, tail=self.tail,
                                anisotropy=self.anisotropy)

    def node_set(self, level: int, replicate: int, dz: int, var: float, ridges=None, coarse: bool = False) -> q.Rule:
        """``coarse``: the comparison level also leaves out :data:`COARSE_TAIL_FACTOR` x the tail, so
        that the gap sees the truncation, which two levels with one tail would share."""
        if not coarse:
            return self.family(ridges)(level, dz, var, replicate=replicate)
        tail = min(self.tail * COARSE_TAIL_FACTOR, 1e-3)
        return dataclasses.replace(self, tail=tail).family(ridges)(level, dz, var, replicate=replicate)

    def num_nodes(self, dz: int) -> int:
        return round(q.lattice_size(self.spacing / self.level, dz, tail=self.tail) / self.anisotropy ** (dz - 1))

    def refined(self, block) -> "Lattice":
        """Step ``h`` shrunk by 1.25 (the node count grows by 1.25^dz), compared with the level
        below it, as the default levels are (the estimator the battery checked)."""
        return self.at_level(max(self.level + 1, round(1.25 * self.level)))

    def pilot_level(self) -> int:
        """The level of the pilot run that orients the rotations (``orient="pilot"``)."""
        return max(2, round(0.6 * self.level))


@dataclass(frozen=True)
class GaussHermite(RuleOptions):
    """Tensor Gauss–Hermite, ``level`` nodes per dimension (``level^dz`` nodes).

    It converges only like ``exp(-c sqrt(n))`` for tanh (poles near the real axis), so the gap to
    ``level - 2`` underestimates its error (measured 2x at D = 2, 13x at D = 1); the default
    ``coarse`` is ``~2 level / 3`` (even, so the rule has no node at 0, like the default levels).
    """

    name: ClassVar[str] = "gauss_hermite"

    def default_level(self, dz: int) -> int:
        return {1: 48, 2: 32, 3: 16, 4: 12}.get(dz, 6)

    def default_coarse(self, level: int) -> int:
        return max(1, min(level - 1, 2 * round(level / 3)))

    def family(self):
        return q.gauss_hermite

    def num_nodes(self, dz: int) -> int:
        return self.level ** dz

    def refined(self, block) -> "GaussHermite":
        level = self.level + 2
        return dataclasses.replace(self, level=level, coarse=self.default_coarse(level))


@dataclass(frozen=True)
class Smolyak(RuleOptions):
    """Smolyak sparse grids on the nested Genz–Keister rules (negative weights: with nonlinear
    dynamics above dz = 4 the nodes' errors are amplified; prefer lattices or RQMC there)."""

    name: ClassVar[str] = "smolyak"

    def default_level(self, dz: int) -> int:
        return 6 if dz <= 4 else 4

    def family(self):
        return q.smolyak


@dataclass(frozen=True)
class RQMC(RuleOptions):
    """Scrambled Sobol points with antithetic pairs: ``replicates`` independent scramblings of
    ``2^level`` nodes each; the result is their mean and the estimate 3 standard errors of it."""

    level: int | None = 14
    replicates: int = 8
    name: ClassVar[str] = "rqmc"
    geometric: ClassVar[bool] = True  # the standard error falls like 2^(-level / 2) or faster

    def __post_init__(self) -> None:
        super().__post_init__()
        integer("replicates", self.replicates, 2)

    def resolve(self, block) -> "RQMC":
        return dataclasses.replace(self, level=self.level if self.level is not None else 14)

    def replicate_rules(self, dz: int, var: float, level: int | None = None) -> list[q.Rule]:
        level = self.level if level is None else level
        return q.rqmc_replicates(2 ** level, dz, var, n_rep=self.replicates, seed=self.seed)

    def refined(self, block) -> "RQMC":
        """Twice the nodes per replicate (the standard error falls by about sqrt(2), or faster)."""
        return dataclasses.replace(self, level=self.level + 1)

    def family(self):
        return lambda level, d, var: q.rqmc(2 ** level, d, var, seed=self.seed)

    def num_nodes(self, dz: int) -> int:
        return self.replicates * 2 ** self.level

    def label(self) -> str:
        return f"rqmc(2^{self.level} x {self.replicates})"


@dataclass(frozen=True)
class RuleFamily(RuleOptions):
    """Your own family ``fn(level, d, var) -> Rule`` (``level`` required; ``coarse`` default level - 1)."""

    fn: Callable[[int, int, float], q.Rule] | None = None
    name: ClassVar[str] = "family"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not callable(self.fn):
            raise TypeError(f"RuleFamily needs fn, a callable (level, d, var) -> Rule, got {self.fn!r}")
        if self.level is None:
            raise ValueError("a rule family (callable) needs level= (and optionally coarse=)")

    def default_level(self, dz: int) -> int:  # pragma: no cover - level is required
        raise ValueError("a rule family needs level=")

    def family(self):
        return self.fn

    def label(self) -> str:
        return f"{getattr(self.fn, '__name__', 'family')}({self.level} vs {self.coarse})"


RULES = {"lattice": Lattice, "gauss_hermite": GaussHermite, "smolyak": Smolyak, "rqmc": RQMC}


def _is_2lp(block) -> bool:
    from ..blocks import TwoLayerBlock
    return isinstance(block, TwoLayerBlock)


def as_rule(rule, block, **shortcuts) -> RuleOptions:
    """Resolve ``rule`` (``"auto"``, a name of :data:`RULES`, a :class:`RuleOptions` or a callable
    family) and the keyword shortcuts for its fields (``level=``, ``coarse=``, ``spacing=``,
    ``orient=``, ``replicates=``, ``seed=``) into a resolved :class:`RuleOptions` for ``block``.
    ``"auto"``: lattice rules up to dz = 8 unit dimensions, scrambled-Sobol RQMC beyond."""
    if isinstance(rule, RuleOptions):
        if shortcuts:
            raise TypeError(f"options {sorted(shortcuts)} go into the rule object itself, e.g. "
                            f"{type(rule).__name__}({', '.join(f'{k}=...' for k in sorted(shortcuts))})")
        return rule.resolve(block)
    if callable(rule) and not isinstance(rule, str):
        cls, shortcuts = RuleFamily, dict(shortcuts, fn=rule)
    elif isinstance(rule, str) and (rule == "auto" or rule in RULES):
        cls = (Lattice if block.dz <= 8 else RQMC) if rule == "auto" else RULES[rule]
    else:
        raise ValueError(f"unknown rule {rule!r}; choose one of {['auto', *RULES]}, a RuleOptions object "
                         "or a family level -> Rule")
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = set(shortcuts) - fields
    if unknown:
        raise TypeError(f"unknown option(s) {sorted(unknown)} for rule {cls.name!r} (its options: "
                        f"{sorted(fields - {'fn'})})")
    return cls(**shortcuts).resolve(block)

