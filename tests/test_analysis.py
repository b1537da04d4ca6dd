"""The measurement layer on numbers with known answers: the phase-diagram classification and its
predictions, SPEC §7's error split, the rate model and fit windows on synthetic data."""

from __future__ import annotations

import math

import numpy as np
import pytest

from meanode import measure, phase

# --- phase diagram (SPEC §5) ----------------------------------------------------------------------

@pytest.mark.parametrize("a, b, regime", [
    (0.25, 1.0, "unstable init (a<1/2)"), (0.5, 0.0, "noisy init (a=1/2)"),
    (0.75, 0.25, "trivial (frozen)"), (0.75, 0.5, "lazy ODE"), (0.75, 0.75, "diverges"),
    (1.0, 0.5, "trivial (frozen)"), (1.0, 1.0, "MLU"), (1.0, 1.5, "diverges"), (1.25, 1.5, "over-updated"),
    (1.25, 1.0, "trivial (frozen)"),
])
def test_predicted_regime_follows_spec_section_5(a, b, regime):
    assert phase.predicted_regime(a, b) == regime


def test_predicted_exponents_are_those_of_scale_counting():
    e = phase.predicted_exponents(1.0, 1.0)  # MLU: outputs and units move Theta(1)
    assert e == {"init_dev": -0.5, "out_change": 0.0, "unit_movement": 0.0, "lin_dist": 0.0}
    lazy = phase.predicted_exponents(0.75, 0.5)  # b = 2a - 1: f moves Theta(1), each unit -> 0
    assert lazy["out_change"] == 0.0 and lazy["unit_movement"] == -0.25 and lazy["lin_dist"] == pytest.approx(-0.25)
    frozen = phase.predicted_exponents(1.0, 0.5)
    assert frozen["out_change"] == -0.5
    assert math.isnan(phase.predicted_exponents(1.0, 1.5)["out_change"])  # diverging: scale counting says nothing


@pytest.mark.parametrize("exps, div, level, regime", [
    (dict(init_dev=0.4, out_change=0.5, unit_movement=0.5), 0.0, 1.0, "unstable init (a<1/2)"),
    (dict(init_dev=0.05, out_change=0.0, unit_movement=0.0), 0.0, 0.5, "noisy init (a=1/2)"),
    (dict(init_dev=-0.5, out_change=0.0, unit_movement=0.0), 0.25, None, "diverges"),
    (dict(init_dev=-0.5, out_change=0.4, unit_movement=0.5), 0.0, None, "diverges"),
    (dict(init_dev=-0.5, out_change=-0.5, unit_movement=-0.5), 0.0, None, "trivial (frozen)"),
    (dict(init_dev=-0.25, out_change=0.02, unit_movement=-0.25), 0.0, None, "lazy ODE"),
    (dict(init_dev=-0.5, out_change=0.04, unit_movement=0.02), 0.0, None, "MLU"),
    (dict(init_dev=-0.75, out_change=0.0, unit_movement=0.5), 0.0, None, "over-updated"),
    (dict(init_dev=-0.5, out_change=float("nan"), unit_movement=0.0), 0.0, None, "unclassified"),
])
def test_classify_reads_the_measured_exponents_with_a_margin(exps, div, level, regime):
    c = phase.classify(exps, div, margin=0.15, init_level=level)
    assert c.regime == regime, c.reason


def test_classify_agrees_with_the_prediction_on_exact_scale_counting_exponents():
    """Feeding the predicted exponents back in recovers the predicted regime (away from the lines
    where the margin decides), for every cell of the quick preset's (a, b) grid."""
    for a in (0.25, 0.75, 1.0, 1.25):
        for b in (-0.5, 0.0, 0.5, 1.0):
            pred = phase.predicted_regime(a, b)
            if pred == "diverges":
                continue
            e = phase.predicted_exponents(a, b)
            got = phase.classify(e, 0.0, init_level=None if a != 0.5 else 1.0).regime
            assert got == pred, (a, b, e, got)


# --- SPEC §7's split --------------------------------------------------------------------------------

def test_error_split_is_exact_on_a_synthetic_ensemble():
    """x_e = x_inf + c + s * z_e: total^2 = euler^2 + (E-1)/E fluct^2 exactly (ddof=1), euler = RMS(c + mean z),
    fluct = RMS of the seed std; per-seed errors square-average to total^2."""
    rng = np.random.default_rng(0)
    E, K, N, d = 7, 3, 5, 4
    x_inf = rng.standard_normal((K, N, d))
    c = 0.3 * rng.standard_normal((K, N, d))
    x = x_inf[None] + c[None] + 0.1 * rng.standard_normal((E, K, N, d))
    sp = measure.error_split(x, x_inf, keep=1)
    dev = x - x_inf[None]
    np.testing.assert_allclose(sp.euler, np.sqrt(np.mean(dev.mean(0) ** 2, axis=(1, 2))), rtol=1e-13)
    np.testing.assert_allclose(sp.fluctuation, np.sqrt(np.mean(x.std(0, ddof=1) ** 2, axis=(1, 2))), rtol=1e-13)
    np.testing.assert_allclose(sp.total ** 2, sp.euler ** 2 + (E - 1) / E * sp.fluctuation ** 2, rtol=1e-12)
    np.testing.assert_allclose(np.mean(sp.per_seed ** 2, axis=0), sp.total ** 2, rtol=1e-12)
    whole = measure.error_split(x[:, -1], x_inf[-1])  # keep=0: floats
    assert whole.total == pytest.approx(sp.total[-1], rel=1e-13) and isinstance(whole.euler, float)
    assert math.isnan(measure.error_split(x[:1], x_inf).fluctuation)  # one seed: no spread


def test_rate_model_recovers_both_terms_within_its_intervals():
    """err = a/L + b sqrt(D/(L M)) (noise-free data): NNLS recovers (a, b) exactly; with seed noise the
    bootstrap intervals of :func:`meanode.analysis.fit_rate` contain the true values (test_sweep
    checks each term alone)."""
    L = np.array([2, 4, 8, 16, 32, 64, 128] * 3, float)
    M = np.repeat([1.0, 4.0, 16.0], 7)
    D = np.full_like(L, 2.0)
    a, b = measure.fit_rate_model(L, M, D, 0.05 / L + 0.2 * np.sqrt(D / (L * M)))
    assert a == pytest.approx(0.05, rel=1e-10) and b == pytest.approx(0.2, rel=1e-10)


# --- log-log fits -----------------------------------------------------------------------------------

def test_loglog_fits_match_scipy_linregress_and_mark_bad_bootstrap_rows():
    """measure.loglog_slope / loglog_slopes (closed forms) against scipy.stats.linregress, an
    independent implementation: slope, intercept and the slope's standard error to rounding, and
    the t interval of that standard error; a resample with a non-positive value gets NaN."""
    from scipy import stats

    rng = np.random.default_rng(5)
    for n in (3, 6, 11):
        x = np.exp(rng.uniform(0.0, 6.0, n))
        Y = np.exp(rng.normal(0.0, 0.3, (8, n))) * x ** -0.5
        Y[3, 1] = 0.0
        slopes = measure.loglog_slopes(x, Y)
        for b in range(8):
            if b == 3:
                assert math.isnan(slopes[b])
                continue
            ref = stats.linregress(np.log(x), np.log(Y[b]))
            fit = measure.loglog_slope(x, Y[b])
            assert fit.slope == pytest.approx(ref.slope, rel=1e-12, abs=1e-14)
            assert slopes[b] == pytest.approx(ref.slope, rel=1e-12, abs=1e-14)
            assert fit.intercept == pytest.approx(ref.intercept, rel=1e-12, abs=1e-14)
            assert fit.stderr == pytest.approx(ref.stderr, rel=1e-10)
            half = stats.t.ppf(0.975, n - 2) * ref.stderr
            assert fit.ci == pytest.approx((ref.slope - half, ref.slope + half), rel=1e-10)
    with pytest.raises(ValueError, match="distinct"):
        measure.loglog_slope([2.0, 2.0, 2.0], [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="distinct"):
        measure.loglog_slopes([2.0, 2.0, 2.0], [[1.0, 2.0, 3.0]])
