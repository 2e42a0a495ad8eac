"""Procedures that look again and again without inflating their error rates.

- :class:`CusumState`: Page's one-sided CUSUM over the monitor's windows, on the z-score of each
  window's calibrated (combined) p-value. A persistent small shift accumulates until it crosses the
  threshold; a single odd window does not. The threshold is set for a stated average run length
  under no drift (ARL0, ``false_alarm_every`` windows).
- :class:`MsprtState`: the mixture sequential probability ratio test for a difference of two
  proportions (Johari, Koomen, Pekelis & Walsh 2017/2022, "Always valid inference"), whose p-value
  may be read at every poll: P(it ever falls below alpha) <= alpha under the null (Ville's
  inequality), however often the rollout looks.

Why mSPRT rather than group-sequential boundaries with alpha spending: the rollout polls every few
seconds at uneven sample sizes and may stop a stage on a timer; an always-valid test needs no plan
of the looks (alpha spending needs the information fractions in advance, or loses its level when
looks are added). The price is some power at a planned horizon, and it is paid only where the
rollout would otherwise look uncorrected.

Both states are frozen dataclasses with ``to_dict`` / ``from_dict``: kept with the ledger, they
survive a restart; a retrain (CUSUM) or a new rollout (mSPRT) starts a fresh one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from scipy import optimize, stats

from driftloop.core.stats import restricted_mle

# A p-value of exactly 0 or 1 would give an infinite z: clip to what float64 can tell from 0 and 1.
_P_FLOOR = 1e-300
_P_CEIL = 1 - 1e-16
_STATE_VERSION = 1


def z_from_p(p_value: float) -> float:
    """The one-sided z-score of a p-value, Phi^-1(1 - p): 0 at p = 0.5, 1.64 at 0.05."""
    if not 0 <= p_value <= 1 or math.isnan(p_value):
        raise ValueError(f"z_from_p: p-value must be in [0, 1], got {p_value}")
    return float(stats.norm.isf(min(max(p_value, _P_FLOOR), _P_CEIL)))


# -- CUSUM over windows ----------------------------------------------------------------------------


def cusum_arl(k: float, h: float, shift: float = 0.0) -> float:
    """Average run length of Page's CUSUM S_t = max(0, S_{t-1} + z_t - k), alarm at S_t >= h, when the
    z_t are independent N(shift, 1): Siegmund's (1985, eq. 2.57) approximation with b = h + 1.166,
    ARL = (exp(-2 D b) + 2 D b - 1) / (2 D^2), D = shift - k (b^2 when D = 0). Within a few percent of
    the exact value for h >= 2 (the tests check it by simulation)."""
    if h <= 0:
        raise ValueError(f"cusum_arl: h must be positive, got {h}")
    b = h + 1.166
    drift = shift - k
    if abs(drift) < 1e-9:
        return b * b
    return (math.exp(-2 * drift * b) + 2 * drift * b - 1) / (2 * drift * drift)


def cusum_threshold_for_arl(k: float, arl0: float) -> float:
    """The threshold h that gives an average run length ``arl0`` (windows between false alarms)
    under no drift, by inverting :func:`cusum_arl`. E.g. k = 0.5, ARL0 = 500 gives h = 4.39."""
    if k <= 0:
        raise ValueError(f"cusum_threshold_for_arl: k must be positive, got {k}")
    if arl0 <= cusum_arl(k, 1e-6):
        raise ValueError(f"cusum_threshold_for_arl: ARL0 {arl0} is below what any positive h gives")
    return float(optimize.brentq(lambda h: cusum_arl(k, h) - arl0, 1e-6, 200.0, xtol=1e-10))


@dataclass(frozen=True)
class CusumState:
    """Page's one-sided CUSUM on per-window z-scores (Page 1954, Biometrika 41:100).

    ``k`` is the reference value: half the shift (in standard deviations of z) the detector is
    tuned for (k = 0.5: a shift of 1 sd); ``h`` the threshold (:func:`cusum_threshold_for_arl`).
    ``value`` is the evidence so far, ``windows`` the windows seen since the last reset, ``last_z``
    the newest window's contribution. The stated rate assumes independent windows whose p-values
    are uniform under no drift: overlapping windows, or a calibration with few rounds, shorten the
    real ARL0.
    """

    k: float
    h: float
    value: float = 0.0
    windows: int = 0
    last_z: float | None = None

    def __post_init__(self) -> None:
        if self.k < 0 or self.h <= 0 or self.value < 0 or self.windows < 0:
            raise ValueError(f"CusumState: k >= 0, h > 0, value >= 0, windows >= 0, got {self}")

    @classmethod
    def for_false_alarm_every(cls, windows: float, k: float = 0.5) -> CusumState:
        """A fresh CUSUM whose false alarms come on average once every ``windows`` quiet windows."""
        return cls(k=k, h=cusum_threshold_for_arl(k, windows))

    @property
    def alarm(self) -> bool:
        return self.value >= self.h

    def update_z(self, z: float) -> CusumState:
        if math.isnan(z):
            raise ValueError("CusumState.update_z: z is NaN")
        return replace(self, value=max(0.0, self.value + z - self.k), windows=self.windows + 1, last_z=float(z))

    def update(self, p_value: float) -> CusumState:
        """Add one window's (combined, calibrated) p-value."""
        return self.update_z(z_from_p(p_value))

    def reset(self) -> CusumState:
        """After a retrain: the evidence was about the old champion's reference."""
        return replace(self, value=0.0, windows=0, last_z=None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": "cusum",
            "version": _STATE_VERSION,
            "k": self.k,
            "h": self.h,
            "value": self.value,
            "windows": self.windows,
            "last_z": self.last_z,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CusumState:
        if data.get("kind") != "cusum" or data.get("version") != _STATE_VERSION:
            raise ValueError(
                f"not a version-{_STATE_VERSION} CUSUM state: {data.get('kind')!r} {data.get('version')!r}"
            )
        last = data.get("last_z")
        return cls(
            k=float(data["k"]),
            h=float(data["h"]),
            value=float(data["value"]),
            windows=int(data["windows"]),
            last_z=None if last is None else float(last),
        )


# -- mSPRT for two proportions ---------------------------------------------------------------------

MsprtAlternative = Literal["greater", "less", "two-sided"]


def msprt_log_lr(
    x1: npt.ArrayLike,
    n1: npt.ArrayLike,
    x2: npt.ArrayLike,
    n2: npt.ArrayLike,
    theta0: float,
    tau: float,
    alternative: MsprtAlternative = "two-sided",
) -> npt.NDArray[np.float64]:
    """log of the mixture likelihood ratio for p1 - p2 at cumulative counts, vectorised.

    Normal approximation of Johari et al. (2017, §4): the difference of rates theta^ is N(theta, V),
    V the Farrington–Manning variance at the null boundary theta0 (restricted MLE; it has no zero
    variance problem at rare rates as the plug-in does), and the alternative theta is mixed over
    N(theta0, tau^2). Two-sided: Lambda = sqrt(V / (V + tau^2)) exp(tau^2 x^2 / (2 V (V + tau^2))),
    x = theta^ - theta0. One-sided, with the half-normal mixture over the alternative side only:
    Lambda = 2 sqrt(V / (V + tau^2)) exp(...) Phi(+-tau x / sqrt(V (V + tau^2))), a supermartingale
    on the whole one-sided null, so the composite null keeps its level.
    """
    x1a, n1a = np.asarray(x1, dtype=float), np.asarray(n1, dtype=float)
    x2a, n2a = np.asarray(x2, dtype=float), np.asarray(n2, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        p1t, p2t = restricted_mle(x1a, n1a, x2a, n2a, theta0)
        var = p1t * (1 - p1t) / n1a + p2t * (1 - p2t) / n2a
        x = x1a / n1a - x2a / n2a - theta0
        total = var + tau * tau
        log_lr = 0.5 * np.log(var / total) + tau * tau * x * x / (2 * var * total)
        if alternative != "two-sided":
            sign = 1.0 if alternative == "greater" else -1.0
            log_lr = log_lr + math.log(2) + stats.norm.logcdf(sign * tau * x / np.sqrt(var * total))
    ok = (n1a > 0) & (n2a > 0) & (var > 1e-15)
    return np.asarray(np.where(ok, log_lr, -np.inf), dtype=float)


def always_valid_p(log_lr: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Always-valid p-values from a sequence of log LRs (last axis = looks): the running minimum of
    min(1, 1 / Lambda)."""
    p = np.minimum(1.0, np.exp(-np.asarray(log_lr, dtype=float)))
    return np.asarray(np.minimum.accumulate(p, axis=-1), dtype=float)


@dataclass(frozen=True)
class MsprtState:
    """An mSPRT for p1 - p2 (first = challenger) that may be read at every poll.

    H0: p1 - p2 <= theta0 (``"greater"``), >= theta0 (``"less"``) or = theta0 (``"two-sided"``).
    ``update`` takes *cumulative* counts, so re-reading the log after a restart is harmless; the
    state keeps the running minimum p-value, which is what a restart would otherwise lose. ``tau`` is
    the spread of the mixing prior: set it near the difference that matters (the tolerance); too
    small or too large only costs power, never the level.
    """

    theta0: float
    alternative: MsprtAlternative
    tau: float
    alpha: float
    p_value: float = 1.0
    looks: int = 0
    x1: int = 0
    n1: int = 0
    x2: int = 0
    n2: int = 0
    log_lr: float = float("-inf")

    def __post_init__(self) -> None:
        if self.alternative not in ("greater", "less", "two-sided"):
            raise ValueError(f"MsprtState: alternative {self.alternative!r}")
        if self.tau <= 0 or not 0 < self.alpha < 1 or not 0 <= self.p_value <= 1:
            raise ValueError(f"MsprtState: tau > 0, alpha and p_value in (0, 1), got {self}")

    @property
    def rejected(self) -> bool:
        return self.p_value <= self.alpha

    @property
    def boundary(self) -> float:
        """The log LR that rejects: log(1 / alpha)."""
        return -math.log(self.alpha)

    def update(self, x1: int, n1: int, x2: int, n2: int) -> MsprtState:
        """Add a look at cumulative counts (successes x of trials n per arm)."""
        if n1 < self.n1 or n2 < self.n2 or x1 < self.x1 or x2 < self.x2:
            raise ValueError("MsprtState.update: counts are cumulative and cannot shrink; start a new state")
        if not (0 <= x1 <= n1 and 0 <= x2 <= n2):
            raise ValueError(f"MsprtState.update: counts {x1}/{n1}, {x2}/{n2} are not proportions")
        log_lr = float(msprt_log_lr(x1, n1, x2, n2, self.theta0, self.tau, self.alternative))
        p = min(self.p_value, 1.0 if log_lr == float("-inf") else min(1.0, math.exp(-log_lr)))
        return replace(self, p_value=p, looks=self.looks + 1, x1=x1, n1=n1, x2=x2, n2=n2, log_lr=log_lr)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": "msprt",
            "version": _STATE_VERSION,
            "theta0": self.theta0,
            "alternative": self.alternative,
            "tau": self.tau,
            "alpha": self.alpha,
            "p_value": self.p_value,
            "looks": self.looks,
            "counts": [self.x1, self.n1, self.x2, self.n2],
            "log_lr": None if self.log_lr == float("-inf") else self.log_lr,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MsprtState:
        if data.get("kind") != "msprt" or data.get("version") != _STATE_VERSION:
            raise ValueError(
                f"not a version-{_STATE_VERSION} mSPRT state: {data.get('kind')!r} {data.get('version')!r}"
            )
        x1, n1, x2, n2 = (int(v) for v in data["counts"])
        alternative = str(data["alternative"])
        if alternative not in ("greater", "less", "two-sided"):
            raise ValueError(f"mSPRT state: alternative {alternative!r}")
        log_lr = data.get("log_lr")
        return cls(
            theta0=float(data["theta0"]),
            alternative=alternative,  # type: ignore[arg-type]  # checked just above
            tau=float(data["tau"]),
            alpha=float(data["alpha"]),
            p_value=float(data["p_value"]),
            looks=int(data["looks"]),
            x1=x1,
            n1=n1,
            x2=x2,
            n2=n2,
            log_lr=float("-inf") if log_lr is None else float(log_lr),
        )


def msprt_noninferiority(
    margin: float, alpha: float, *, tau: float | None = None, higher_is_better: bool = True
) -> MsprtState:
    """Promotion: H0 "the challenger is worse by at least ``margin``"; a rejection means "not worse
    by the margin". For a rate where higher is better (accuracy) H0: p_ch - p_champ <= -margin; where
    higher is worse (error rate) H0: p_ch - p_champ >= margin. ``tau`` defaults to the margin."""
    if margin <= 0:
        raise ValueError(f"msprt_noninferiority: margin must be positive, got {margin}")
    tau = margin if tau is None else tau
    if higher_is_better:
        return MsprtState(theta0=-margin, alternative="greater", tau=tau, alpha=alpha)
    return MsprtState(theta0=margin, alternative="less", tau=tau, alpha=alpha)


def msprt_inferiority(
    alpha: float, *, tolerance: float = 0.0, tau: float = 0.05, higher_is_better: bool = True
) -> MsprtState:
    """Rollback: H0 "the challenger is not worse (by more than ``tolerance``)"; a rejection means
    "worse". Higher is better: H0: p_ch - p_champ >= -tolerance; higher is worse: H0: <= tolerance."""
    if tolerance < 0:
        raise ValueError(f"msprt_inferiority: tolerance must be >= 0, got {tolerance}")
    if higher_is_better:
        return MsprtState(theta0=-tolerance, alternative="less", tau=tau, alpha=alpha)
    return MsprtState(theta0=tolerance, alternative="greater", tau=tau, alpha=alpha)
