"""sWeights from an extended unbinned maximum-likelihood fit of a discriminating variable (the sPlot).

The sPlot technique (Pivk & Le Diberder, Nucl. Instrum. Meth. A 555 (2005) 356,
arXiv:physics/0402083): fit the distribution of a discriminating variable ``m`` (a mass) with an
extended model ``N_s f_s(m) + N_b f_b(m)``; the signal sWeight of an event is

    ``sP_s(m) = (V_ss f_s(m) + V_sb f_b(m)) / (N_s f_s(m) + N_b f_b(m))``   (Eq. 14)

with ``V`` the inverse of ``V^-1_ij = sum_e f_i(m_e) f_j(m_e) / (sum_k N_k f_k(m_e))^2`` (Eq. 13).
sWeighted sums of any variable uncorrelated with ``m`` estimate signal-only sums (Sect. 4), which is
why sWeighted calibration data train signal-only models. The fit uses zfit, the sWeights
``hepstats.splot.compute_sweights``.

Sanity check (Eq. 17 of the paper, the "maximum-likelihood sum rule"): at the likelihood maximum
``sum_e f_j(m_e) / sum_k N_k f_k(m_e) = 1`` for every component ``j``; equivalently the sWeights of
each species sum to its fitted yield. :func:`fit_sweights` warns when a sum deviates from 1 by more
than 5e-3 and raises :class:`SPlotError` beyond 5e-2 (hepstats' thresholds): the fit did not
converge to the maximum, and the sWeights would be biased.

Example:
    >>> res = fit_sweights(df["Lc_M"], (2240, 2330), signal="gauss", background="exponential")  # doctest: +SKIP
    >>> df["sWeight"] = res.sweights                                                            # doctest: +SKIP
"""

from __future__ import annotations

import itertools
import logging
import os
import warnings
from dataclasses import dataclass, field

import numpy as np

from mambah.errors import ConfigurationError, DataError, MambahError

log = logging.getLogger(__name__)

__all__ = ["fit_sweights", "SPlotResult", "SPlotError", "SumRuleWarning", "SIGNALS", "BACKGROUNDS", "plot_fit"]

SIGNALS = ("gauss", "crystalball", "doublecb")
BACKGROUNDS = ("exponential", "chebyshev")
#: sum-rule tolerances (hepstats' values): warn above, raise above
SUM_RULE_WARN, SUM_RULE_RAISE = 5e-3, 5e-2

_counter = itertools.count()


class SPlotError(MambahError):
    """The fit failed or its sWeights violate the sPlot sum rule beyond tolerance."""


class SumRuleWarning(UserWarning):
    """The sWeights' sum rule (Eq. 17 of arXiv:physics/0402083) is off by more than 5e-3."""


@dataclass
class SPlotResult:
    """Outcome of :func:`fit_sweights`.

    Attributes:
        sweights: signal sWeights, one per row of the fitted sample (rows inside the range).
        bkg_sweights: background sWeights.
        yields: ``{"signal": (value, error), "background": (value, error)}`` from the fit (Hesse).
        params: fitted shape parameters ``{name: value}``.
        sum_rule: ``{"signal": s, "background": b}``, each should be 1 (Eq. 17).
        converged: whether the minimiser converged.
        mass: the fitted values; range: the fit range; signal, background: the shapes' names.
        curves: ``x``, total, signal and background densities (events per unit of mass) for plots.
    """

    sweights: np.ndarray
    bkg_sweights: np.ndarray
    yields: dict
    params: dict
    sum_rule: dict
    converged: bool
    mass: np.ndarray = field(repr=False)
    range: tuple = (0.0, 1.0)
    signal: str = "gauss"
    background: str = "exponential"
    curves: dict = field(default_factory=dict, repr=False)

    def summary(self) -> str:
        (ns, es), (nb, eb) = self.yields["signal"], self.yields["background"]
        return (f"signal yield {ns:.1f} ± {es:.1f}, background yield {nb:.1f} ± {eb:.1f} "
                f"(sum of signal sWeights {self.sweights.sum():.1f}; sum rule {self.sum_rule['signal']:.5f}/"
                f"{self.sum_rule['background']:.5f}; {'converged' if self.converged else 'NOT converged'})")


def _peak_guess(m: np.ndarray, lo: float, hi: float) -> tuple[float, float]:
    h, e = np.histogram(m, bins=50, range=(lo, hi))
    # the peak stands above a smooth background: the bin farthest above a straight line through the ends
    c = 0.5 * (e[1:] + e[:-1])
    line = np.interp(c, [c[0], c[-1]], [np.median(h[:5]), np.median(h[-5:])])
    k = int(np.argmax(h - line))
    return float(c[k]), float((hi - lo) / 25)


def _check_range_is_covered(m: np.ndarray, lo: float, hi: float, band: float = 0.05, min_rows: int = 20) -> None:
    """Refuse a fit range wider than the data: an empty gap of more than ``band`` of the range at one of
    its edges, beside a populated strip of the same width inside the data, means the sample was
    selected in a narrower window (the fit would normalise the model over a region the selection
    emptied, and fail or give wrong yields)."""
    width = hi - lo
    m_lo, m_hi = float(m.min()), float(m.max())
    for side, gap, strip in (("low", m_lo - lo, (m >= m_lo) & (m <= 2 * m_lo - lo)),
                             ("high", hi - m_hi, (m <= m_hi) & (m >= 2 * m_hi - hi))):
        n_strip = int(strip.sum())
        if gap > band * width and n_strip >= min_rows:
            raise DataError(
                f"the fit range [{lo:g}, {hi:g}] is wider than the data's mass range [{m_lo:g}, {m_hi:g}]: no row in "
                f"its {side} {gap / width:.0%}, beside {n_strip} rows in the next strip of the same width (the "
                f"sample was selected in a narrower window?); give a range inside the data's, e.g. "
                f"--range {m_lo:g} {m_hi:g}")


def fit_sweights(mass, range: tuple[float, float], signal: str = "gauss", background: str = "exponential", *,
                 n_chebyshev: int = 2, mu: float | None = None, sigma: float | None = None) -> SPlotResult:
    """Fit ``N_s f_s + N_b f_b`` to ``mass`` in ``range`` (extended unbinned ML) and compute sWeights.

    Args:
        mass: values of the discriminating variable (1D); all must lie inside ``range`` (select first).
        range: ``(lo, hi)`` of the fit, in the unit of ``mass``.
        signal: "gauss", "crystalball" (one-sided, tail on the low side) or "doublecb" (two-sided).
        background: "exponential" or "chebyshev" (``n_chebyshev`` coefficients).
        mu, sigma: starting values of the peak position and width (default: guessed from a histogram).

    Returns:
        :class:`SPlotResult` (sWeights in the order of ``mass``).

    Raises:
        ConfigurationError: unknown shape, bad range; DataError: too few rows or rows outside the
        range; SPlotError: failed fit or sum rule off by more than 5e-2.
    """
    if signal not in SIGNALS:
        raise ConfigurationError(f"unknown signal shape {signal!r}; choose one of {', '.join(SIGNALS)}")
    if background not in BACKGROUNDS:
        raise ConfigurationError(f"unknown background shape {background!r}; choose one of {', '.join(BACKGROUNDS)}")
    lo, hi = float(range[0]), float(range[1])
    if not (np.isfinite(lo) and np.isfinite(hi) and hi > lo):
        raise ConfigurationError(f"the fit range must be two finite numbers LO < HI, got {range!r}")
    m = np.asarray(mass, dtype=float).ravel()
    if not np.isfinite(m).all():
        raise DataError(f"{int((~np.isfinite(m)).sum())} of {len(m)} mass values are NaN or inf")
    outside = (m < lo) | (m > hi)
    if outside.any():
        raise DataError(f"{int(outside.sum())} of {len(m)} mass values lie outside the fit range [{lo}, {hi}]; "
                        "select the rows inside the range first")
    if len(m) < 50:
        raise DataError(f"only {len(m)} rows in the fit range [{lo}, {hi}]: too few for a fit")
    _check_range_is_covered(m, lo, hi)

    os.environ.setdefault("ZFIT_DISABLE_TF_WARNINGS", "1")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import zfit
    from hepstats.splot import compute_sweights

    tag = f"mambah{next(_counter)}"
    obs = zfit.Space(f"m_{tag}", lo, hi)
    n = len(m)
    mu0, s0 = _peak_guess(m, lo, hi)
    mu0 = mu if mu is not None else mu0
    s0 = sigma if sigma is not None else s0
    width = hi - lo
    P = lambda name, v, a, b: zfit.Parameter(f"{name}_{tag}", v, a, b)  # noqa: E731
    pars = {"mu": P("mu", mu0, lo, hi), "sigma": P("sigma", s0, width / 1000, width / 2)}
    if signal == "gauss":
        sig = zfit.pdf.Gauss(pars["mu"], pars["sigma"], obs=obs)
    elif signal == "crystalball":
        pars.update(alpha=P("alpha", 1.5, 0.2, 10.0), n=P("n", 3.0, 1.01, 50.0))
        sig = zfit.pdf.CrystalBall(pars["mu"], pars["sigma"], pars["alpha"], pars["n"], obs=obs)
    else:
        pars.update(alphal=P("alphal", 1.5, 0.2, 10.0), nl=P("nl", 3.0, 1.01, 50.0),
                    alphar=P("alphar", 1.5, 0.2, 10.0), nr=P("nr", 3.0, 1.01, 50.0))
        sig = zfit.pdf.DoubleCB(pars["mu"], pars["sigma"], pars["alphal"], pars["nl"], pars["alphar"], pars["nr"],
                                obs=obs)
    if background == "exponential":
        # start from the slope of the sidebands
        left, right = np.mean(m < lo + 0.15 * width), np.mean(m > hi - 0.15 * width)
        lam0 = float(np.clip(np.log(max(right, 1e-3) / max(left, 1e-3)) / (0.85 * width), -50 / width, 50 / width))
        pars["lambda"] = P("lambda", lam0, -100 / width, 100 / width)
        bkg = zfit.pdf.Exponential(pars["lambda"], obs=obs)
    else:
        coeffs = [P(f"c{i + 1}", 0.0, -1.0, 1.0) for i in builtins_range(int(n_chebyshev))]
        pars.update({f"c{i + 1}": c for i, c in enumerate(coeffs)})
        bkg = zfit.pdf.Chebyshev(obs=obs, coeffs=coeffs)
    ns = P("n_signal", 0.3 * n, -0.1 * n, 2.0 * n)
    nb = P("n_background", 0.7 * n, -0.1 * n, 2.0 * n)
    model = zfit.pdf.SumPDF([sig.create_extended(ns), bkg.create_extended(nb)])
    data = zfit.Data.from_numpy(obs=obs, array=m)
    loss = zfit.loss.ExtendedUnbinnedNLL(model=model, data=data)
    try:
        result = zfit.minimize.Minuit().minimize(loss)
    except Exception as e:  # zfit/iminuit raise many types
        raise SPlotError(f"the fit of {n} rows in [{lo}, {hi}] failed: {type(e).__name__}: {e}") from e
    converged = bool(result.converged)
    if not converged:
        log.warning("the sPlot fit did not converge (%s); check the range and the shapes", result.fmin)
    errors = {}
    try:
        hesse = result.hesse()
        errors = {p: float(v["error"]) for p, v in hesse.items()}
    except Exception as e:  # pragma: no cover - hesse rarely fails after a converged fit
        log.warning("no yield errors (Hesse failed: %s)", e)

    # the sum rule, Eq. 17 of arXiv:physics/0402083
    fs = np.asarray(sig.pdf(m))
    fb = np.asarray(bkg.pdf(m))
    tot = float(ns.value()) * fs + float(nb.value()) * fb
    sum_rule = {"signal": float(np.sum(fs / tot)), "background": float(np.sum(fb / tot))}
    _check_sum_rule(sum_rule)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # hepstats repeats the sum-rule warning checked above
        sw = compute_sweights(model, data, atol_exceptions=1.0)
    s_w, b_w = np.asarray(sw[ns], dtype=float), np.asarray(sw[nb], dtype=float)
    x = np.linspace(lo, hi, 400)
    curves = {"x": x, "signal": float(ns.value()) * np.asarray(sig.pdf(x)),
              "background": float(nb.value()) * np.asarray(bkg.pdf(x))}
    curves["total"] = curves["signal"] + curves["background"]
    return SPlotResult(
        sweights=s_w, bkg_sweights=b_w,
        yields={"signal": (float(ns.value()), errors.get(ns, float("nan"))),
                "background": (float(nb.value()), errors.get(nb, float("nan")))},
        params={k: float(p.value()) for k, p in pars.items()}, sum_rule=sum_rule, converged=converged,
        mass=m, range=(lo, hi), signal=signal, background=background, curves=curves,
    )


builtins_range = range  # ``range`` is an argument name of fit_sweights


def _check_sum_rule(sum_rule: dict) -> None:
    """Warn above 5e-3, raise :class:`SPlotError` above 5e-2 (Eq. 17 of arXiv:physics/0402083)."""
    dev = max(abs(v - 1.0) for v in sum_rule.values())
    msg = (f"the sPlot sum rule (Eq. 17 of arXiv:physics/0402083) gives {sum_rule['signal']:.5f} (signal) and "
           f"{sum_rule['background']:.5f} (background) instead of 1")
    if dev > SUM_RULE_RAISE:
        raise SPlotError(msg + f" (beyond {SUM_RULE_RAISE}): the fit is not at the likelihood maximum; "
                         "check the fit range, the shapes and the starting values (--mu/--sigma)")
    if dev > SUM_RULE_WARN:
        warnings.warn(msg + f" (beyond {SUM_RULE_WARN}); if the fit is good, ignore this", SumRuleWarning, stacklevel=3)


def plot_fit(res: SPlotResult, path, *, bins: int = 80, xlabel: str = "mass") -> None:
    """Write a PNG of the data with the fitted total, signal and background, and the pulls."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lo, hi = res.range
    h, e = np.histogram(res.mass, bins=bins, range=(lo, hi))
    c, dw = 0.5 * (e[1:] + e[:-1]), e[1] - e[0]
    fig, (ax, axp) = plt.subplots(2, 1, figsize=(7, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.errorbar(c, h, yerr=np.sqrt(np.maximum(h, 1)), fmt="ko", ms=3, label="data")
    x = res.curves["x"]
    ax.plot(x, res.curves["total"] * dw, "b-", label="fit")
    ax.plot(x, res.curves["signal"] * dw, "r--", label=f"signal ({res.signal}): {res.yields['signal'][0]:.0f}")
    ax.plot(x, res.curves["background"] * dw, "g:", label=f"background ({res.background}): "
                                                           f"{res.yields['background'][0]:.0f}")
    ax.set_ylabel(f"events / {dw:.3g}")
    ax.legend()
    pred = np.interp(c, x, res.curves["total"]) * dw
    axp.bar(c, (h - pred) / np.sqrt(np.maximum(pred, 1)), width=dw, color="grey")
    axp.set_ylabel("pull")
    axp.set_xlabel(xlabel)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
