"""Unbalanced-OT projections (the corrected method of the thesis; docs/math.md §4-5).

(a) penalised:  z* = argmin_{z in [0,1]^n} gamma/2 ||z - w||^2 + UOT_{eta,tau}(x, z)
    Block-coordinate dual ascent on the saddle problem min_z max_{f,g} gamma/2||z-w||^2 + D(f, g; z):
        f <- eta kappa (log x - LSE_C[g])                                    (row block, closed form)
        per pixel j, with q_j = LSE_C[f]_j:  z_j = clip(root of
            phi_j(z) = gamma (z - w_j) + tau (1 - exp(lambda (q_j - log z))), 0, 1)
        g_j <- eta kappa (log z_j - q_j)                                     (exact (g, z) block)
    kappa = tau/(tau+eta), lambda = 1 - kappa. One sweep is a kappa^2-contraction; stop when the row
    residual max|LSE_C[g_new] - LSE_C[g_old]| <= tol. The certified gap is tau KL(P1 | x e^{-f/tau}).

(b) budgeted:   min_{z in [0,1]^n, P >= 0} gamma/2 ||z - w||^2 + eta H(P)
                s.t. F(P, z) = <P, C> + tau KL(P1 | x) + tau KL(P^T 1 | z) <= eps
    For a multiplier psi > 0 the Lagrangian subproblem is (a) with (eta/psi, tau, gamma/psi), and
    F(psi) is non-increasing: psi is updated per image between the sweeps of one solve (a safeguarded
    secant on log F against log psi; ``method="search"`` keeps the nested bracketed search). The z
    returned is from the feasible side, so its F (``.radius``) certifies U_tau(x, z) <= F <= eps.
    If w is in the box and the plan of UOT_eta(x, w) already has F <= eps, w is returned (psi = 0).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from ..ot.checks import (
    check_cost,
    check_count,
    check_positive,
    check_potential,
    check_step_point,
)
from ..ot.cost import LocalCost
from ..ot.engine import CHECK, Decision, SweepOptions, relaxed, run_sweeps
from ..ot.kernel import empty_windows, local_lse
from ..ot.sinkhorn import row_lse_input, row_potential, uot_sinkhorn, uot_terms

__all__ = ["uot_project", "UOTProjection", "ProjectionResult", "solve_z"]


def _per_image(v: float | torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(v, dtype=ref.dtype, device=ref.device)
    return t.reshape(-1, 1, 1, 1).expand(ref.shape[0], 1, 1, 1) if t.dim() else t.reshape(1, 1, 1, 1)


def solve_z(
    q: torch.Tensor,
    w: torch.Tensor,
    lam: torch.Tensor | float,
    tau: float,
    gamma: torch.Tensor | float,
    z0: torch.Tensor | None = None,
    *,
    max_newton: int = 40,
) -> torch.Tensor:
    """Exact 1-D (g, z) block: ``z = clip(root of gamma(z - w) + tau(1 - exp(lam (q - log z))), 0, 1)``.

    Safeguarded Newton in ``u = log z`` on the bracket ``[u_lo, 0]`` with
    ``u_lo = min(0, q - log(1 + gamma (1 - w)_+ / tau) / lam)`` (where ``phi <= 0``). Pixels with
    ``q = -inf`` (no source in reach) get ``clip(w - tau/gamma, 0, 1)``.
    """
    lam_t = torch.as_tensor(lam, dtype=q.dtype, device=q.device)
    gam = torch.as_tensor(gamma, dtype=q.dtype, device=q.device)
    reach = torch.isfinite(q)
    qf = torch.where(reach, q, torch.zeros_like(q))
    lq = lam_t * qf  # phi(u) = gam (e^u - w) + tau (1 - e^{lam q - lam u}); the loop reuses lam q, gam w
    gw = gam * w

    def phi_dphi(u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s = torch.exp(torch.addcmul(lq, lam_t, u, value=-1.0)).mul_(tau)  # tau e^{lam (q - u)}
        ge = torch.exp(u).mul_(gam)
        return (ge - gw).add_(tau).sub_(s), ge.add_(s.mul_(lam_t))

    hi = torch.zeros_like(q)
    at_one, _ = phi_dphi(hi)
    done = (at_one <= 0) | ~reach  # z = 1, or no source in reach: nothing to solve
    lo = torch.clamp(qf - torch.log1p(gam * (1 - w).clamp_min(0) / tau) / lam_t, max=0.0)
    if z0 is not None:
        u = torch.log(z0.clamp_min(torch.finfo(q.dtype).tiny)).clamp(lo, hi)
    else:
        u = 0.5 * (lo + hi)
    loose = math.sqrt(torch.finfo(q.dtype).eps)
    finishing = False
    for _ in range(max_newton):
        p, dp = phi_dphi(u)
        neg = p < 0
        lo = torch.where(neg, u, lo)
        hi = torch.where(neg, hi, u)
        un = u - p.div_(dp)
        # outside the bracket (NaN and +-inf included: every comparison with NaN is False): bisect
        un = torch.where((un >= lo) & (un <= hi), un, (lo + hi).mul_(0.5))
        step = (un - u).abs_()
        u = un
        if finishing:
            break  # one more Newton step after |step| <= sqrt(eps): quadratic convergence -> rounding level
        finishing = bool(((step <= u.abs().add_(1.0).mul_(loose)) | done).all())
    z = torch.exp(u)
    z = torch.where(at_one <= 0, torch.ones_like(z), z)
    z = torch.where(reach, z, (w - tau / gam).clamp(0, 1))
    return z


_RELAX = 1.8  # default over-relaxation of the potentials (1 = plain block-coordinate ascent)
_T_MIN, _T_MAX = math.log(1e-12), math.log(1e12)  # range of log psi
_DT_MAX = 2.0  # largest change of log psi in one multiplier update
_GATE = 1e-2  # F is evaluated (and psi moved) only once the residual is below this (and 10% of |log(F/eps)|)


def _plan_functional(fa, ga, za, q, ell, lxa, ea, cost, tau) -> torch.Tensor:
    """``F(P, z) = <P, C> + tau KL(P1 | x) + tau KL(P^T 1 | z)`` of the plan ``P = exp((f + g - C)/eta)``, (B,).

    ``q = LSE_C[f]`` and ``ell = LSE_C[g]`` are the sweep's own reductions, so this costs one extra window
    reduction (the transport moment). Any ``P >= 0`` gives an upper bound ``U_tau(x, z) <= F(P, z)``.
    """
    fl = row_lse_input(fa)
    gl = torch.where(torch.isposinf(ga), torch.zeros_like(ga), ga)
    ninf = torch.full_like(fa, -math.inf)
    log_a = torch.where(torch.isneginf(fl) | torch.isneginf(ell), ninf, fl / ea + ell)
    log_b = torch.where(torch.isneginf(q) | torch.isinf(ga), ninf, ga / ea + q)
    lt = local_lse(gl, cost, ea, power=1)
    tr = torch.exp(torch.where(torch.isneginf(fl) | torch.isneginf(lt), ninf, fl / ea + lt))
    a, b, xa = torch.exp(log_a), torch.exp(log_b), torch.exp(lxa)
    lz = torch.log(za)
    kla = torch.where(a > 0, a * (log_a - lxa), torch.zeros_like(a)) - a + xa
    klb = torch.where(b > 0, b * (log_b - lz), torch.zeros_like(b)) - b + za
    return (tr + tau * (kla + klb)).sum(dim=(1, 2, 3))


def _penalised_sweeps(
    lx: torch.Tensor,
    w: torch.Tensor,
    cost: LocalCost,
    eta: torch.Tensor,
    tau: float,
    gamma: torch.Tensor,
    tol: float,
    max_iter: int,
    f: torch.Tensor,
    g: torch.Tensor,
    z: torch.Tensor,
    relax: float = _RELAX,
    budget: dict[str, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Algorithm A on a batch with per-image ``eta``, ``gamma`` of shape ``(B, 1, 1, 1)``; in place on f, g, z.

    Over-relaxed (successive over-relaxation of Sinkhorn, Thibault et al. 2017): each block update
    ``f~, (g~, z)`` is applied as ``f <- f + omega (f~ - f)``, ``g <- g + omega (g~ - g)``; ``omega = 1`` is
    the plain ascent. Fixed points are unchanged. The residual is the sweep's change of ``LSE_C[g]`` on the
    support of x (for ``omega = 1`` it equals the first-order row residual ``max |log(a / a*)|``; for any
    ``omega`` it vanishes exactly at a fixed point). The loop, its active set and the guards of the
    relaxation (damping of diverging images, a restart from the initial potentials after a non-finite
    iterate, plain sweeps after a stall, early stop of hopeless images) are
    :func:`~sinkhorn_attacks.ot.engine.run_sweeps`.

    ``budget`` (budgeted projection, docs/math.md §2(b)): a dict with per-image ``eps`` (B,), ``t`` (B,)
    = log psi, ``rtol`` and ``max_updates``; ``eta`` and ``gamma`` are then the *base* values, and the sweeps
    run at ``(eta/psi, gamma/psi)`` while psi is updated between sweeps (a secant step on
    ``log F`` against ``log psi``, safeguarded by a bracket), so the whole projection is one solve. An image
    stops when its residual is below ``tol`` and ``eps (1 - rtol) <= F <= eps``. The dict receives ``t``,
    ``F`` and the best feasible iterate seen (``best_*``) for images that do not converge.
    Returns ``(f, g, z, iterations (B,), residual (B,), converged (B,))``.
    """
    B = lx.shape[0]
    extra = {"lx": lx, "w": w, "eta0": eta.expand(B, 1, 1, 1), "gamma0": gamma.expand(B, 1, 1, 1)}
    best: dict[str, torch.Tensor] = {}
    if budget is not None:
        extra.update(_budget_records(budget, B, lx.dtype, lx.device))
        best = {"F": torch.full((B,), -math.inf, dtype=lx.dtype, device=lx.device)}
        best.update(f=f.clone(), g=g.clone(), z=z.clone(), t=budget["t"].clone())
        budget.setdefault("t_out", budget["t"].clone())
        budget.setdefault("F_out", torch.full((B,), math.nan, dtype=lx.dtype, device=lx.device))
    _set_scale(extra, tau, budget is not None)
    extra["ell"] = _ell_of(g, extra["eta"], cost)
    extra["empty_q"] = empty_windows(lx, cost)  # windows with no clean mass
    state = {"f": f, "g": g, "z": z}
    opts = SweepOptions(tol, max_iter, relax)
    hooks = _budget_hooks(budget, best, cost, tau, tol) if budget is not None else {}
    restart = _restart_hook(f.clone(), g.clone(), z.clone(), cost)
    sweep = _PenalisedSweep(cost, tau)
    log = run_sweeps(state, sweep, opts, out=("f", "g", "z"), extra=extra, guarded=True, restart=restart, **hooks)
    iters, resid, conv = log.iterations, log.residual, log.converged
    if budget is not None:
        # unconverged images: fall back to the best feasible iterate seen (its F certifies the budget)
        fb = ~conv & torch.isfinite(best["F"])
        if bool(fb.any()):
            f[fb], g[fb], z[fb] = best["f"][fb], best["g"][fb], best["z"][fb]
            budget["t_out"][fb] = best["t"][fb]
    return f, g, z, iters, resid, conv


def _budget_records(budget: dict[str, Any], B: int, dt: torch.dtype, dev: torch.device) -> dict[str, torch.Tensor]:
    """Per-image records of the multiplier search that travel with the working set (budgeted mode)."""
    return {
        "eps": budget["eps"],
        "t": budget["t"].clone(),
        "tp": torch.full((B,), math.nan, dtype=dt, device=dev),  # previous (log psi, log F) for the secant
        "lFp": torch.full((B,), math.nan, dtype=dt, device=dev),
        "slope": torch.ones(B, dtype=dt, device=dev),  # -d log F / d log psi (1: F ~ 1/psi)
        "t_lo": torch.full((B,), -math.inf, dtype=dt, device=dev),  # F > eps there (converged evaluations)
        "t_hi": torch.full((B,), math.inf, dtype=dt, device=dev),  # F <= eps there
        "viol": torch.full((B,), math.inf, dtype=dt, device=dev),  # |log(F / eps)| at the last evaluation
        "nupd": torch.zeros(B, dtype=torch.long, device=dev),
        "F": torch.full((B,), math.nan, dtype=dt, device=dev),
    }


def _set_scale(d: dict[str, torch.Tensor], tau: float, budgeted: bool) -> None:
    """Per-image ``(eta, gamma)`` at the current psi (``eta0 / psi``, ``gamma0 / psi`` when budgeted) and the
    derived step sizes ``step = eta kappa = eta tau / (tau + eta)`` and ``lam = eta / (tau + eta)``."""
    if not budgeted:
        e, gm = d["eta0"], d["gamma0"]
    else:
        psi = torch.exp(d["t"]).reshape(-1, 1, 1, 1)
        e, gm = d["eta0"] / psi, d["gamma0"] / psi
    d["eta"], d["gamma"] = e, gm
    d["step"] = e * (tau / (tau + e))
    d["lam"] = e / (tau + e)


def _ell_of(g: torch.Tensor, e: torch.Tensor, cost: LocalCost) -> torch.Tensor:
    """``LSE_C[g]`` at temperature ``e`` (columns no source reaches, ``g = +inf``, count as ``g = 0``)."""
    return local_lse(torch.where(torch.isposinf(g), torch.zeros_like(g), g), cost, e)


class _PenalisedSweep:
    """One over-relaxed sweep of Algorithm A on a working set (module docstring (a)): the row block
    ``f~ = eta kappa (log x - LSE_C[g])``, the exact ``(g, z)`` block (:func:`solve_z`, then
    ``g~ = eta kappa (log z - LSE_C[f])``), each applied as ``x <- x + omega (x~ - x)``. Returns the change of
    ``LSE_C[g]`` on the support of x."""

    def __init__(self, cost: LocalCost, tau: float) -> None:
        self.cost, self.tau = cost, tau

    def __call__(self, ws: dict[str, torch.Tensor], it: int) -> torch.Tensor:
        cost, tau = self.cost, self.tau
        lxa, sa, ea, om = ws["lx"], ws["step"], ws["eta"], ws["omega"]
        fa = relaxed(ws["f"], row_potential(lxa, ws["ell"], sa), om)
        # without holes (f = +inf) the rows' -inf entries are the zero pixels of x: empty windows known
        empty = None if bool(torch.isposinf(fa).any()) else ws["empty_q"]
        q = local_lse(row_lse_input(fa), cost, ea, empty=empty)
        za = solve_z(q, ws["w"], ws["lam"], tau, ws["gamma"], ws["z"])
        g_new = sa * (torch.log(za) - q)
        g_new = torch.where(torch.isneginf(q), torch.full_like(g_new, math.inf), g_new)
        g_new = torch.where((za <= 0) & torch.isfinite(q), torch.full_like(g_new, -math.inf), g_new)
        ga = relaxed(ws["g"], g_new, om)
        ell = _ell_of(ga, ea, cost)
        same = (ell == ws["ell"]) | torch.isneginf(lxa)  # also both -inf (hole rows)
        diff = torch.where(same, torch.zeros_like(lxa), (ell - ws["ell"]).abs())
        ws["f"], ws["g"], ws["z"], ws["ell"], ws["q"] = fa, ga, za, ell, q
        return torch.nan_to_num(diff, nan=math.inf).amax(dim=(1, 2, 3))


def _budget_hooks(
    budget: dict[str, Any], best: dict[str, torch.Tensor], cost: LocalCost, tau: float, tol: float
) -> dict[str, Callable[..., Any]]:
    """The engine hooks of the budgeted mode: ``decide`` moves psi (:func:`_budget_step`) and measures
    progress afresh where it moved; ``on_leave`` records the last ``log psi`` and ``F`` of leaving images."""
    rtol, max_upd = float(budget["rtol"]), int(budget["max_updates"])
    t_out, F_out = budget["t_out"], budget["F_out"]

    def decide(ws, r, ok, it, idx) -> Decision:
        args = (ws["f"], ws["g"], ws["z"], ws["q"], ws["ell"], r, ok, tol, rtol, max_upd, cost, tau)
        done, moved = _budget_step(ws, best, idx, *args)
        if not bool(moved.any()):
            return Decision(done)
        _set_scale(ws, tau, True)
        ws["ell"][moved] = _ell_of(ws["g"][moved], ws["eta"][moved], cost)  # LSE_C[g] at the new temperature
        return Decision(done, fresh=moved)

    def on_leave(ws, mask, idx) -> None:
        t_out[idx[mask]], F_out[idx[mask]] = ws["t"][mask], ws["F"][mask]

    return {"decide": decide, "on_leave": on_leave}


def _restart_hook(
    f0: torch.Tensor, g0: torch.Tensor, z0: torch.Tensor, cost: LocalCost
) -> Callable[[dict[str, torch.Tensor], torch.Tensor, torch.Tensor], None]:
    """The engine's ``restart``: images with a non-finite iterate go back to the initial potentials."""

    def restart(ws, bad, idx) -> None:
        bi = idx[bad]
        ws["f"][bad], ws["g"][bad], ws["z"][bad] = f0[bi], g0[bi], z0[bi]
        ws["ell"][bad] = _ell_of(ws["g"][bad], ws["eta"][bad], cost)

    return restart


def _budget_step(ws, best, idx, fa, ga, za, q, ell, r, inner_ok, tol, rtol, max_upd, cost, tau):
    """Evaluate F where it is informative and move log psi; returns ``(done, psi moved)`` per image.

    F is evaluated for images whose residual is below half their last constraint violation ``|log(F/eps)|``
    (the plan is then accurate enough for the sign and size of the step). The step is a secant on
    ``log F`` against ``t = log psi`` (F is non-increasing in psi), towards ``eps (1 - rtol/2)``, at most
    ``_DT_MAX``, kept inside the bracket of converged evaluations.
    """
    gate = (r <= torch.clamp(0.1 * ws["viol"], max=_GATE, min=tol)) | (ws["viol"] == math.inf)
    n = gate.shape[0]
    done = torch.zeros(n, dtype=torch.bool, device=r.device)
    moved = torch.zeros(n, dtype=torch.bool, device=r.device)
    if not bool(gate.any()):
        return done, moved
    sel = gate.nonzero().squeeze(1)
    Fv = _plan_functional(fa[sel], ga[sel], za[sel], q[sel], ell[sel], ws["lx"][sel], ws["eta"][sel], cost, tau)
    eps = ws["eps"][sel]
    t = ws["t"][sel]
    ok = inner_ok[sel]
    feas = Fv <= eps
    inband = feas & (Fv >= eps * (1 - rtol))
    lF = torch.log(Fv.clamp_min(1e-300))
    target = torch.log(eps * (1 - 0.5 * rtol)).clamp_min(-690.0)
    ws["F"][sel] = Fv
    ws["viol"][sel] = (lF - torch.log(eps.clamp_min(1e-300))).abs()
    # best feasible iterate (largest F <= eps): the certified fallback of an image that does not converge
    better = feas & (Fv > best["F"][idx[sel]])
    if bool(better.any()):
        bi = sel[better]
        gi = idx[bi]
        best["F"][gi] = Fv[better]
        best["f"][gi], best["g"][gi], best["z"][gi] = fa[bi], ga[bi], za[bi]
        best["t"][gi] = t[better]
    # bracket from converged evaluations only (F is monotone in psi at exact solutions)
    ws["t_hi"][sel] = torch.where(ok & feas, torch.minimum(ws["t_hi"][sel], t), ws["t_hi"][sel])
    ws["t_lo"][sel] = torch.where(ok & ~feas, torch.maximum(ws["t_lo"][sel], t), ws["t_lo"][sel])
    fin = torch.isfinite(Fv)
    # psi -> 0 still feasible, or psi at its cap: accept a feasible converged iterate
    edge = feas & (t <= _T_MIN + 1e-9)
    capped = (ws["nupd"][sel] >= max_upd) & feas
    done_s = ok & (inband | edge | capped)
    step_s = ~inband & fin & ~edge & (ws["nupd"][sel] < max_upd)
    if bool(step_s.any()):
        tp, lFp = ws["tp"][sel], ws["lFp"][sel]
        dtp = t - tp
        sec = -(lF - lFp) / dtp
        use = torch.isfinite(sec) & (dtp.abs() > 1e-9)
        slope = torch.where(use, sec.clamp(0.2, 5.0), ws["slope"][sel])
        dt_ = ((lF - target) / slope).clamp(-_DT_MAX, _DT_MAX)
        nt = (t + dt_).clamp(_T_MIN, _T_MAX)
        lo, hi = ws["t_lo"][sel], ws["t_hi"][sel]
        outside = ~((nt > lo) & (nt < hi))
        both = torch.isfinite(lo) & torch.isfinite(hi)
        nt = torch.where(outside & both, 0.5 * (lo + hi), nt)
        nt = torch.where(outside & ~both & torch.isfinite(lo), torch.maximum(nt, lo + 0.5), nt)
        nt = torch.where(outside & ~both & torch.isfinite(hi), torch.minimum(nt, hi - 0.5), nt)
        nt = torch.where(step_s, nt, t)
        ws["tp"][sel] = torch.where(step_s, t, tp)
        ws["lFp"][sel] = torch.where(step_s, lF, lFp)
        ws["slope"][sel] = slope
        ws["t"][sel] = nt
        ws["nupd"][sel] += step_s.long()
        moved[sel] = step_s & (nt != t)
    done[sel] = done_s
    return done, moved


@dataclass
class ProjectionResult:
    """Output of a projection; per-image tensors have shape ``(B,)``."""

    z: torch.Tensor  # projected images (B, C, H, W), in [0, 1]
    radius: torch.Tensor  # certified F(P, z) = transport + destruction + creation (raw mass units)
    transport: torch.Tensor  # <P, C>
    destroyed: torch.Tensor  # tau KL(P1 | x)
    created: torch.Tensor  # tau KL(P^T 1 | z)
    lower_bound: torch.Tensor  # certified lower bound on the exact UOT distance U_tau(x, z)
    psi: torch.Tensor  # budget multiplier (0 = inside the ball; nan in penalised mode)
    iterations: torch.Tensor  # total Sinkhorn sweeps
    gap: torch.Tensor  # certified duality gap of the last penalised solve
    residual: torch.Tensor
    transported_fraction: torch.Tensor  # off-diagonal share of the plan mass
    state: dict[str, torch.Tensor] = field(default_factory=dict)  # warm start (f, g, psi)
    converged: torch.Tensor | None = None  # (B,) bool: tolerance (and budget band) met within the caps


def _report(
    x: torch.Tensor,
    z: torch.Tensor,
    f: torch.Tensor,
    g: torch.Tensor,
    cost: LocalCost,
    eta: torch.Tensor,
    tau: float,
) -> dict[str, torch.Tensor]:
    t = uot_terms(f, g, x, z, cost, eta, tau)
    tr, kr, kc = t.transport.sum(1), tau * t.kl_rows.sum(1), tau * t.kl_cols.sum(1)
    # certified lower bound: (f, g~) with g~_j = min_i (C_ij - f_i) is dual feasible for the
    # unregularised problem: LB = tau <x, 1 - e^{-f/tau}> + tau <z, 1 - e^{-g~/tau}>.
    from ..ot.kernel import local_max

    g_ct = -local_max(f, cost)  # min_i (C_ij - f_i); +inf where no finite f in reach, -inf next to a hole row
    ef = torch.where(torch.isneginf(f), torch.zeros_like(f), 1 - torch.exp(-f / tau))
    eg = torch.where(torch.isposinf(g_ct), torch.ones_like(g_ct), 1 - torch.exp(-g_ct.clamp(max=1e30) / tau))
    zeg = torch.where(z > 0, z * eg, torch.zeros_like(z))  # z_j = 0 contributes nothing whatever g~_j
    lb = tau * (x * ef).sum(dim=(1, 2, 3)) + tau * zeg.sum(dim=(1, 2, 3))
    pm = t.plan_mass.sum(1)
    moved = (t.plan_mass - t.stay_mass).sum(1).clamp_min(0)
    frac = torch.where(pm > 0, moved / torch.where(pm > 0, pm, torch.ones_like(pm)), torch.zeros_like(pm))
    return {
        "radius": tr + kr + kc,
        "transport": tr,
        "destroyed": kr,
        "created": kc,
        "lower_bound": lb,
        "gap": t.gap.sum(1),
        "transported_fraction": frac,
    }


def uot_project(
    x: torch.Tensor,
    w: torch.Tensor,
    cost: LocalCost,
    eta: float,
    tau: float,
    gamma: float = 1.0,
    radius: float | torch.Tensor | None = None,
    *,
    tol: float | None = None,
    max_iter: int = 2000,
    radius_rtol: float = 1e-3,
    max_search: int = 40,
    state: dict[str, torch.Tensor] | None = None,
    relax: float = _RELAX,
    method: str = "interleaved",
) -> ProjectionResult:
    """Project ``w`` towards the clean image ``x`` in unbalanced OT (see module docstring).

    Args:
        x: clean images ``(B, C, H, W)`` in [0, 1] (raw pixel masses; nothing is normalised).
        w: the point to project (e.g. after a gradient step), same shape; may leave [0, 1].
        cost: :class:`LocalCost` in pixel units.
        eta: entropic regularisation (cost units, > 0). tau: marginal relaxation (> 0, finite).
        gamma: weight of the quadratic pull towards ``w`` (> 0).
        radius: ``None`` for the penalised projection (a); a float or per-image ``(B,)`` tensor ``eps``
            (raw units of F) for the budgeted projection (b).
        tol: inner residual tolerance (default 1e-5 float32 / 1e-10 float64).
        radius_rtol: the budgeted search stops when ``eps (1 - radius_rtol) <= F <= eps``.
        state: warm start from a previous call's ``result.state`` (same batch).
        relax: over-relaxation ``omega`` in [1, 2) of the inner sweeps (1 = plain block ascent; the fixed
            point does not depend on it, and a diverging image is damped back towards 1).
        max_iter: cap on sweeps (penalised); the budgeted solve may use ``3 * max_iter`` sweeps in all.
        max_search: cap on updates of the budget multiplier psi (``method="search"``: on penalised solves).
        method: budgeted mode only: ``"interleaved"`` (psi updated between sweeps: one solve) or ``"search"``
            (a bracketed secant search on psi, one penalised solve per trial psi; the reference).
        Every loop is capped; images that hit a cap are flagged ``converged=False`` and a warning is issued.
    Returns:
        :class:`ProjectionResult`; ``.radius`` is the certified ``F(P, z)`` per image.
    """
    eta, tau, gamma, tol, max_iter, warm = _check_project(
        x, w, cost, eta, tau, gamma, tol, max_iter, radius_rtol, max_search, state, relax
    )
    # kappa = tau/(tau+eta) so close to 1 that the sweeps cannot contract within any budget (a sweep
    # contracts by kappa^2): cap at two progress checkpoints; the result is flagged unconverged
    if 2 * eta / (tau + eta) * max_iter < 1e-3:
        max_iter = min(max_iter, 2 * CHECK)
    B = x.shape[0]
    lx = torch.log(x)
    st = state or {}
    f = warm["f"].clone() if warm["f"] is not None else torch.zeros_like(x)
    g = warm["g"].clone() if warm["g"] is not None else torch.zeros_like(x)
    if radius is None:
        return _penalised(x, w, lx, cost, eta, tau, gamma, tol, max_iter, f, g, relax)
    eps = torch.as_tensor(radius, dtype=x.dtype, device=x.device).reshape(-1)
    eps = eps.expand(B).clone() if eps.numel() == 1 else eps.clone()
    if eps.numel() != B:
        raise ValueError(f"radius must be a scalar or have one entry per image ({B}), got {eps.numel()}")
    if not bool(torch.isfinite(eps).all()) or bool((eps < 0).any()):
        raise ValueError("radius must be finite and >= 0")
    if method not in ("interleaved", "search"):
        raise ValueError(f"method must be 'interleaved' or 'search', got {method!r}")
    args = (x, w, lx, cost, eta, tau, gamma, eps, tol, max_iter, radius_rtol, max_search, f, g, st, relax, method)
    return _budgeted(*args)


def _check_project(
    x: torch.Tensor,
    w: torch.Tensor,
    cost: LocalCost,
    eta: float,
    tau: float,
    gamma: float,
    tol: float | None,
    max_iter: int,
    radius_rtol: float,
    max_search: int,
    state: dict[str, torch.Tensor] | None,
    relax: float,
) -> tuple[float, float, float, float, int, dict[str, torch.Tensor | None]]:
    """:func:`uot_project`'s argument checks, in order (clear errors naming the argument). Returns the checked
    ``eta, tau, gamma, tol`` (default 1e-5 float32 / 1e-10 float64), ``max_iter`` and the warm-start
    potentials ``{"f": ..., "g": ...}`` (``None`` where absent)."""
    check_step_point(x, w)
    check_cost(cost)
    eta = check_positive(eta, "eta")
    tau = check_positive(tau, "tau")
    if not (isinstance(relax, (int, float)) and 1.0 <= relax < 2.0):
        raise ValueError(f"relax must be in [1, 2), got {relax!r}")
    gamma = check_positive(gamma, "gamma")
    if tol is None:
        tol = 1e-5 if x.dtype == torch.float32 else 1e-10
    tol = check_positive(tol, "tol")
    max_iter = check_count(max_iter, "max_iter")
    _check_search(radius_rtol, max_search)
    if state is not None and not isinstance(state, dict):
        raise TypeError(f"state must be a dict from a previous result's .state, got {type(state).__name__}")
    warm = {k: check_potential((state or {}).get(k), x, f"state[{k!r}]") for k in ("f", "g")}
    if state is not None and "psi" in state:
        psi_st = state["psi"]
        if not isinstance(psi_st, torch.Tensor) or psi_st.reshape(-1).shape[0] != x.shape[0]:
            raise ValueError(f"state['psi'] must have one entry per image ({x.shape[0]}), got {psi_st!r:.60}")
    return eta, tau, gamma, tol, max_iter, warm


def _penalised(
    x: torch.Tensor,
    w: torch.Tensor,
    lx: torch.Tensor,
    cost: LocalCost,
    eta: float,
    tau: float,
    gamma: float,
    tol: float,
    max_iter: int,
    f: torch.Tensor,
    g: torch.Tensor,
    relax: float,
) -> ProjectionResult:
    """The penalised projection (a) from the potentials ``f``, ``g`` and ``z = clip(w, 0, 1)``, with its report."""
    B = x.shape[0]
    z = w.clamp(0, 1).clone()
    eta_b = _per_image(eta, x)
    gam_b = _per_image(gamma, x)
    if eta_b.shape[0] != B:
        eta_b, gam_b = eta_b.expand(B, 1, 1, 1), gam_b.expand(B, 1, 1, 1)
    f, g, z, it, res, conv = _penalised_sweeps(lx, w, cost, eta_b, tau, gam_b, tol, max_iter, f, g, z, relax)
    rep = _report(x, z, f, g, cost, eta_b, tau)
    psi = torch.full((B,), math.nan, dtype=x.dtype, device=x.device)
    _warn_unconverged(conv, max_iter, eta, tau, gamma, w, "sweeps", stacklevel=4)  # the caller of uot_project
    return ProjectionResult(z=z, psi=psi, iterations=it, residual=res, state={"f": f, "g": g}, converged=conv, **rep)


def _check_search(radius_rtol: object, max_search: object) -> None:
    """The budgeted search's tolerance (in [0, 1)) and cap on multiplier updates (>= 1)."""
    ok = isinstance(radius_rtol, (int, float)) and not isinstance(radius_rtol, bool)
    if not (ok and math.isfinite(radius_rtol) and 0 <= radius_rtol < 1):
        raise ValueError(f"radius_rtol must be a finite number in [0, 1), got {radius_rtol!r}")
    check_count(max_search, "max_search")


_BUDGET_SWEEPS = 3  # the interleaved budgeted solve may use this many times max_iter sweeps in all


def _warn_unconverged(conv, max_iter, eta, tau, gamma, w, what, stacklevel: int = 3) -> None:
    """One warning naming the parameter most likely at fault when some images hit a cap."""
    bad = int((~conv).sum())
    if bad == 0:
        return
    kappa = tau / (tau + eta)
    far = float((w - w.clamp(0, 1)).abs().max())
    if 1 - kappa < 1e-6:
        why = f"eta={eta:g} is tiny relative to tau={tau:g} (kappa = tau/(tau+eta) = 1 - {1 - kappa:.1e}): raise eta"
    elif gamma / tau > 1e6 or gamma / tau < 1e-6:
        why = f"gamma={gamma:g} is extreme relative to tau={tau:g}"
    elif far > 1.0:
        why = "w lies far outside [0, 1]"
    else:
        why = "raise max_iter or loosen tol"
    # the text does not change from call to call, so Python shows it once per call site (not once per batch)
    warnings.warn(
        f"uot_project: images did not converge within max_iter={max_iter} ({what}); {why}. Their result is the "
        "last certified iterate (the result's converged flag marks them).",
        RuntimeWarning,
        stacklevel=stacklevel,
    )


def _budgeted(x, w, lx, cost, eta, tau, gamma, eps, tol, max_iter, rtol, max_search, f, g, st, relax, method):
    B = x.shape[0]
    dev, dt = x.device, x.dtype
    total_it = torch.zeros(B, dtype=torch.long, device=dev)
    conv_out = torch.ones(B, dtype=torch.bool, device=dev)
    z_out = w.clamp(0, 1).clone()
    f_out, g_out = f.clone(), g.clone()
    psi_out = torch.zeros(B, dtype=dt, device=dev)
    res_out = torch.zeros(B, dtype=dt, device=dev)
    keys = ("radius", "transport", "destroyed", "created", "lower_bound", "gap", "transported_fraction")
    rep_all = {k: torch.zeros(B, dtype=dt, device=dev) for k in keys}
    # radius 0: the ball is {x} (U_tau(x, z) = 0 iff z = x), so the projection is x itself
    zero = eps <= 0
    if bool(zero.any()):
        z_out[zero] = x[zero]
        psi_out[zero] = math.inf
        f_out[zero] = torch.where(torch.isneginf(lx[zero]), lx[zero], torch.zeros_like(lx[zero]))
        g_out[zero] = f_out[zero]
    # inside-ball rule: w in the box and F(P_eta(x, w), w) <= eps  =>  z = w exactly (any plan certifies F).
    in_box = ((w >= 0) & (w <= 1)).flatten(1).all(1) & ~zero
    inside = torch.zeros(B, dtype=torch.bool, device=dev)
    if bool(in_box.any()):
        idx = in_box.nonzero().squeeze(1)
        s = uot_sinkhorn(x[idx], w[idx], cost, eta, tau, tol=tol, max_iter=max_iter)  # never warns
        rep = _report(x[idx], w[idx], s.f, s.g, cost, _per_image(eta, x[idx]), tau)
        ok = rep["radius"] <= eps[idx]
        ii = idx[ok]
        inside[ii] = True
        total_it[idx] += s.iterations
        z_out[ii] = w[ii]
        f_out[ii], g_out[ii] = s.f[ok], s.g[ok]
        for k, v in rep.items():
            rep_all[k][ii] = v[ok]
    out_idx = (~inside & ~zero).nonzero().squeeze(1)
    if out_idx.numel():
        psi0 = st["psi"][out_idx] if "psi" in st else None
        sub = (x[out_idx], w[out_idx], lx[out_idx], cost, eta, tau, gamma, eps[out_idx], tol, max_iter, rtol)
        if method == "search":
            r = _psi_search(*sub, max_search, f[out_idx], g[out_idx], psi0, relax)
        else:
            r = _interleaved(*sub, max_search, f[out_idx], g[out_idx], psi0, relax)
        z_out[out_idx] = r["z"]
        f_out[out_idx], g_out[out_idx] = r["f"], r["g"]
        psi_out[out_idx] = r["psi"]
        res_out[out_idx] = r["residual"]
        total_it[out_idx] += r["iterations"]
        conv_out[out_idx] = r["converged"]
        for k in rep_all:
            rep_all[k][out_idx] = r[k]
    _warn_unconverged(conv_out, max_iter, eta, tau, gamma, w, "budgeted projection")
    return ProjectionResult(
        z=z_out,
        psi=psi_out,
        iterations=total_it,
        residual=res_out,
        state={"f": f_out, "g": g_out, "psi": psi_out},
        converged=conv_out,
        **rep_all,
    )


def _interleaved(x, w, lx, cost, eta, tau, gamma, eps, tol, max_iter, rtol, max_upd, f, g, psi0, relax):
    """The budgeted projection as one solve: psi moves between the sweeps (see ``_penalised_sweeps``)."""
    B = x.shape[0]
    dev, dt = x.device, x.dtype
    t0 = torch.zeros(B, dtype=dt, device=dev) if psi0 is None else torch.log(psi0.to(dt))
    t0 = torch.where(torch.isfinite(t0), t0, torch.zeros_like(t0)).clamp(_T_MIN, _T_MAX)
    budget = {"eps": eps, "t": t0, "rtol": rtol, "max_updates": max(int(max_upd), 1) * 4}
    eta_b = torch.full((B, 1, 1, 1), float(eta), dtype=dt, device=dev)
    gam_b = torch.full((B, 1, 1, 1), float(gamma), dtype=dt, device=dev)
    z = w.clamp(0, 1).clone()
    f, g, z, it, res, conv = _penalised_sweeps(
        lx, w, cost, eta_b, tau, gam_b, tol, _BUDGET_SWEEPS * max_iter, f.clone(), g.clone(), z, relax, budget
    )
    psi = torch.exp(budget["t_out"])
    rep = _report(x, z, f, g, cost, (eta / psi).reshape(-1, 1, 1, 1), tau)
    # never feasible within the caps: fall back to x itself (radius 0), which is always feasible
    never = ~(rep["radius"] <= eps)
    out = dict(rep, z=z, f=f, g=g, psi=psi, residual=res, iterations=it, converged=conv & ~never)
    if bool(never.any()):
        out["z"][never] = x[never]
        for k in rep:
            out[k][never] = 0.0
        out["psi"][never] = math.inf
    return out


def _psi_search(x, w, lx, cost, eta, tau, gamma, eps, tol, max_iter, rtol, max_search, f, g, psi0, relax):
    """Per-image root of h(t) = F(z_t) - eps in t = log psi (h non-increasing), bracketed secant."""
    B = x.shape[0]
    dev, dt = x.device, x.dtype
    sr = _search_records(B, dt, dev, psi0)
    t, have, done = sr["t"], sr["have"], sr["done"]
    z = w.clamp(0, 1).clone()
    iters = torch.zeros(B, dtype=torch.long, device=dev)
    best: dict[str, torch.Tensor] = {}
    for _ in range(max_search):
        act = (~done).nonzero().squeeze(1)
        if act.numel() == 0:
            break
        psi = torch.exp(t[act])
        eta_b = (eta / psi).reshape(-1, 1, 1, 1)
        gam_b = (gamma / psi).reshape(-1, 1, 1, 1)
        fa, ga, za = f[act].clone(), g[act].clone(), z[act].clone()
        fa, ga, za, it, res, _ = _penalised_sweeps(
            lx[act], w[act], cost, eta_b, tau, gam_b, tol, max_iter, fa, ga, za, relax
        )
        f[act], g[act], z[act] = fa, ga, za
        iters[act] += it
        rep = _report(x[act], za, fa, ga, cost, eta_b, tau)
        h = rep["radius"] - eps[act]
        feas = h <= 0
        # record the best feasible point (largest F <= eps)
        upd = feas & (~have[act] | (rep["radius"] > best["radius"][act] if best else True))
        if not best:
            best = {k: torch.zeros(B, dtype=dt, device=dev) for k in rep}
            best.update(z=z.clone(), f=f.clone(), g=g.clone(), psi=torch.zeros(B, dtype=dt, device=dev))
            best["residual"] = torch.zeros(B, dtype=dt, device=dev)
        ui = act[upd]
        for k, v in rep.items():
            best[k][ui] = v[upd]
        best["z"][ui], best["f"][ui], best["g"][ui] = za[upd], fa[upd], ga[upd]
        best["psi"][ui] = psi[upd]
        best["residual"][ui] = res[upd]
        have[ui] = True
        _search_step(sr, act, h, feas, rtol * eps[act])
    # images never feasible within the search: fall back to x itself (radius 0), which is always feasible
    never = ~have
    if bool(never.any()):
        ni = never.nonzero().squeeze(1)
        best["z"][ni] = x[ni]
        for k in ("radius", "transport", "destroyed", "created", "lower_bound", "gap", "transported_fraction"):
            best[k][ni] = 0.0
        best["psi"][ni] = math.inf
    best["iterations"] = iters
    best["converged"] = done & have
    return best


def _search_records(B: int, dt: torch.dtype, dev: torch.device, psi0: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """Per-image state of :func:`_psi_search`: ``t = log psi`` (from ``psi0``, else 0), the bracket
    ``[t_lo, t_hi]`` with ``h(t_lo) > 0 >= h(t_hi)`` and its ``h`` values, the Illinois side, and the flags
    "a feasible point was seen" and "done"."""
    t = torch.zeros(B, dtype=dt, device=dev) if psi0 is None else torch.log(psi0.clamp_min(1e-12))
    return {
        "t": torch.where(torch.isfinite(t), t, torch.zeros_like(t)),
        "t_lo": torch.full((B,), -math.inf, dtype=dt, device=dev),  # h(t_lo) > 0 (infeasible side)
        "t_hi": torch.full((B,), math.inf, dtype=dt, device=dev),  # h(t_hi) <= 0 (feasible side)
        "h_lo": torch.full((B,), math.nan, dtype=dt, device=dev),
        "h_hi": torch.full((B,), math.nan, dtype=dt, device=dev),
        "have": torch.zeros(B, dtype=torch.bool, device=dev),
        "done": torch.zeros(B, dtype=torch.bool, device=dev),
        "side": torch.zeros(B, dtype=torch.long, device=dev),  # Illinois bookkeeping
    }


def _search_step(
    sr: dict[str, torch.Tensor], act: torch.Tensor, h: torch.Tensor, feas: torch.Tensor, band: torch.Tensor
) -> None:
    """Update the bracket of the active images ``act`` with ``h = F - eps`` at their ``t`` (in place), stop
    those within ``-band <= h <= 0`` or with a bracket below 1e-7, and move ``t``: steps of 1.5 until
    bracketed, then Illinois regula falsi (the secant ``t_lo - h_lo (t_hi - t_lo) / (h_hi - h_lo)``, bisection
    when the same side is updated twice in a row)."""
    t, t_lo, t_hi, h_lo, h_hi, side = sr["t"], sr["t_lo"], sr["t_hi"], sr["h_lo"], sr["h_hi"], sr["side"]
    ta = t[act]
    t_hi[act] = torch.where(feas, torch.minimum(t_hi[act], ta), t_hi[act])
    h_hi[act] = torch.where(feas & (ta <= t_hi[act]), h, h_hi[act])
    t_lo[act] = torch.where(~feas, torch.maximum(t_lo[act], ta), t_lo[act])
    h_lo[act] = torch.where(~feas & (ta >= t_lo[act]), h, h_lo[act])
    close = feas & (h >= -band)
    # also stop when the bracket is tiny
    tiny = torch.isfinite(t_lo[act]) & torch.isfinite(t_hi[act]) & ((t_hi[act] - t_lo[act]) < 1e-7)
    sr["done"][act[close | tiny]] = True
    # next t: expand until bracketed, then Illinois regula falsi in t
    lo, hi = t_lo[act], t_hi[act]
    hl, hh = h_lo[act], h_hi[act]
    nxt = torch.where(torch.isinf(hi), ta + 1.5, torch.where(torch.isinf(lo), ta - 1.5, ta))
    both = torch.isfinite(lo) & torch.isfinite(hi)
    sec = lo - hl * (hi - lo) / (hh - hl)
    sec_ok = torch.isfinite(sec) & (sec > lo) & (sec < hi)
    # Illinois: alternate with bisection when the same side keeps being updated
    s = side[act]
    new_side = torch.where(feas, torch.ones_like(s), -torch.ones_like(s))
    repeat = new_side == s
    side[act] = new_side
    mid = 0.5 * (lo + hi)
    cand = torch.where(sec_ok & ~repeat, sec, mid)
    t[act] = torch.where(both, cand, nxt)


class UOTProjection:
    """Callable projection for the attack loop (budgeted UOT ball, warm-started across PGD steps).

    ``radius`` handed to ``__call__`` is per image in *normalised* units when ``normalize=True``:
    the constraint used is ``F(P, z) <= radius * ||x||_1`` (F is additive in mass, so this makes the radius
    comparable across images and with the balanced attacks' normalised radius when tau is large).
    """

    def __init__(
        self,
        cost: LocalCost,
        eta: float,
        tau: float,
        gamma: float = 1.0,
        *,
        penalised: bool = False,
        normalize: bool = True,
        tol: float | None = None,
        max_iter: int = 500,
        radius_rtol: float = 1e-2,
        max_search: int = 30,
    ) -> None:
        check_cost(cost)
        check_positive(eta, "eta")
        check_positive(tau, "tau")
        check_positive(gamma, "gamma")
        if tol is not None:
            check_positive(tol, "tol")
        check_count(max_iter, "max_iter")
        _check_search(radius_rtol, max_search)
        self.cost, self.eta, self.tau, self.gamma = cost, eta, tau, gamma
        self.penalised, self.normalize = penalised, normalize
        self.tol, self.max_iter, self.radius_rtol, self.max_search = tol, max_iter, radius_rtol, max_search

    def __call__(
        self, x: torch.Tensor, w: torch.Tensor, radius: torch.Tensor, state: dict[str, torch.Tensor] | None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        mass = x.flatten(1).sum(1)
        eps = None if self.penalised else (radius * mass if self.normalize else radius)
        r = uot_project(
            x,
            w,
            self.cost,
            self.eta,
            self.tau,
            self.gamma,
            eps,
            tol=self.tol,
            max_iter=self.max_iter,
            radius_rtol=self.radius_rtol,
            max_search=self.max_search,
            state=state,
        )
        scale = mass.clamp_min(1e-12) if self.normalize else torch.ones_like(mass)
        info = {
            "certified_radius": r.radius / scale,
            "transported_fraction": r.transported_fraction,
            "inner_iterations": r.iterations.to(x.dtype),
            "psi": r.psi,
        }
        if r.converged is not None:
            info["inner_converged"] = r.converged.to(x.dtype)
        return r.z, r.state, info
