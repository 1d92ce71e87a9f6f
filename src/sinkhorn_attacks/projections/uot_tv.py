"""The budgeted UOT projection with total-variation marginals: the thesis's ball at the yardstick's price.

Problem (per image, channels summed)::

    min_{z in [0,1]^n, P >= 0}  gamma/2 ||z - w||^2 + eta H(P)
        s.t.  F(P, z) = <P, C> + tau ||P1 - x||_1 + tau ||P^T 1 - z||_1 <= eps

(:mod:`.uot` with ``tau KL`` replaced by ``tau ||.||_1``). With ``tau`` equal to the yardstick's price, ``F`` of
*any* plan bounds the yardstick from above: ``D(x, z) <= F(P, z)`` (rows or columns a plan over-fills can be
trimmed without raising ``F``, and a plan within the marginals costs exactly the yardstick's objective), so
the certificate ``F(P, z) <= eps`` of the returned image is a yardstick certificate.

For a multiplier ``psi > 0`` of the budget the problem is the penalised one at ``(eta/psi, gamma/psi)``::

    min_{z in [0,1]} gamma/2 ||z - w||^2 + UOT^TV_eta(x, z)
    dual: max_{|f|, |g| <= tau}  <f, x> + min_z [gamma/2 ||z - w||^2 + <g, z>] - eta sum_ij e^{(f_i + g_j - C_ij)/eta}

solved by exact block ascent: the row block is the clipped c-transform
``f = clip(eta (log x - LSE_C[g]), -tau, tau)`` (:func:`~sinkhorn_attacks.ot.sinkhorn.marginal_prox`), and per
pixel the ``(g, z)`` block solves ``clip(w - g/gamma, 0, 1) = e^{g/eta + LSE_C[f]}`` for ``g`` in
``[-tau, tau]`` (a monotone 1-D equation: safeguarded Newton on its logarithm), then ``z = clip(w - g/gamma, 0,
1)``. The sweeps run on the library's loop (:func:`~sinkhorn_attacks.ot.engine.run_sweeps`) and stop when the
next row step would change ``f`` by at most ``tol * eta``. ``psi`` is found per image by a bracketed secant
search on ``log F`` against ``log psi`` (warm-started from the previous call), and the returned ``z`` is the
feasible iterate with the largest ``F <= eps``; an image never found feasible returns ``x`` (``F = 0``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from ..ot.checks import check_cost, check_count, check_positive, check_step_point
from ..ot.cost import LocalCost
from ..ot.engine import SweepOptions, relaxed, run_sweeps
from ..ot.kernel import local_lse
from ..ot.sinkhorn import marginal_prox
from .sinkhorn import wright_omega

__all__ = ["uot_tv_project", "uot_tv_functional", "UOTTVProjection", "TVProjectionResult"]

_T_MIN, _T_MAX = math.log(1e-8), math.log(1e8)  # range of log psi
_T_STEP = 1.5  # change of log psi while the root is not bracketed


def _solve_gz(
    q: torch.Tensor, w: torch.Tensor, eta: torch.Tensor, tau: float, gamma: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per pixel: the root ``g`` of ``clip(w - g/gamma, 0, 1) = e^{g/eta + q}``, clipped to ``[-tau, tau]``; and ``z``.

    Both sides are monotone in ``g`` (left falling, right rising), so the root is unique. Where the right side
    reaches 1 before the left leaves 1 (``w + eta q / gamma >= 1``) the root is ``g = -eta q`` (``z = 1``);
    elsewhere ``z`` is inside ``(0, 1)`` and ``z = w - g/gamma`` with ``lam z e^{lam z} = lam e^{lam w + q}``,
    ``lam = gamma / eta``: ``z = omega(log lam + lam w + q) / lam`` (Wright omega, never forming the
    exponential). ``z`` is then the minimiser ``clip(w - g/gamma, 0, 1)`` at the clipped ``g``.
    """
    g1 = -eta * q
    lam = gamma / eta
    z_in = wright_omega(torch.log(lam) + lam * w + q) / lam
    g = torch.where(w - g1 / gamma >= 1, g1, gamma * (w - z_in)).clamp(-tau, tau)
    return g, (w - g / gamma).clamp(0, 1)


def uot_tv_functional(
    f: torch.Tensor, g: torch.Tensor, x: torch.Tensor, z: torch.Tensor, cost: LocalCost, eta, tau: float
) -> torch.Tensor:
    """``F(P, z) = <P, C> + tau ||P1 - x||_1 + tau ||P^T 1 - z||_1`` of ``P = e^{(f + g - C)/eta}``, (B,).

    Computed in float64 (at small ``eta`` the exponents ``f / eta`` and ``LSE_C[g]`` nearly cancel).
    """
    f, g, x, z = (t.to(torch.float64) for t in (f, g, x, z))
    if isinstance(eta, torch.Tensor):
        eta = eta.to(torch.float64)
    lg, lf = local_lse(g, cost, eta), local_lse(f, cost, eta)
    a, b = torch.exp(f / eta + lg), torch.exp(g / eta + lf)
    transport = torch.exp(f / eta + local_lse(g, cost, eta, power=1))
    return (transport + tau * (a - x).abs() + tau * (b - z).abs()).flatten(1).sum(1)


def _penalised(x, lx, w, cost, eta, tau, gamma, f, g, tol, max_iter, relax):
    """Block ascent of the penalised problem at per-image ``eta``, ``gamma`` (B, 1, 1, 1); returns f, g, z.

    Over-relaxed like the KL projection (``f <- f + omega (f~ - f)``, the same for ``g``, both kept in
    ``[-tau, tau]``), with the engine's guards; the residual is the sweep's largest change of ``f / eta``.
    """
    f0 = marginal_prox(lx, x, local_lse(g, cost, eta), eta, tau, "tv")
    g0 = g.clone()
    state = {"f": f0.clone(), "g": g.clone(), "z": w.clamp(0, 1)}

    def sweep(ws: dict[str, torch.Tensor], it: int) -> torch.Tensor:
        e, om = ws["eta"], ws["omega"]
        q = local_lse(ws["f"], cost, e)
        gn, za = _solve_gz(q, ws["w"], e, tau, ws["gamma"])
        ga = relaxed(ws["g"], gn, om).clamp(-tau, tau)
        fn = relaxed(ws["f"], marginal_prox(ws["lx"], ws["x"], local_lse(ga, cost, e), e, tau, "tv"), om)
        fn = fn.clamp(-tau, tau)
        res = torch.nan_to_num((fn - ws["f"]).abs() / e, nan=math.inf).amax(dim=(1, 2, 3))
        ws["f"], ws["g"], ws["z"] = fn, ga, za
        return res

    def restart(ws, bad, idx) -> None:  # non-finite iterate: back to the starting potentials
        ws["f"][bad], ws["g"][bad] = f0[idx[bad]], g0[idx[bad]]

    extra = {"x": x, "lx": lx, "w": w, "eta": eta, "gamma": gamma}
    opts = SweepOptions(tol, max_iter, relax)
    log = run_sweeps(state, sweep, opts, out=("f", "g", "z"), extra=extra, guarded=True, restart=restart)
    return state["f"], state["g"], state["z"], log.iterations, log.converged


@dataclass
class TVProjectionResult:
    """Output of :func:`uot_tv_project`; per-image tensors have shape ``(B,)``."""

    z: torch.Tensor  # projected images (B, C, H, W) in [0, 1]
    radius: torch.Tensor  # certified F(P, z) (raw units): an upper bound on the yardstick when tau = price
    psi: torch.Tensor  # budget multiplier of the returned iterate (inf: fell back to x)
    iterations: torch.Tensor  # sweeps over all penalised solves
    converged: torch.Tensor  # found F in [eps (1 - radius_rtol), eps] (or feasible at the smallest psi)
    state: dict[str, torch.Tensor] = field(default_factory=dict)  # warm start: f, g, psi


def uot_tv_project(
    x: torch.Tensor,
    w: torch.Tensor,
    cost: LocalCost,
    eta: float,
    tau: float,
    radius: float | torch.Tensor,
    gamma: float = 1.0,
    *,
    tol: float = 1e-3,
    max_iter: int = 300,
    radius_rtol: float = 2e-2,
    max_search: int = 12,
    relax: float = 1.0,
    state: dict[str, torch.Tensor] | None = None,
) -> TVProjectionResult:
    """Project ``w`` onto the TV-marginal UOT ball ``{z in [0,1]: F(P, z) <= radius}`` around ``x``.

    Args:
        x: clean images (B, C, H, W) in [0, 1]; w: the point to project, same shape (may leave [0, 1]).
        cost: local ground cost; eta: entropic temperature (> 0); tau: price of destroyed / created mass (> 0).
        radius: raw budget ``eps`` (scalar or (B,), >= 0).
        gamma: weight of the pull towards ``w``.
        tol: sweeps stop when the next row step changes ``f / eta`` by at most this.
        max_iter: cap on sweeps of one penalised solve. radius_rtol: accepted band ``[eps (1 - rtol), eps]``.
        max_search: cap on trial multipliers. state: warm start (``f``, ``g``, ``psi``) from a previous call.
    Returns:
        :class:`TVProjectionResult`; ``.radius`` is the certified ``F`` of the returned image.
    """
    eta, tau, gamma, tol, max_iter, max_search, eps = _check_tv_project(
        x, w, cost, eta, tau, radius, gamma, tol, max_iter, radius_rtol, max_search
    )
    B, dev, dt = x.shape[0], x.device, x.dtype
    st = state or {}
    f = st["f"].clone() if "f" in st else torch.zeros_like(x)
    g = st["g"].clone() if "g" in st else torch.zeros_like(x)
    f, g = f.clamp(-tau, tau), g.clamp(-tau, tau)
    t = torch.log(st["psi"].to(dt)) if "psi" in st else torch.zeros(B, dtype=dt, device=dev)
    t = torch.where(torch.isfinite(t), t, torch.zeros_like(t)).clamp(_T_MIN, _T_MAX)
    lx = torch.log(x)
    sr = _tv_search_records(B, dt, dev)
    best_F = torch.full((B,), -math.inf, dtype=dt, device=dev)
    best_z, best_f, best_g, best_t = x.clone(), f.clone(), g.clone(), t.clone()
    iters = torch.zeros(B, dtype=torch.long, device=dev)
    done = eps <= 0  # radius 0: the ball is {x}
    conv = done.clone()
    target = torch.log(eps.clamp_min(1e-300) * (1 - 0.5 * radius_rtol))
    for _ in range(max_search):
        act = (~done).nonzero().squeeze(1)
        if act.numel() == 0:
            break
        ta = t[act]
        psi = torch.exp(ta).reshape(-1, 1, 1, 1)
        e, gm = eta / psi, gamma / psi
        fa, ga, za, it, _ = _penalised(x[act], lx[act], w[act], cost, e, tau, gm, f[act], g[act], tol, max_iter, relax)
        f[act], g[act] = fa, ga
        iters[act] += it
        Fv = uot_tv_functional(fa, ga, x[act], za, cost, e, tau).to(dt)
        ea = eps[act]
        feas = Fv <= ea
        better = feas & (Fv > best_F[act])
        bi = act[better]
        best_F[bi], best_z[bi], best_f[bi], best_g[bi], best_t[bi] = (
            Fv[better], za[better], fa[better], ga[better], ta[better])  # fmt: skip
        ok = feas & ((Fv >= ea * (1 - radius_rtol)) | (ta <= _T_MIN + 1e-9))
        done[act[ok]] = True
        conv[act[ok]] = True
        _tv_search_step(sr, t, done, act, torch.log(Fv.clamp_min(1e-300)), feas, target[act])
    return _tv_result(x, eps, best_F, best_z, best_f, best_g, best_t, iters, conv)


def _check_tv_project(
    x: torch.Tensor,
    w: torch.Tensor,
    cost: LocalCost,
    eta: float,
    tau: float,
    radius: float | torch.Tensor,
    gamma: float,
    tol: float,
    max_iter: int,
    radius_rtol: float,
    max_search: int,
) -> tuple[float, float, float, float, int, int, torch.Tensor]:
    """:func:`uot_tv_project`'s argument checks, in order; returns the checked ``eta, tau, gamma, tol,
    max_iter, max_search`` and the per-image budgets ``eps`` (B,)."""
    check_step_point(x, w)
    check_cost(cost)
    eta, tau, gamma = check_positive(eta, "eta"), check_positive(tau, "tau"), check_positive(gamma, "gamma")
    tol = check_positive(tol, "tol")
    max_iter, max_search = check_count(max_iter, "max_iter"), check_count(max_search, "max_search")
    if not (0 <= radius_rtol < 1):
        raise ValueError(f"radius_rtol must be in [0, 1), got {radius_rtol!r}")
    B, dev, dt = x.shape[0], x.device, x.dtype
    eps = torch.as_tensor(radius, dtype=dt, device=dev).reshape(-1)
    eps = (eps.expand(B) if eps.numel() == 1 else eps).clone()
    if eps.numel() != B or not bool(torch.isfinite(eps).all()) or bool((eps < 0).any()):
        raise ValueError(f"radius must be finite, >= 0, a scalar or one per image ({B})")
    return eta, tau, gamma, tol, max_iter, max_search, eps


def _tv_search_records(B: int, dt: torch.dtype, dev: torch.device) -> dict[str, torch.Tensor]:
    """The bracket ``[t_lo, t_hi]`` of ``t = log psi`` (infeasible at ``t_lo``, feasible at ``t_hi``) and
    ``log F`` at its ends, per image."""
    return {
        "t_lo": torch.full((B,), -math.inf, dtype=dt, device=dev),  # infeasible there
        "t_hi": torch.full((B,), math.inf, dtype=dt, device=dev),  # feasible there
        "lF_lo": torch.full((B,), math.nan, dtype=dt, device=dev),
        "lF_hi": torch.full((B,), math.nan, dtype=dt, device=dev),
    }


def _tv_search_step(
    sr: dict[str, torch.Tensor],
    t: torch.Tensor,
    done: torch.Tensor,
    act: torch.Tensor,
    lF: torch.Tensor,
    feas: torch.Tensor,
    target: torch.Tensor,
) -> None:
    """Update the bracket of the active images ``act`` with ``log F`` at their ``t`` and move ``t`` (in place)::

        bracketed:  t <- secant of log F on [t_lo, t_hi] towards target (kept 5% off the ends, else the midpoint)
        otherwise:  t <- t + clip(log F - target, -_T_STEP, _T_STEP)          (F ~ 1/psi)

    Images with a bracket narrower than 1e-6 are done.
    """
    t_lo, t_hi, lF_lo, lF_hi = sr["t_lo"], sr["t_hi"], sr["lF_lo"], sr["lF_hi"]
    ta = t[act]
    # F of partly converged solves is used as well: it certifies its own image, and insisting on
    # converged solves stalls the search where the sweeps are slow (small eta)
    newhi = feas & (ta < t_hi[act])
    newlo = ~feas & (ta > t_lo[act])
    t_hi[act] = torch.where(newhi, ta, t_hi[act])
    lF_hi[act] = torch.where(newhi, lF, lF_hi[act])
    t_lo[act] = torch.where(newlo, ta, t_lo[act])
    lF_lo[act] = torch.where(newlo, lF, lF_lo[act])
    lo, hi = t_lo[act], t_hi[act]
    both = torch.isfinite(lo) & torch.isfinite(hi)
    # bracketed: secant on log F (kept off the ends), else a step of log F ~ -log psi, bounded
    sec = lo + (target - lF_lo[act]) * (hi - lo) / (lF_hi[act] - lF_lo[act])
    inner = torch.isfinite(sec) & (sec > lo + 0.05 * (hi - lo)) & (sec < hi - 0.05 * (hi - lo))
    sec = torch.where(inner, sec, 0.5 * (lo + hi))
    free = (ta + (lF - target).clamp(-_T_STEP, _T_STEP)).clamp(_T_MIN, _T_MAX)
    t[act] = torch.where(both, sec, free)
    done[act[both & ((hi - lo) < 1e-6)]] = True


def _tv_result(
    x: torch.Tensor,
    eps: torch.Tensor,
    best_F: torch.Tensor,
    best_z: torch.Tensor,
    best_f: torch.Tensor,
    best_g: torch.Tensor,
    best_t: torch.Tensor,
    iters: torch.Tensor,
    conv: torch.Tensor,
) -> TVProjectionResult:
    """The result from the best feasible iterates; an image never feasible falls back to ``x`` (``F = 0``,
    ``psi = inf``, as for a zero radius)."""
    never = ~torch.isfinite(best_F)
    best_F = torch.where(never, torch.zeros_like(best_F), best_F)
    best_z[never] = x[never]
    psi_out = torch.where(never | (eps <= 0), torch.full_like(best_t, math.inf), torch.exp(best_t))
    return TVProjectionResult(
        z=best_z,
        radius=best_F,
        psi=psi_out,
        iterations=iters,
        converged=conv,
        state={
            "f": best_f,
            "g": best_g,
            "psi": torch.where(torch.isfinite(psi_out), psi_out, torch.ones_like(psi_out)),
        },
    )


class UOTTVProjection:
    """Callable projection for :class:`~sinkhorn_attacks.attacks.PGDAttack`: the TV-marginal UOT ball.

    ``radius`` handed to ``__call__`` is per image per unit clean mass (``F <= radius * ||x||_1``), the
    yardstick's normalisation for images with mass at least one; ``info["certified_radius"]`` is ``F / ||x||_1``.
    """

    needs_mass = True

    def __init__(
        self,
        cost: LocalCost,
        eta: float,
        tau: float,
        gamma: float = 1.0,
        *,
        tol: float = 1e-3,
        max_iter: int = 300,
        radius_rtol: float = 2e-2,
        max_search: int = 12,
        relax: float = 1.8,
    ) -> None:
        check_cost(cost)
        if not (isinstance(relax, (int, float)) and 1.0 <= relax < 2.0):
            raise ValueError(f"relax must be in [1, 2), got {relax!r}")
        self.relax = float(relax)
        self.cost = cost
        self.eta, self.tau, self.gamma = (
            check_positive(eta, "eta"),
            check_positive(tau, "tau"),
            check_positive(gamma, "gamma"),
        )
        self.tol, self.max_iter = check_positive(tol, "tol"), check_count(max_iter, "max_iter")
        self.radius_rtol, self.max_search = float(radius_rtol), check_count(max_search, "max_search")

    def __call__(
        self, x: torch.Tensor, w: torch.Tensor, radius: torch.Tensor, state: dict[str, torch.Tensor] | None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        mass = x.flatten(1).sum(1)
        r = uot_tv_project(
            x, w, self.cost, self.eta, self.tau, radius * mass, self.gamma, tol=self.tol, max_iter=self.max_iter,
            radius_rtol=self.radius_rtol, max_search=self.max_search, relax=self.relax, state=state,
        )  # fmt: skip
        info = {
            "certified_radius": r.radius / mass.clamp_min(1e-12),
            "inner_iterations": r.iterations.to(x.dtype),
            "psi": r.psi,
        }
        return r.z, r.state, info
