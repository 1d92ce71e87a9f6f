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
    F(psi) is non-increasing: psi is found per image by a bracketed secant search on log psi. The z
    returned is from the feasible side, so its F (``.radius``) certifies U_tau(x, z) <= F <= eps.
    If w is in the box and the plan of UOT_eta(x, w) already has F <= eps, w is returned (psi = 0).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from ..ot.checks import check_images, check_positive, check_same
from ..ot.cost import LocalCost
from ..ot.kernel import local_lse
from ..ot.sinkhorn import uot_sinkhorn, uot_terms

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

    def phi_dphi(u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s = torch.exp(lam_t * (qf - u))
        eu = torch.exp(u)
        return gam * (eu - w) + tau * (1 - s), gam * eu + tau * lam_t * s

    hi = torch.zeros_like(q)
    at_one, _ = phi_dphi(hi)
    top = at_one <= 0
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
        un = u - p / dp
        bad = ~((un >= lo) & (un <= hi)) | ~torch.isfinite(un)
        un = torch.where(bad, 0.5 * (lo + hi), un)
        step = (un - u).abs()
        u = un
        if finishing:
            break  # one more Newton step after |step| <= sqrt(eps): quadratic convergence -> rounding level
        finishing = bool(((step <= loose * (1 + u.abs())) | top | ~reach).all())
    z = torch.exp(u)
    z = torch.where(top, torch.ones_like(z), z)
    z = torch.where(reach, z, (w - tau / gam).clamp(0, 1))
    return z


_RELAX = 1.8  # default over-relaxation of the potentials (1 = plain block-coordinate ascent)
_DIVERGED = 4.0  # an image whose residual exceeds this multiple of its best gets its omega halved
_STALL = 30  # an image whose residual has not dropped by 10% for this many sweeps continues with omega = 1
_FLOOR = 10.0  # a plain float32 solve stalled (3 x _STALL sweeps) below this multiple of tol stops there


def _relaxed(old: torch.Tensor, new: torch.Tensor, omega: torch.Tensor) -> torch.Tensor:
    """``(1 - omega) old + omega new`` where both are finite, else ``new`` (infinite potentials are exact)."""
    both = torch.isfinite(old) & torch.isfinite(new)
    return torch.where(both, torch.lerp(old, new, omega), new)


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
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Algorithm A on a batch with per-image ``eta``, ``gamma`` of shape ``(B, 1, 1, 1)``; in place on f, g, z.

    Over-relaxed (successive over-relaxation of Sinkhorn, Thibault et al. 2017): each block update
    ``f~, (g~, z)`` is applied as ``f <- f + omega (f~ - f)``, ``g <- g + omega (g~ - g)``; ``omega = 1`` is
    the plain ascent. Fixed points are unchanged. The residual is the sweep's change of ``LSE_C[g]`` on the
    support of x (for ``omega = 1`` it equals the first-order row residual ``max |log(a / a*)|``; for any
    ``omega`` it vanishes exactly at a fixed point); an image whose residual grows past ``_DIVERGED`` times its
    best gets its ``omega`` halved towards 1 (plain ascent converges from any finite point; a non-finite
    iterate restarts from the initial potentials with ``omega = 1``); one that stalls (no 10% progress in
    ``_STALL`` sweeps: in float32, over-relaxation amplifies rounding noise above ``tol``) continues plainly,
    and a plain float32 solve stalled below ``_FLOOR * tol`` stops there (its residual is reported as is).
    The certified gap of the returned pair is reported separately (``_report``).
    Returns ``(f, g, z, iterations (B,), residual (B,))``. Converged images are written back and leave the
    working set (contiguous copies of the unconverged images' tensors, so a sweep does no gather/scatter).
    """
    B = lx.shape[0]
    kappa = tau / (tau + eta)
    iters = torch.zeros(B, dtype=torch.long, device=lx.device)
    resid = torch.full((B,), math.inf, dtype=lx.dtype, device=lx.device)
    # the working set: contiguous copies of the unconverged images, compacted when some converge
    idx = torch.arange(B, device=lx.device)
    ws = {
        "lx": lx,
        "w": w,
        "eta": eta,
        "step": eta * kappa,
        "lam": eta / (tau + eta),
        "gamma": gamma,
        "f": f.clone(),
        "g": g.clone(),
        "z": z.clone(),
        "omega": torch.ones(B, 1, 1, 1, dtype=lx.dtype, device=lx.device),  # first sweep: plain update
        "best": torch.full((B,), math.inf, dtype=lx.dtype, device=lx.device),
        "stall": torch.zeros(B, dtype=torch.long, device=lx.device),
    }
    ws["ell"] = local_lse(torch.where(torch.isposinf(g), torch.zeros_like(g), g), cost, eta)
    f0, g0, z0 = f.clone(), g.clone(), z.clone()
    for it in range(1, max_iter + 1):
        lxa, sa, ea, om = ws["lx"], ws["step"], ws["eta"], ws["omega"]
        fa = _relaxed(ws["f"], torch.where(torch.isneginf(lxa), lxa, sa * (lxa - ws["ell"])), om)
        q = local_lse(fa, cost, ea)
        za = solve_z(q, ws["w"], ws["lam"], tau, ws["gamma"], ws["z"])
        g_new = sa * (torch.log(za) - q)
        g_new = torch.where(torch.isneginf(q), torch.full_like(g_new, math.inf), g_new)
        g_new = torch.where((za <= 0) & torch.isfinite(q), torch.full_like(g_new, -math.inf), g_new)
        ga = _relaxed(ws["g"], g_new, om)
        ell = local_lse(torch.where(torch.isposinf(ga), torch.zeros_like(ga), ga), cost, ea)
        diff = torch.where(torch.isneginf(lxa), torch.zeros_like(lxa), (ell - ws["ell"]).abs())
        r = torch.nan_to_num(diff, nan=math.inf).amax(dim=(1, 2, 3))
        ws["f"], ws["g"], ws["z"], ws["ell"] = fa, ga, za, ell
        if it == 1:
            ws["omega"] = torch.full_like(om, float(relax))
        iters[idx] = it
        resid[idx] = r
        best = ws["best"]
        diverged = ~(r <= _DIVERGED * best)  # also NaN
        # stalled: no 10% progress for _STALL sweeps (over-relaxation amplifies rounding noise near the floor)
        ws["stall"] = torch.where(r < 0.9 * best, torch.zeros_like(ws["stall"]), ws["stall"] + 1)
        plain = ws["omega"].reshape(-1) == 1.0
        # plain float32 sweeps stuck at the rounding level (float64's floor is far below any usable tol)
        at_floor = (ws["stall"] >= 3 * _STALL) & plain & (r <= _FLOOR * tol) & (lx.dtype == torch.float32)
        stalled = (ws["stall"] >= _STALL) & ~plain
        done = ((r <= tol) | at_floor) & ~diverged
        any_stalled, any_diverged, any_done = torch.stack([stalled.any(), diverged.any(), done.any()]).tolist()
        if any_stalled:  # relaxed sweeps stuck: plain sweeps from here
            ws["omega"][stalled] = 1.0
            ws["stall"][stalled] = 0
        ws["best"] = torch.minimum(best, r)
        if any_diverged:  # damp omega towards 1 (plain ascent converges from any finite point)
            om_d = 1.0 + 0.5 * (ws["omega"][diverged] - 1.0)
            ws["omega"][diverged] = torch.where(om_d < 1.05, torch.ones_like(om_d), om_d)
            ws["best"][diverged] = r[diverged]
            bad = diverged & ~(torch.isfinite(r))
            if bool(bad.any()):  # non-finite iterate: restart those images from their initial potentials
                bi = idx[bad]
                ws["f"][bad], ws["g"][bad], ws["z"][bad] = f0[bi], g0[bi], z0[bi]
                gb = ws["g"][bad]
                ws["ell"][bad] = local_lse(torch.where(torch.isposinf(gb), torch.zeros_like(gb), gb), cost, ea[bad])
                ws["omega"][bad] = 1.0
                ws["best"][bad] = math.inf
        if any_done:
            f[idx], g[idx], z[idx] = ws["f"], ws["g"], ws["z"]
            keep = ~done
            idx = idx[keep]
            if idx.numel() == 0:
                break
            ws = {k: (v[keep] if v.shape[0] == keep.shape[0] else v) for k, v in ws.items()}
    if idx.numel():
        f[idx], g[idx], z[idx] = ws["f"], ws["g"], ws["z"]
    return f, g, z, iters, resid


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

    g_ct = -local_max(f, cost)  # min_i (C_ij - f_i); +inf where no finite f in reach
    ef = torch.where(torch.isneginf(f), torch.zeros_like(f), 1 - torch.exp(-f / tau))
    eg = torch.where(torch.isposinf(g_ct), torch.ones_like(g_ct), 1 - torch.exp(-g_ct.clamp(max=1e30) / tau))
    lb = tau * (x * ef).sum(dim=(1, 2, 3)) + tau * (z * eg).sum(dim=(1, 2, 3))
    frac = (t.plan_mass - t.stay_mass).sum(1).clamp_min(0) / t.plan_mass.sum(1).clamp_min(1e-300)
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
    Returns:
        :class:`ProjectionResult`; ``.radius`` is the certified ``F(P, z)`` per image.
    """
    check_images(x, "x")
    if not isinstance(w, torch.Tensor) or w.dim() != 4:
        raise ValueError(f"w must be a (B, C, H, W) tensor, got {getattr(w, 'shape', type(w))}")
    check_same(x, w, "x", "w")
    if not bool(torch.isfinite(w).all()):
        raise ValueError("w contains NaN or inf")
    eta = check_positive(eta, "eta")
    tau = check_positive(tau, "tau")
    if not (isinstance(relax, (int, float)) and 1.0 <= relax < 2.0):
        raise ValueError(f"relax must be in [1, 2), got {relax!r}")
    gamma = check_positive(gamma, "gamma")
    if tol is None:
        tol = 1e-5 if x.dtype == torch.float32 else 1e-10
    max_iter = int(max_iter)
    if max_iter < 1:
        raise ValueError("max_iter must be >= 1")
    B = x.shape[0]
    lx = torch.log(x)
    st = state or {}
    f = st["f"].clone() if "f" in st else torch.zeros_like(x)
    g = st["g"].clone() if "g" in st else torch.zeros_like(x)
    z = w.clamp(0, 1).clone()
    eta_b = _per_image(eta, x)
    gam_b = _per_image(gamma, x)
    if eta_b.shape[0] != B:
        eta_b, gam_b = eta_b.expand(B, 1, 1, 1), gam_b.expand(B, 1, 1, 1)

    if radius is None:
        f, g, z, it, res = _penalised_sweeps(lx, w, cost, eta_b, tau, gam_b, tol, max_iter, f, g, z, relax)
        rep = _report(x, z, f, g, cost, eta_b, tau)
        psi = torch.full((B,), math.nan, dtype=x.dtype, device=x.device)
        return ProjectionResult(z=z, psi=psi, iterations=it, residual=res, state={"f": f, "g": g}, **rep)

    eps = torch.as_tensor(radius, dtype=x.dtype, device=x.device).reshape(-1)
    eps = eps.expand(B).clone() if eps.numel() == 1 else eps.clone()
    if eps.numel() != B:
        raise ValueError(f"radius must be a scalar or have one entry per image ({B}), got {eps.numel()}")
    if not bool(torch.isfinite(eps).all()) or bool((eps < 0).any()):
        raise ValueError("radius must be finite and >= 0")
    return _budgeted(x, w, lx, cost, eta, tau, gamma, eps, tol, max_iter, radius_rtol, max_search, f, g, st, relax)


def _budgeted(x, w, lx, cost, eta, tau, gamma, eps, tol, max_iter, rtol, max_search, f, g, st, relax):
    B = x.shape[0]
    dev, dt = x.device, x.dtype
    total_it = torch.zeros(B, dtype=torch.long, device=dev)
    # inside-ball rule: w in the box and F(P_eta(x, w), w) <= eps  =>  z = w exactly.
    in_box = ((w >= 0) & (w <= 1)).flatten(1).all(1)
    inside = torch.zeros(B, dtype=torch.bool, device=dev)
    rep_in: dict[str, torch.Tensor] = {}
    f_in = g_in = None
    if bool(in_box.any()):
        idx = in_box.nonzero().squeeze(1)
        s = uot_sinkhorn(x[idx], w[idx], cost, eta, tau, tol=tol, max_iter=max_iter)
        rep = _report(x[idx], w[idx], s.f, s.g, cost, _per_image(eta, x[idx]), tau)
        ok = rep["radius"] <= eps[idx]
        inside[idx[ok]] = True
        total_it[idx] += s.iterations
        rep_in = {k: v[ok] for k, v in rep.items()}
        f_in, g_in = s.f[ok], s.g[ok]
    out_idx = (~inside).nonzero().squeeze(1)
    z_out = w.clamp(0, 1).clone()
    f_out, g_out = f.clone(), g.clone()
    psi_out = torch.zeros(B, dtype=dt, device=dev)
    res_out = torch.zeros(B, dtype=dt, device=dev)
    rep_all = {
        k: torch.zeros(B, dtype=dt, device=dev)
        for k in ("radius", "transport", "destroyed", "created", "lower_bound", "gap", "transported_fraction")
    }
    if inside.any():
        ii = inside.nonzero().squeeze(1)
        z_out[ii] = w[ii]
        f_out[ii], g_out[ii] = f_in, g_in
        for k, v in rep_in.items():
            rep_all[k][ii] = v
    if out_idx.numel():
        r = _psi_search(
            x[out_idx],
            w[out_idx],
            lx[out_idx],
            cost,
            eta,
            tau,
            gamma,
            eps[out_idx],
            tol,
            max_iter,
            rtol,
            max_search,
            f[out_idx],
            g[out_idx],
            st["psi"][out_idx] if "psi" in st else None,
            relax,
        )
        z_out[out_idx] = r["z"]
        f_out[out_idx], g_out[out_idx] = r["f"], r["g"]
        psi_out[out_idx] = r["psi"]
        res_out[out_idx] = r["residual"]
        total_it[out_idx] += r["iterations"]
        for k in rep_all:
            rep_all[k][out_idx] = r[k]
    return ProjectionResult(
        z=z_out,
        psi=psi_out,
        iterations=total_it,
        residual=res_out,
        state={"f": f_out, "g": g_out, "psi": psi_out},
        **rep_all,
    )


def _psi_search(x, w, lx, cost, eta, tau, gamma, eps, tol, max_iter, rtol, max_search, f, g, psi0, relax):
    """Per-image root of h(t) = F(z_t) - eps in t = log psi (h non-increasing), bracketed secant."""
    B = x.shape[0]
    dev, dt = x.device, x.dtype
    t = torch.zeros(B, dtype=dt, device=dev) if psi0 is None else torch.log(psi0.clamp_min(1e-12))
    t = torch.where(torch.isfinite(t), t, torch.zeros_like(t))
    z = w.clamp(0, 1).clone()
    iters = torch.zeros(B, dtype=torch.long, device=dev)
    t_lo = torch.full((B,), -math.inf, dtype=dt, device=dev)  # h(t_lo) > 0 (infeasible side)
    t_hi = torch.full((B,), math.inf, dtype=dt, device=dev)  # h(t_hi) <= 0 (feasible side)
    h_lo = torch.full((B,), math.nan, dtype=dt, device=dev)
    h_hi = torch.full((B,), math.nan, dtype=dt, device=dev)
    best: dict[str, torch.Tensor] = {}
    have = torch.zeros(B, dtype=torch.bool, device=dev)
    done = torch.zeros(B, dtype=torch.bool, device=dev)
    side = torch.zeros(B, dtype=torch.long, device=dev)  # Illinois bookkeeping
    for _ in range(max_search):
        act = (~done).nonzero().squeeze(1)
        if act.numel() == 0:
            break
        psi = torch.exp(t[act])
        eta_b = (eta / psi).reshape(-1, 1, 1, 1)
        gam_b = (gamma / psi).reshape(-1, 1, 1, 1)
        fa, ga, za = f[act].clone(), g[act].clone(), z[act].clone()
        fa, ga, za, it, res = _penalised_sweeps(
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
        ta = t[act]
        t_hi[act] = torch.where(feas, torch.minimum(t_hi[act], ta), t_hi[act])
        h_hi[act] = torch.where(feas & (ta <= t_hi[act]), h, h_hi[act])
        t_lo[act] = torch.where(~feas, torch.maximum(t_lo[act], ta), t_lo[act])
        h_lo[act] = torch.where(~feas & (ta >= t_lo[act]), h, h_lo[act])
        close = feas & (h >= -rtol * eps[act])
        # also stop when the bracket is tiny
        tiny = torch.isfinite(t_lo[act]) & torch.isfinite(t_hi[act]) & ((t_hi[act] - t_lo[act]) < 1e-7)
        done[act[close | tiny]] = True
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
        nxt = torch.where(both, cand, nxt)
        t[act] = nxt
    # images never feasible within the search: fall back to x itself (radius 0), which is always feasible
    never = ~have
    if bool(never.any()):
        ni = never.nonzero().squeeze(1)
        best["z"][ni] = x[ni]
        for k in ("radius", "transport", "destroyed", "created", "lower_bound", "gap", "transported_fraction"):
            best[k][ni] = 0.0
        best["psi"][ni] = math.inf
    best["iterations"] = iters
    return best


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
        return r.z, r.state, info
