"""Log-domain unbalanced Sinkhorn for fixed marginals on the pixel grid.

Problem (P) of docs/math.md, per channel, summed over channels::

    UOT(x, z) = min_{P >= 0} <P, C> + eta H(P) + tau KL(P1 | x) + tau KL(P^T 1 | z)
    H(P) = sum P (log P - 1),   KL(a | b) = sum a log(a / b) - a + b   (generalised KL)

Dual: ``D(f, g) = -eta sum_ij P_ij + tau <x, 1 - e^{-f/tau}> + tau <z, 1 - e^{-g/tau}>`` with
``P_ij = exp((f_i + g_j - C_ij)/eta)``. Exact block maximisation (Chizat et al. 2018)::

    f <- eta kappa (log x - LSE_C[g]),   g <- eta kappa (log z - LSE_C[f]),   kappa = tau / (tau + eta)

Each half step is a kappa-contraction in sup-norm. After the g-step the column marginal is exact and the
first-order row residual is ``r = max_i |LSE_C[g_new]_i - LSE_C[g_old]_i|``; the certified duality gap is
``P - D = tau KL(a | x e^{-f/tau}) + tau KL(b | z e^{-g/tau})``. ``tau = inf`` is balanced OT (kappa = 1).
``divergence="tv"`` / ``"l2"`` replace the KL terms by ``tau ||a - x||_1`` / ``tau/2 ||a - x||^2``, each with its
exact half step (:func:`marginal_prox`) and Fenchel-Young gap (docs/math.md, "Other marginal penalties").
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch

from .checks import check_cost, check_count, check_measure, check_positive, check_potential, check_same, check_tau
from .cost import LocalCost
from .engine import SweepLog, SweepOptions, default_tol, run_sweeps
from .kernel import empty_windows, local_lse

__all__ = [
    "uot_sinkhorn",
    "uot_upper_bound",
    "SinkhornResult",
    "uot_terms",
    "UOTTerms",
    "default_tol",
    "row_potential",
    "row_lse_input",
    "DIVERGENCES",
    "marginal_prox",
]

DIVERGENCES = ("kl", "tv", "l2")


def _xlogy_diff(a: torch.Tensor, log_a: torch.Tensor, log_b: torch.Tensor) -> torch.Tensor:
    """``a * (log a - log b)`` with ``0 * anything = 0``."""
    d = torch.where(a > 0, log_a - log_b, torch.zeros_like(a))
    return a * d


def _sum_hw(t: torch.Tensor) -> torch.Tensor:
    return t.sum(dim=(-1, -2))


@dataclass
class UOTTerms:
    """Per-measure ``(B, C)`` pieces of (P) and (D) at potentials ``(f, g)``."""

    transport: torch.Tensor  # <P, C>
    plan_mass: torch.Tensor  # sum P
    stay_mass: torch.Tensor  # sum_i P_ii (mass that does not move)
    entropy: torch.Tensor  # H(P)
    kl_rows: torch.Tensor  # KL(P1 | x)
    kl_cols: torch.Tensor  # KL(P^T 1 | z)
    destroyed: torch.Tensor  # sum (x - P1)_+
    created: torch.Tensor  # sum (z - P^T1)_+
    dual: torch.Tensor  # D(f, g)
    gap: torch.Tensor  # tau KL(a|a*) + tau KL(b|b*)  (balanced: P - D on the approximate plan)
    row_residual: torch.Tensor  # max_i |log(a_i / a*_i)| over x_i > 0
    col_residual: torch.Tensor


def row_lse_input(f: torch.Tensor) -> torch.Tensor:
    """Row potential as input of a column reduction: ``f = +inf`` (a hole row) carries no plan mass (``-inf``)."""
    return torch.where(torch.isposinf(f), torch.full_like(f, -math.inf), f)


def row_potential(lx: torch.Tensor, ell: torch.Tensor, step) -> torch.Tensor:
    """KL prox of the row block: ``f = step (log x - LSE_C[g])``; ``-inf`` where ``x = 0``, ``+inf`` at holes.

    A hole is a pixel with ``x_i > 0`` whose window holds no column mass (``LSE_C[g]_i = -inf``). Its plan row is
    zero whatever ``f_i``, and the dual term ``tau x_i (1 - e^{-f_i/tau})`` increases to ``tau x_i`` as
    ``f_i -> +inf``: the maximiser is ``f_i = +inf`` (all of ``x_i`` is destroyed, at cost ``tau x_i``).
    """
    f = step * (lx - ell)
    f = torch.where(torch.isneginf(ell), torch.full_like(f, math.inf), f)
    return torch.where(torch.isneginf(lx), lx, f)


def _finite_or_zero(t: torch.Tensor) -> torch.Tensor:
    return torch.where(torch.isfinite(t), t, torch.zeros_like(t))


def uot_terms(
    f: torch.Tensor,
    g: torch.Tensor,
    x: torch.Tensor,
    z: torch.Tensor,
    cost: LocalCost,
    eta: float | torch.Tensor,
    tau: float | torch.Tensor,
) -> UOTTerms:
    """Evaluate every term of (P), (D) and the gap (G) at potentials ``(f, g)`` (shape ``(B, C, H, W)``).

    ``eta`` and ``tau`` may be per-image tensors of shape ``(B, 1, 1, 1)``. ``f = -inf`` marks rows with
    ``x = 0``; ``g = +inf`` marks columns no source can reach (``b = 0``).
    """
    lx = torch.log(x)
    lz = torch.log(z)
    pl = _plan_sums(f, g, cost, eta)
    a, b, log_a, log_b = pl.a, pl.b, pl.log_a, pl.log_b
    kl_rows = _sum_hw(_xlogy_diff(a, log_a, lx) - a + x)
    kl_cols = _sum_hw(_xlogy_diff(b, log_b, lz) - b + z)
    destroyed = _sum_hw((x - a).clamp_min(0))
    created = _sum_hw((z - b).clamp_min(0))
    pos_x, pos_z = x > 0, z > 0
    hole = torch.isposinf(f)  # rows with f = +inf (x > 0, no column mass in reach) carry no plan mass
    dual, gap, log_astar, log_bstar = _dual_and_gap(f, g, x, z, lx, lz, pl, tau, hole)
    rr = torch.where(pos_x & ~hole, (log_a - log_astar).abs(), torch.zeros_like(x))
    cr = torch.where(pos_z & (b > 0), (log_b - log_bstar).abs(), torch.zeros_like(z))
    return UOTTerms(
        transport=pl.transport,
        plan_mass=pl.mass,
        stay_mass=pl.stay,
        entropy=pl.entropy,
        kl_rows=kl_rows,
        kl_cols=kl_cols,
        destroyed=destroyed,
        created=created,
        dual=dual,
        gap=gap,
        row_residual=rr.amax(dim=(-1, -2)),
        col_residual=cr.amax(dim=(-1, -2)),
    )


class _PlanSums(NamedTuple):
    """The plan ``P = exp((f + g - C)/eta)`` summed: marginals and their logs (``(B, C, H, W)``), and per
    measure ``<P, C>``, the mass on the diagonal, ``sum P``, ``H(P)`` and ``eta`` in that shape."""

    a: torch.Tensor
    b: torch.Tensor
    log_a: torch.Tensor
    log_b: torch.Tensor
    transport: torch.Tensor
    stay: torch.Tensor
    mass: torch.Tensor
    entropy: torch.Tensor
    eta_b: float | torch.Tensor


def _plan_sums(f: torch.Tensor, g: torch.Tensor, cost: LocalCost, eta: float | torch.Tensor) -> _PlanSums:
    """Marginals, transport, diagonal mass, mass and entropy of ``P = exp((f + g - C)/eta)``::

        log a = f/eta + LSE_C[g],   log b = g/eta + LSE_C[f],   <P, C> = sum_i e^{f_i/eta + LSE^(1)_C[g]_i}
        eta H(P) = <a, f> + <b, g> - <P, C> - eta sum P

    with ``-inf`` marginals where a potential or its window carries no mass (``f = +inf`` rows, holes, are
    left out of the column sums; ``g = +inf`` columns count as ``g = 0`` in the row sums).
    """
    g_lse = torch.where(torch.isposinf(g), torch.zeros_like(g), g)
    f_lse = row_lse_input(f)
    lg = local_lse(g_lse, cost, eta)  # log sum_j exp((g_j - C_ij)/eta)
    lf = local_lse(f_lse, cost, eta)
    log_a = f_lse / eta + lg
    log_b = g / eta + lf
    log_a = torch.where(torch.isneginf(f_lse) | torch.isneginf(lg), torch.full_like(f, -math.inf), log_a)
    log_b = torch.where(
        torch.isneginf(lf) | torch.isposinf(g) | torch.isneginf(g), torch.full_like(g, -math.inf), log_b
    )
    a, b = torch.exp(log_a), torch.exp(log_b)
    lt = local_lse(g_lse, cost, eta, power=1)
    lt_row = torch.where(torch.isneginf(f_lse) | torch.isneginf(lt), torch.full_like(f, -math.inf), f_lse / eta + lt)
    transport = _sum_hw(torch.exp(lt_row))
    diag_log = (f_lse + g_lse) / eta
    dead = torch.isneginf(f_lse) | torch.isposinf(g) | torch.isneginf(g)
    stay = _sum_hw(torch.where(dead, torch.zeros_like(f), torch.exp(torch.where(dead, torch.zeros_like(f), diag_log))))
    mass = _sum_hw(a)
    af = _sum_hw(torch.where(a > 0, a * _finite_or_zero(f), torch.zeros_like(a)))
    bg = _sum_hw(torch.where(b > 0, b * _finite_or_zero(g), torch.zeros_like(b)))
    eta_b = eta.reshape(eta.shape[:2]) if isinstance(eta, torch.Tensor) and eta.dim() == 4 else eta
    entropy = (af + bg - transport) / eta_b - mass
    return _PlanSums(a, b, log_a, log_b, transport, stay, mass, entropy, eta_b)


def _dual_and_gap(
    f: torch.Tensor,
    g: torch.Tensor,
    x: torch.Tensor,
    z: torch.Tensor,
    lx: torch.Tensor,
    lz: torch.Tensor,
    pl: _PlanSums,
    tau: float | torch.Tensor,
    hole: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The dual (D), the certified gap and the target marginals' logs ``(log a*, log b*)``, per measure.

    Balanced (``tau = inf``): ``D = <x, f> + <z, g> - eta sum P``, gap ``= <P, C> + eta H(P) - D``,
    ``a* = x``, ``b* = z``. Unbalanced: ``D = -eta sum P + tau <x, 1 - e^{-f/tau}> + tau <z, 1 - e^{-g/tau}>``,
    ``a* = x e^{-f/tau}`` (0 on holes), ``b* = z e^{-g/tau}``, gap ``= tau KL(a | a*) + tau KL(b | b*)``.
    """
    a, b, mass, eta_b = pl.a, pl.b, pl.mass, pl.eta_b
    pos_x, pos_z = x > 0, z > 0
    balanced = not isinstance(tau, torch.Tensor) and math.isinf(tau)
    if balanced:
        dual = _sum_hw(torch.where(pos_x, x * _finite_or_zero(f), torch.zeros_like(x)))
        dual = dual + _sum_hw(torch.where(pos_z, z * _finite_or_zero(g), torch.zeros_like(z))) - eta_b * mass
        primal = pl.transport + eta_b * pl.entropy
        return dual, primal - dual, lx, lz
    tau_t = tau
    tau_b = tau_t.reshape(tau_t.shape[:2]) if isinstance(tau_t, torch.Tensor) and tau_t.dim() == 4 else tau_t
    ef = torch.where(torch.isneginf(f), torch.zeros_like(f), 1 - torch.exp(-f / tau_t))  # f = +inf: 1
    eg = torch.where(torch.isposinf(g), torch.ones_like(g), 1 - torch.exp(-_finite_or_zero(g) / tau_t))
    dual = -eta_b * mass + tau_b * _sum_hw(x * ef) + tau_b * _sum_hw(z * eg)
    log_astar = torch.where(hole, torch.full_like(f, -math.inf), lx - f / tau_t)
    log_bstar = lz - g / tau_t
    ka = _sum_hw(
        _xlogy_diff(a, pl.log_a, log_astar) - a + torch.where(pos_x & ~hole, torch.exp(log_astar), torch.zeros_like(x))
    )
    kb = _sum_hw(
        _xlogy_diff(b, pl.log_b, log_bstar)
        - b
        + torch.where(pos_z & ~torch.isposinf(g), torch.exp(log_bstar), torch.zeros_like(z))
    )
    return dual, tau_b * (ka + kb), log_astar, log_bstar


@dataclass
class SinkhornResult:
    """Result of :func:`uot_sinkhorn`; per-example tensors have shape ``(B,)`` (summed over channels)."""

    value: torch.Tensor  # primal objective (P) at the returned plan
    dual: torch.Tensor  # dual objective (D); value - dual = certified gap (UOT)
    gap: torch.Tensor
    f: torch.Tensor  # (B, C, H, W) row potential (cost units), -inf where x = 0
    g: torch.Tensor  # (B, C, H, W) column potential, -inf where z = 0
    iterations: torch.Tensor  # (B,) sweeps until this example converged
    converged: torch.Tensor  # (B,) bool
    residual: torch.Tensor  # (B,) first-order marginal residual max |log(a / a*)|
    transport_cost: torch.Tensor  # <P, C>
    plan_mass: torch.Tensor  # sum P
    moved_mass: torch.Tensor  # off-diagonal plan mass (actually transported)
    destroyed_mass: torch.Tensor  # sum (x - P1)_+
    created_mass: torch.Tensor  # sum (z - P^T 1)_+
    kl_rows: torch.Tensor
    kl_cols: torch.Tensor

    @property
    def transported_fraction(self) -> torch.Tensor:
        """Fraction of the plan's mass that leaves its pixel (0 = no transport at all)."""
        return self.moved_mass / self.plan_mass.clamp_min(torch.finfo(self.plan_mass.dtype).tiny)


def _result(t, value: torch.Tensor, gap: torch.Tensor, f, g, iters, conv, resid) -> SinkhornResult:
    """The result object from the per-channel terms ``t`` (summed over channels here) and the per-image
    ``value`` and certified ``gap``."""

    def tot(v: torch.Tensor) -> torch.Tensor:
        return v.sum(dim=1)

    return SinkhornResult(
        value=value, dual=tot(t.dual), gap=gap, f=f, g=g, iterations=iters, converged=conv, residual=resid,
        transport_cost=tot(t.transport), plan_mass=tot(t.plan_mass),
        moved_mass=tot(t.plan_mass - t.stay_mass).clamp_min(0), destroyed_mass=tot(t.destroyed),
        created_mass=tot(t.created), kl_rows=tot(t.kl_rows), kl_cols=tot(t.kl_cols),
    )  # fmt: skip


def uot_sinkhorn(
    x: torch.Tensor,
    z: torch.Tensor,
    cost: LocalCost,
    eta: float,
    tau: float = math.inf,
    *,
    tol: float | None = None,
    max_iter: int = 5000,
    f0: torch.Tensor | None = None,
    g0: torch.Tensor | None = None,
    divergence: str = "kl",
) -> SinkhornResult:
    """Entropic (un)balanced OT between fixed non-negative measures ``x``, ``z`` of shape ``(B, C, H, W)``.

    Args:
        x, z: pixel masses (raw, not normalised; any non-negative values). Channels are independent.
        cost: :class:`LocalCost` (pixel units).
        eta: entropic regularisation in cost units (> 0).
        tau: marginal relaxation (> 0); ``math.inf`` = balanced OT, which needs equal mass per channel.
        tol: stop an example when its marginal residual ``max|log(a/a*)|`` is below ``tol``
            (default 1e-5 float32, 1e-10 float64).
        max_iter: hard cap on sweeps.
        f0, g0: warm-start potentials.
        divergence: marginal penalty ``D``: ``"kl"`` (``tau KL``, default), ``"tv"`` (``tau ||a - x||_1``) or
            ``"l2"`` (``tau/2 ||a - x||^2``); ``"tv"`` and ``"l2"`` need a finite ``tau`` (docs/math.md,
            "Other marginal penalties"). For those two the ``kl_rows``/``kl_cols`` fields hold ``D / tau``.
    Returns:
        :class:`SinkhornResult` with ``.value`` the optimal value of (P) summed over channels.
    """
    check_measure(x, "x")
    check_measure(z, "z")
    check_same(x, z, "x", "z")
    check_cost(cost)
    eta = check_positive(eta, "eta")
    tau = check_tau(tau)
    max_iter = check_count(max_iter, "max_iter")
    tol = default_tol(x.dtype) if tol is None else check_positive(tol, "tol")
    f0 = check_potential(f0, x, "f0")
    g0 = check_potential(g0, z, "g0")
    if divergence not in DIVERGENCES:
        raise ValueError(f"divergence must be one of {DIVERGENCES}, got {divergence!r}")
    if divergence != "kl":
        if math.isinf(tau):
            raise ValueError(f"divergence={divergence!r} needs a finite tau (tau=inf is balanced OT)")
        return _sinkhorn_divergence(x, z, cost, eta, tau, divergence, tol, max_iter, f0, g0)
    balanced = math.isinf(tau)
    if balanced:
        _check_equal_mass(x, z)
    f, g, log = _kl_sweeps(x, z, cost, eta, 1.0 if balanced else tau / (tau + eta), tol, max_iter, f0, g0)
    terms = uot_terms(f, g, x, z, cost, eta, tau)
    value_b, gap_b = _kl_value(terms, x, z, f, log.converged, cost, eta, tau)
    return _result(terms, value_b, gap_b, f, g, log.iterations, log.converged, log.residual)


def _check_equal_mass(x: torch.Tensor, z: torch.Tensor) -> None:
    """Balanced OT needs equal channel masses (to 1e-5 relative in float32, 1e-9 in float64)."""
    mx, mz = _sum_hw(x), _sum_hw(z)
    rel = ((mx - mz).abs() / mx.clamp_min(1e-30)).max()
    lim = 1e-5 if x.dtype == torch.float32 else 1e-9
    if float(rel) > lim:
        raise ValueError(
            f"balanced OT (tau=inf) needs equal mass per channel; relative mismatch {float(rel):.3g}. "
            "Normalise the images or use a finite tau."
        )


def _kl_sweeps(
    x: torch.Tensor,
    z: torch.Tensor,
    cost: LocalCost,
    eta: float,
    kappa: float,
    tol: float,
    max_iter: int,
    f0: torch.Tensor | None,
    g0: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, SweepLog]:
    """Block ascent on the KL dual (docs/math.md §1): one sweep is

        f <- eta kappa (log x - LSE_C[g]),     g <- eta kappa (log z - LSE_C[f]),     kappa = tau / (tau + eta)

    (:func:`row_potential`; ``g = +inf`` where no row mass is in reach). The residual is the change of
    ``LSE_C[g]`` on the support of x (the first-order row residual ``max |log(a / a*)|``). Returns ``f``, ``g``
    and the loop's :class:`~sinkhorn_attacks.ot.engine.SweepLog`.
    """
    ek = eta * kappa
    lx, lz = torch.log(x), torch.log(z)
    f = torch.zeros_like(x) if f0 is None else f0.clone()
    g = torch.zeros_like(z) if g0 is None else g0.clone()
    gl = torch.where(torch.isposinf(g), torch.zeros_like(g), g)
    state = {"f": f, "g": g, "ell": local_lse(gl, cost, eta)}

    def sweep(ws: dict[str, torch.Tensor], it: int) -> torch.Tensor:
        xa, la, za = ws["lx"], ws["ell"], ws["lz"]
        fa = row_potential(xa, la, ek)
        # without holes (f = +inf) the rows' -inf entries are the zero pixels of x: empty windows known
        q = local_lse(row_lse_input(fa), cost, eta, empty=None if bool(torch.isposinf(fa).any()) else ws["empty"])
        ga = torch.where(torch.isneginf(za), za, ek * (za - q))
        ga = torch.where(torch.isneginf(q) & ~torch.isneginf(za), torch.full_like(ga, math.inf), ga)
        ell = local_lse(torch.where(torch.isposinf(ga), torch.zeros_like(ga), ga), cost, eta)
        same = (ell == la) | (torch.isneginf(xa))  # also both -inf (hole rows)
        diff = torch.where(same, torch.zeros_like(xa), (ell - la).abs())
        ws["f"], ws["g"], ws["ell"] = fa, ga, ell
        return torch.nan_to_num(diff, nan=math.inf).amax(dim=(1, 2, 3))

    extra = {"lx": lx, "lz": lz, "empty": empty_windows(lx, cost)}
    log = run_sweeps(state, sweep, SweepOptions(tol, max_iter), out=("f", "g", "ell"), extra=extra)
    return f, g, log


def _kl_value(
    terms: UOTTerms,
    x: torch.Tensor,
    z: torch.Tensor,
    f: torch.Tensor,
    conv: torch.Tensor,
    cost: LocalCost,
    eta: float,
    tau: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image: the value of (P), ``<P, C> + eta H(P) [+ tau (KL(P1 | x) + KL(P^T 1 | z))]``, summed over
    channels, and the certified gap.

    Balanced: ``inf`` for an infeasible pair (a pixel with mass and no column mass in reach, or for an
    unconverged solve without such a hole row, the exact LP's verdict), and no certificate (gap ``inf``)
    for an infeasible pair or an unconverged plan whose "primal" falls below the dual.
    """
    balanced = math.isinf(tau)
    if balanced:
        value = terms.transport + eta * terms.entropy
        # a pixel with mass and no column mass in reach: no plan meets the hard marginals
        infeasible = (torch.isposinf(f) & (x > 0)).flatten(2).any(2)
        # an unconverged balanced solve is either slow or infeasible without a hole row (Hall's condition
        # fails for a group of pixels: the potentials drift for ever); decide with the exact LP
        for b in (~conv & ~infeasible.any(1)).nonzero().flatten().tolist():
            infeasible[b] = _windowed_infeasible(x[b], z[b], cost)
        value = torch.where(infeasible, torch.full_like(value, math.inf), value)
    else:
        value = terms.transport + eta * terms.entropy + tau * (terms.kl_rows + terms.kl_cols)
    value_b = value.sum(dim=1)  # over channels
    gap_b = terms.gap.sum(dim=1)
    if balanced:
        # no certificate: an infeasible pair (value inf), or an unconverged plan whose rows miss x so that
        # its "primal" falls below the dual (not an upper bound then)
        nocert = torch.isinf(value_b) | (~conv & ~(gap_b >= 0))
        gap_b = torch.where(nocert, torch.full_like(gap_b, math.inf), gap_b)
    return value_b, gap_b


def _windowed_infeasible(x: torch.Tensor, z: torch.Tensor, cost: LocalCost) -> torch.Tensor:
    """Per channel of one ``(C, H, W)`` pair of equal channel masses: no in-window plan exists (exact LP)."""
    from .meter import exact_ot_pair

    out = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    xs, zs = x.detach().double().cpu().numpy(), z.detach().double().cpu().numpy()
    for c, (xc, zc) in enumerate(zip(xs, zs)):
        if xc.sum() > 0 and zc.sum() > 0:
            out[c] = math.isinf(exact_ot_pair(xc, zc, cost))
    return out


def uot_upper_bound(
    x: torch.Tensor,
    z: torch.Tensor,
    cost: LocalCost,
    tau: float,
    etas: tuple[float, ...] = (0.1, 0.03),
    *,
    sweeps: int = 40,
    sweep_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Certified upper bound on the exact unregularised ``U_tau(x, z)``, per image ``(B,)`` float64.

    ``U_tau(x, z) = min_P F(P)`` with ``F(P) = <P, C> + tau KL(P1 | x) + tau KL(P^T 1 | z)``, so the value
    ``F(P)`` of *any* plan ``P >= 0`` is an upper bound (docs/math.md, "tight certificate"). The plans tried
    are the entropic plans ``exp((f + g - C)/eta)`` of a few warm-started UOT Sinkhorn sweeps at each
    temperature of ``etas`` (decreasing: the entropic blur of ``<P, C>`` shrinks with eta); convergence is
    not needed for validity. The sweeps run in ``sweep_dtype`` (default: z's dtype); every ``F`` is evaluated
    in float64 from the potentials, and the smallest is returned.
    """
    check_measure(x, "x")
    check_measure(z, "z")
    check_same(x, z, "x", "z")
    check_cost(cost)
    tau = check_positive(tau, "tau")
    if not etas:
        raise ValueError("etas must name at least one temperature")
    dt = sweep_dtype or x.dtype
    x64, z64 = x.double(), z.double()
    best = torch.full((x.shape[0],), math.inf, dtype=torch.float64, device=x.device)
    f = g = None
    for eta in etas:
        eta = check_positive(eta, "eta")
        s = uot_sinkhorn(x.to(dt), z.to(dt), cost, eta, tau, max_iter=int(sweeps), f0=f, g0=g, tol=1e-7)
        f, g = s.f, s.g
        t = uot_terms(f.double(), g.double(), x64, z64, cost, eta, tau)
        val = (t.transport + tau * (t.kl_rows + t.kl_cols)).sum(1)
        best = torch.where(torch.isfinite(val), torch.minimum(best, val), best)
    return best


def _l2_prox(x: torch.Tensor, ell: torch.Tensor, eta: float, tau: float, max_newton: int = 60) -> torch.Tensor:
    """Row block of the quadratic penalty ``tau/2 ||a - x||^2``: the root ``f`` of ``e^{f/eta + ell} = x - f/tau``.

    With ``a = e^{f/eta + ell}`` the equation reads ``a + c log a = x + c ell`` (``c = eta/tau``), i.e.
    ``a = c w`` with ``w + log w = y = x/c + ell - log c``. Newton in ``t = log w`` on the convex increasing
    ``e^t + t - y``, started above the root (``t = log y`` for ``y > 1``, else ``t = y``), decreases
    monotonically and quadratically. ``ell = -inf`` (no mass in reach) gives the maximiser ``f = tau x``.
    """
    c = eta / tau
    lc = math.log(c)
    reach = torch.isfinite(ell)
    y = torch.where(reach, x / c + ell - lc, torch.zeros_like(ell))
    t = torch.where(y > 1, torch.log(y.clamp_min(1.0)), y)
    eps = torch.finfo(x.dtype).eps
    for _ in range(max_newton):
        et = torch.exp(t)
        step = (et + t - y) / (et + 1)
        t = t - step
        if bool((step.abs() <= 4 * eps * (1 + t.abs())).all()):
            break
    f = eta * (lc + t - torch.where(reach, ell, torch.zeros_like(ell)))
    return torch.where(reach, f, tau * x)


def marginal_prox(
    lx: torch.Tensor, x: torch.Tensor, ell: torch.Tensor, eta: float, tau: float, divergence: str = "kl"
) -> torch.Tensor:
    """Exact maximiser over one block of the dual, given ``ell = LSE_C[other potential]`` (docs/math.md §1).

    ``kl``: ``eta kappa (log x - ell)`` (see :func:`row_potential`); ``tv``: the same step with ``kappa = 1``
    clipped to ``[-tau, tau]`` (``-tau`` where ``x = 0``); ``l2``: the root of ``e^{f/eta + ell} = x - f/tau``.
    """
    if divergence == "kl":
        return row_potential(lx, ell, eta * tau / (tau + eta))
    if divergence == "tv":
        f = (eta * (lx - ell)).clamp(-tau, tau)
        return torch.where(torch.isneginf(lx), torch.full_like(f, -tau), f)
    if divergence == "l2":
        return _l2_prox(x, ell, eta, tau)
    raise ValueError(f"divergence must be one of {DIVERGENCES}, got {divergence!r}")


def _divergence_terms(
    f: torch.Tensor,
    g: torch.Tensor,
    x: torch.Tensor,
    z: torch.Tensor,
    cost: LocalCost,
    eta: float,
    tau: float,
    div: str,
) -> UOTTerms:
    """:func:`uot_terms` for ``div`` in ``("tv", "l2")``: finite potentials, plans of full support.

    ``kl_rows``/``kl_cols`` hold ``D(a | x) / tau``. The gap is the sum of the Fenchel-Young terms
    ``D(a | x) + D*(-f | x) + <a, f> >= 0`` over rows and columns, which equals primal minus dual for the plan
    ``P = exp((f + g - C)/eta)`` (docs/math.md, "Other marginal penalties").
    """
    lx, lz = torch.log(x), torch.log(z)
    lg, lf = local_lse(g, cost, eta), local_lse(f, cost, eta)
    log_a, log_b = f / eta + lg, g / eta + lf
    a, b = torch.exp(log_a), torch.exp(log_b)
    lt = local_lse(g, cost, eta, power=1)
    transport = _sum_hw(torch.exp(f / eta + lt))
    stay = _sum_hw(torch.exp((f + g) / eta))
    mass = _sum_hw(a)
    entropy = (_sum_hw(a * f) + _sum_hw(b * g) - transport) / eta - mass

    def pieces(p, u, m):  # (D/tau, -D*(-u), Fenchel-Young term) of plan marginal p, potential u, measure m
        if div == "tv":
            return (p - m).abs(), m * u.clamp_max(tau), tau * (p - m).abs() - u * (m - p)
        inside = u <= tau * m
        conj = torch.where(inside, m * u - u * u / (2 * tau), tau * m * m / 2)
        fy = torch.where(inside, tau / 2 * (p - m + u / tau) ** 2, p * (u - tau * m) + tau / 2 * p * p)
        return 0.5 * (p - m) ** 2, conj, fy

    dr, cr_, fr = pieces(a, f, x)
    dc, cc, fc = pieces(b, g, z)
    rr = (f - marginal_prox(lx, x, lg, eta, tau, div)).abs() / eta
    cres = (g - marginal_prox(lz, z, lf, eta, tau, div)).abs() / eta
    return UOTTerms(
        transport=transport,
        plan_mass=mass,
        stay_mass=stay,
        entropy=entropy,
        kl_rows=_sum_hw(dr),
        kl_cols=_sum_hw(dc),
        destroyed=_sum_hw((x - a).clamp_min(0)),
        created=_sum_hw((z - b).clamp_min(0)),
        dual=-eta * mass + _sum_hw(cr_) + _sum_hw(cc),
        gap=_sum_hw(fr) + _sum_hw(fc),
        row_residual=rr.amax(dim=(-1, -2)),
        col_residual=cres.amax(dim=(-1, -2)),
    )


def _sinkhorn_divergence(
    x: torch.Tensor,
    z: torch.Tensor,
    cost: LocalCost,
    eta: float,
    tau: float,
    div: str,
    tol: float,
    max_iter: int,
    f0: torch.Tensor | None,
    g0: torch.Tensor | None,
) -> SinkhornResult:
    """Block ascent of :func:`uot_sinkhorn` for the ``tv`` and ``l2`` penalties (finite potentials throughout).

    One sweep: ``f = prox(LSE_C[g])``, ``g = prox(LSE_C[f])`` (:func:`marginal_prox`). The residual is the
    change the next row step would make, ``max |prox(LSE_C[g_new]) - f| / eta`` (for an unclipped ``tv`` row
    it is ``|log(a / x)|``, the KL path's residual); that next ``f`` starts the following sweep.
    """
    lx, lz = torch.log(x), torch.log(z)

    def start(t: torch.Tensor | None) -> torch.Tensor:
        if t is None:
            return torch.zeros_like(x)
        t = torch.where(torch.isfinite(t), t, torch.zeros_like(t))
        return t.clamp(-tau, tau) if div == "tv" else t

    f, g = start(f0), start(g0)
    state = {"f": f, "g": g, "f_next": marginal_prox(lx, x, local_lse(g, cost, eta), eta, tau, div)}

    def sweep(ws: dict[str, torch.Tensor], it: int) -> torch.Tensor:
        fa = ws["f_next"]
        ga = marginal_prox(ws["lz"], ws["z"], local_lse(fa, cost, eta), eta, tau, div)
        fn = marginal_prox(ws["lx"], ws["x"], local_lse(ga, cost, eta), eta, tau, div)
        ws["f"], ws["g"], ws["f_next"] = fa, ga, fn
        return torch.nan_to_num((fn - fa).abs(), nan=math.inf).amax(dim=(1, 2, 3)) / eta

    extra = {"x": x, "lx": lx, "z": z, "lz": lz}
    log = run_sweeps(state, sweep, SweepOptions(tol, max_iter), out=("f", "g", "f_next"), extra=extra)
    iters, conv, resid = log.iterations, log.converged, log.residual
    t = _divergence_terms(f, g, x, z, cost, eta, tau, div)
    value = t.transport + eta * t.entropy + tau * (t.kl_rows + t.kl_cols)
    return _result(t, value.sum(dim=1), t.gap.sum(dim=1), f, g, iters, conv, resid)
