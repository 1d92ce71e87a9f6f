"""Balanced entropic projections onto the Wasserstein ball (Wong et al. 2019; Hu et al. 2020).

Re-implemented from the equations of the papers and the behaviour of the authors' code (github.com/locuslab/
projected_sinkhorn, github.com/edwardjhu/improved_wasserstein), in the log domain, on the local
transport operator :func:`~sinkhorn_attacks.ot.kernel.local_lse`.

**Problem** (on normalised images ``x <- x / ||x||_1``, ``w <- w / ||x||_1``; Wong's "rescaled" form)::

    min_{z, P >= 0}  (lam/2) ||w - z||^2 + sum_ij P_ij log P_ij
    s.t.  P 1 = x,   P^T 1 = z,   <P, C> <= eps,   [Hu: z <= u = 1/N]

**Dual** (multipliers alpha, beta, psi >= 0 and, for Hu, phi >= 0 on the box)::

    P_ij = exp(-alpha_i - beta_j - psi C_ij - 1) = e^{-alpha_i} K_ij e^{-beta_j},   K = exp(-psi C - 1)
    z    = w + (beta - phi) / lam
    D    = -(1/2lam)||beta - phi||^2 - <beta - phi, w> - <alpha, x> - psi eps - <phi, u> - <e^{-alpha}, K * e^{-beta}>

**Block updates** (one sweep)::

    alpha <- log(K * e^{-beta}) - log x                                   (row marginal)
    beta  <- W0(lam e^{lam w} a) - lam w,   a = K * e^{-alpha}           (column condition e^{-beta} a = z)
          =  omega(log lam + lam w + log a) - lam w                      (Wright omega: no overflow)
    [Hu]  beta0 = log(N a) (puts z_j on the box);  phi = lam (w - 1/N) + beta0;
          beta = beta1 where phi < 0 else beta0;   phi <- max(phi, 0)
    psi   <- max(psi - t g / h, 0),  g = <P, C> - eps,  h = -<P, C^2>   (one Newton step, backtracking t)

The kernel products in log form: ``log(K * e^{v})_i = log sum_j exp(v_j - psi C_ij - 1)
= local_lse(v / psi, cost, eta = 1/psi)_i - 1`` (``power=1, 2`` give the ``C`` and ``C^2`` moments).
The row duals are stored as ``la = -alpha`` (``-inf`` on zero pixels, where ``alpha = +inf``).

Wong's configuration (no box, Wong's stopping quantity) sweeps in the scaling form where that is exact
to rounding: each potential is exponentiated once per sweep (``E = e^{v - max v}``), the kernel sums are
two grouped convolutions per sweep, and the moments and the objective are dot products of those planes
(:func:`_scaled_wong`); elsewhere, and for Hu, the sweep runs in the log domain above. The loop avoids
the slow CPU paths of ``exp(-inf)``, ``log(0)`` and boolean masks: the zero pixels of x and their empty
windows are fixed for a solve, so they enter as 0/1 weights.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F

from ..ot.checks import (
    check_cost,
    check_count,
    check_nonnegative,
    check_positive,
    check_radius,
    check_step_point,
)
from ..ot.cost import LocalCost
from ..ot.engine import Decision, SweepOptions, run_sweeps
from ..ot.kernel import FixedSupport, local_lse, local_lse_powers, scaling_floor, window_sums

__all__ = [
    "wright_omega",
    "SinkhornResult",
    "sinkhorn_project",
    "hu_project",
    "conjugate_sinkhorn",
    "WongProjection",
    "HuProjection",
]

_PSI_FLOOR = 1e-20
_OMEGA_BIG = 1e15  # above this, wright_omega's iterate would overflow (float32: w**2 > 3.4e38 past 1.8e19)


# ---------------------------------------------------------------------------------------------------
# Wright omega
# ---------------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=16)
def _consts(dtype: torch.dtype, device: torch.device) -> dict[str, torch.Tensor]:
    """0-dim constants of a dtype: an operand ``t + c`` with a Python number ``c`` costs a conversion."""
    vals = {"one": 1.0, "two": 2.0, "forty": 40.0, "big": torch.finfo(dtype).max}
    return {k: torch.tensor(v, dtype=dtype, device=device) for k, v in vals.items()}


def _omega_iterate(ys: torch.Tensor, iterations: int) -> torch.Tensor:
    """``omega(ys)`` for finite ``ys >= -40``: Winitzki's start, then ``iterations`` FSC steps (see
    :func:`wright_omega`; the step is written with ``q/2``)."""
    c = _consts(ys.dtype, ys.device)
    soft = F.softplus(ys)  # log(1 + e^y)
    w = torch.addcdiv(soft, soft * torch.log1p(soft), soft + c["two"], value=-1.0)
    for _ in range(iterations):
        r = (ys - w).sub_(torch.log(w))
        wp1 = w + c["one"]
        half_q = torch.add(wp1, r, alpha=2.0 / 3.0).mul_(wp1)  # (1 + w)(1 + w + 2r/3)
        num = torch.add(half_q, r, alpha=-0.5)  # (q - r) / 2
        w = w * (r / wp1).mul_(num).div_(half_q.sub_(r)).add_(c["one"])
    return w


def _omega_finite(y: torch.Tensor) -> tuple[torch.Tensor, float]:
    """:func:`wright_omega` of a finite ``y`` (no NaN or infinity to guard), and ``min y``."""
    low = float(y.amin())
    iterations = 2 if y.dtype == torch.float64 else 1
    if low >= -40.0:
        return _omega_iterate(y, iterations), low
    c = _consts(y.dtype, y.device)
    w = _omega_iterate(y.clamp(min=-40.0), iterations)
    ok = torch.sign(y + c["forty"]).add_(c["one"]).clamp_(max=1.0)  # 1.0 where y >= -40
    return w.mul_(ok).add_(torch.exp(y.clamp(max=-40.0)).mul_(c["one"] - ok)), low


def wright_omega(y: torch.Tensor, iterations: int | None = None) -> torch.Tensor:
    """Wright omega function ``omega(y)``: the solution of ``omega + log(omega) = y`` (real ``y``).

    ``W0(e^y) = omega(y)``, so ``W0(lam e^{lam w} a) = omega(log lam + lam w + log a)`` never forms the
    overflowing exponential. Initial guess from Winitzki's global approximation of ``W0(e^y)`` (relative
    error below 2% for every ``y``)::

        L = log(1 + e^y),      omega ~ L (1 - log(1 + L) / (2 + L))

    then Fritsch-Shafer-Crowley iterations (fourth order): ``r = y - w - log w``, ``q = 2(1+w)(1+w+2r/3)``,
    ``w <- w (1 + r/(1+w) (q-r)/(q-2r))``; ``iterations=None`` runs as many as reach the rounding level
    from that guess (one in float32, within 9 ulp; two in float64, within 25 ulp, as the older
    three-region start needed three). For ``y < -40`` ``omega = e^y`` to within a relative ``e^y``
    (returned directly, also avoids ``log 0``); ``omega(-inf) = 0``, ``omega(+inf) = +inf``; NaN
    propagates. No comparisons or selections (slow CPU kernels): the iterate is computed from ``y`` where
    it is finite and ``>= -40``, from a safe value elsewhere, and replaced there with exact 0/1 weights.
    Above ``1e15`` ``omega = y - log y`` to within a relative ``1e-28``. Integer tensors are computed in
    float64, float16 / bfloat16 in float32 (and returned in their dtype).
    """
    if not isinstance(y, torch.Tensor) or y.is_complex() or y.dtype == torch.bool:
        raise TypeError(f"wright_omega: y must be a real tensor, got {getattr(y, 'dtype', type(y).__name__)}")
    if iterations is not None:
        iterations = check_count(iterations, "wright_omega: iterations", lower=0)
    if not y.is_floating_point():
        y = y.double()
    if y.dtype in (torch.float16, torch.bfloat16):
        return wright_omega(y.float(), iterations).to(y.dtype)
    if iterations is None:
        iterations = 2 if y.dtype == torch.float64 else 1
    c = _consts(y.dtype, y.device)
    ys = torch.nan_to_num(y, nan=1.0, posinf=1.0, neginf=1.0).clamp_(min=-40.0, max=_OMEGA_BIG)
    w = _omega_iterate(ys, iterations)
    ok = torch.sign(y + c["forty"]).add_(c["one"]).clamp_(max=1.0)  # 1.0 where y >= -40, 0.0 below (NaN: NaN)
    w = w.mul_(ok).add_(torch.exp(y.clamp(max=-40.0)).mul_(c["one"] - ok))
    if y.numel() and float(y.amax()) > _OMEGA_BIG:  # the iterate would overflow: omega = y - log y there
        big = torch.sign(y - _OMEGA_BIG).clamp_(min=0.0)  # 1.0 where y > 1e15 (+inf included)
        yb = y.clamp(min=_OMEGA_BIG)
        return w.mul_(c["one"] - big).add_((yb - torch.log(yb.clamp(max=c["big"]))).mul_(big))
    return w.add_(y.clamp(min=torch.finfo(y.dtype).max).sub_(c["big"]))  # +inf where y = +inf, + 0 elsewhere


# ---------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------
def _b4(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1, 1, 1, 1)


def _lk(v: torch.Tensor, cost: LocalCost, psi: torch.Tensor, power: int = 0, empty=None) -> torch.Tensor:
    """``log sum_j C_ij**power exp(v_j - psi C_ij - 1)`` for ``v`` (B, C, H, W), ``psi`` (B,); ``empty``: the
    windows known to hold no finite entry of ``v`` (see :func:`~sinkhorn_attacks.ot.kernel.local_lse`)."""
    p = _b4(psi.clamp_min(_PSI_FLOOR))
    return local_lse(v / p, cost, eta=1.0 / p, power=power, empty=empty) - 1.0


def _bsum(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).sum(1)


def _xlogx_safe_dot(a: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``<a, x>`` with ``0 * inf = 0`` (alpha = +inf on zero pixels)."""
    return _bsum(torch.where(x > 0, a * x, torch.zeros_like(x)))


def _plane_eta(psi: torch.Tensor, channels: int) -> torch.Tensor:
    """The temperature ``1/psi`` of :func:`_lk`'s kernel for each of the ``B * channels`` planes, ``(n, 1, 1)``."""
    return _b4(psi.clamp_min(_PSI_FLOOR).reciprocal()).expand(-1, channels, 1, 1).reshape(-1, 1, 1)


def _lk_fast(
    v: torch.Tensor,
    cost: LocalCost,
    psi: torch.Tensor,
    powers: tuple[int, ...],
    support: FixedSupport | None = None,
    try_fast: bool = True,
) -> tuple[torch.Tensor, bool]:
    """``stack([_lk(v, cost, psi, p) for p in powers])`` with one ``exp`` for all powers (the kernel's fast
    path), shape ``(len(powers),) + v.shape``.

    ``support`` (power 0 only): the fixed ``-inf`` pattern of ``v`` (shape ``(B, C, H, W)``). Falls back to
    :func:`_lk` where the fast path does not apply (or ``try_fast`` is false, e.g. after it did not apply
    to the same reduction in an earlier sweep); the flag says whether it did, in which case every result
    is finite outside the support's empty windows.
    """
    if not try_fast:
        empty = None if support is None else support.empty
        return torch.stack([_lk(v, cost, psi, q, empty=empty if q == 0 else None) for q in powers]), False
    h, w = v.shape[-2:]
    p = _b4(psi.clamp_min(_PSI_FLOOR))
    eta = _plane_eta(psi, v.shape[1])
    planes = (
        None
        if support is None
        else FixedSupport(*(getattr(support, f.name).reshape(-1, h, w) for f in fields(support)))
    )
    out = local_lse_powers((v / p).reshape(-1, h, w) / eta, cost, eta, powers, planes)
    if out is None:
        empty = None if support is None else support.empty
        return torch.stack([_lk(v, cost, psi, q, empty=empty if q == 0 else None) for q in powers]), False
    return out.sub_(1.0).reshape((len(powers),) + v.shape), True


def _exp_on(t: torch.Tensor, finite: torch.Tensor | None) -> torch.Tensor:
    """``exp(t)`` where ``t`` is ``-inf`` exactly where ``finite`` is 0 (``None``: unknown pattern).

    ``exp(-inf) = 0`` is then written as ``exp(0) * 0``: the same values without exp's slow path for
    special values.
    """
    if finite is None:
        return torch.exp(t)
    return torch.nan_to_num(t, nan=math.nan, posinf=math.inf, neginf=0.0).exp_().mul_(finite)


def _moments(
    la: torch.Tensor,
    beta: torch.Tensor,
    cost: LocalCost,
    psi: torch.Tensor,
    powers: tuple[int, ...] = (0, 1, 2),
    finite: torch.Tensor | None = None,
    try_fast: bool = True,
) -> tuple[list[torch.Tensor], bool]:
    """``<P, C^q> = sum_ij C_ij^q e^{la_i} K_ij e^{-beta_j}`` per image for each ``q`` of ``powers`` (B,),
    and whether the kernel sums took the fast path (see :func:`_lk_fast`).

    ``finite``: 1.0 where ``la`` is finite and 0.0 where it is ``-inf``, when that pattern is known.
    """
    lks, fast = _lk_fast(-beta, cost, psi, powers, try_fast=try_fast)
    return list(_exp_on(la + lks, finite if fast else None).flatten(2).sum(2)), fast


def _newton_psi(psi: torch.Tensor, g: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """Wong's single Newton step on psi with per-example halving of ``t`` while ``psi - t d < 0``."""
    delta = g / h.clamp(max=-1e-300) if h.dtype == torch.float64 else g / h.clamp(max=-1e-38)
    delta = torch.nan_to_num(delta, nan=0.0, posinf=0.0, neginf=0.0)
    full = psi - delta
    if not bool((full < 0).any()):  # the full step stays feasible (the common case)
        return full.clamp_min(0.0)
    t = torch.ones_like(psi)
    neg = psi - t * delta < 0
    while bool(neg.any()) and float(t.min()) > 1e-2:
        t = torch.where(neg, t / 2, t)
        neg = psi - t * delta < 0
    return (psi - t * delta).clamp_min(0.0)


@dataclass
class SinkhornResult:
    """Output of a projected-Sinkhorn solve. Per-example tensors have leading dim ``B``.

    ``z`` is in raw units (``z_normalised * ||x||_1``), before any clamping. ``transport`` is the entropic
    plan's cost ``<P, C>`` and ``mass`` its total mass, in normalised units; ``alpha`` (= ``-la``) and
    ``beta``/``psi``/``phi`` are the duals (normalised problem) for warm starts.
    """

    z: torch.Tensor
    psi: torch.Tensor
    iterations: torch.Tensor
    transport: torch.Tensor
    mass: torch.Tensor
    converged: torch.Tensor
    log_u: torch.Tensor  # -alpha
    beta: torch.Tensor
    phi: torch.Tensor | None = None

    @property
    def alpha(self) -> torch.Tensor:
        return -self.log_u

    @property
    def state(self) -> dict[str, torch.Tensor]:
        s = {"log_u": self.log_u, "beta": self.beta, "psi": self.psi}
        if self.phi is not None:
            s["phi"] = self.phi
        return s


def _as_batch(v: float | torch.Tensor, B: int, like: torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(v, dtype=like.dtype, device=like.device)
    return t.expand(B).clone() if t.dim() == 0 else t.reshape(B).clone()


def _initial_duals(
    xn: torch.Tensor, init: dict[str, torch.Tensor] | None, box: torch.Tensor | None
) -> dict[str, torch.Tensor]:
    """The duals a solve starts from: the warm start ``init``, else Wong's ``alpha = -beta = log(1/m)``,
    ``psi = 1`` (and ``phi = 0`` under Hu's box)."""
    dt = xn.dtype
    m = xn[0].numel()
    if init is not None:
        duals = {k: init[k].to(dt).clone() for k in ("log_u", "beta", "psi")}
        if box is not None and init.get("phi") is not None:
            duals["phi"] = init["phi"].to(dt).clone()
    else:
        duals = {
            "log_u": torch.full_like(xn, -math.log(1.0 / m)),  # la = -alpha
            "beta": torch.full_like(xn, math.log(1.0 / m)),
            "psi": torch.ones(xn.shape[0], dtype=dt, device=xn.device),
        }
    if box is not None and "phi" not in duals:
        duals["phi"] = torch.zeros_like(xn)
    return duals


def _fixed_inputs(
    xn: torch.Tensor, wn: torch.Tensor, eps: torch.Tensor, cost: LocalCost, lam: float, box: torch.Tensor | None
) -> dict[str, torch.Tensor]:
    """Per-image inputs that travel with the working set: ``log x`` (``-inf`` on zero pixels), its support
    (:class:`~sinkhorn_attacks.ot.kernel.FixedSupport`: the pattern of ``la`` while ``K e^{-beta}`` is
    finite), ``lam w`` and ``log lam + lam w`` (the beta-step's argument less ``log a``)."""
    log_x = torch.log(xn)
    sup = FixedSupport.of(log_x, cost)
    lw = lam * wn
    extra = {"log_x": log_x, "xn": xn, "wn": wn, "lw": lw, "ylw": math.log(lam) + lw, "eps": eps}
    extra.update(x_zero=torch.isneginf(log_x), x_fin=sup.finite, empty_x=sup.empty)
    extra.update(empty_one=sup.empty_one, empty_ninf=sup.empty_ninf, reach=1.0 - sup.empty_one)
    extra["plane_void"] = torch.where(xn.flatten(2).amax(2) > 0, 0.0, math.inf).to(xn.dtype)  # (B, C)
    extra["xlogx"] = _bsum(torch.where(extra["x_zero"], 0.0, xn * log_x))  # <x, log x>
    if box is not None:
        extra["box"] = box
    return extra


def _support(ws: dict[str, torch.Tensor]) -> FixedSupport:
    return FixedSupport(ws["x_fin"], ws["empty_x"], ws["empty_one"], ws["empty_ninf"])


def _beta_box(
    ws: dict[str, torch.Tensor], om: torch.Tensor, log_a: torch.Tensor, lam: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Hu's beta-step with the box ``z <= u = 1/N``: ``beta0 = log(N a)`` puts z on the box,
    ``phi = lam (w - u) + beta0``; ``beta = beta1 = lam z - lam w`` where ``phi < 0``, else ``beta0``, and
    ``phi <- max(phi, 0)``. Returns ``(beta, z, phi)``."""
    u = _b4(ws["box"])
    beta1 = om - ws["lw"]
    beta0 = torch.log(_b4(1.0 / ws["box"])) + log_a  # log(N a)
    ph = lam * (ws["wn"] - u) + beta0
    beta = torch.where(ph < 0, beta1, beta0)
    z = torch.where(ph < 0, om / lam, u.expand_as(om))  # phi > 0 puts z exactly on the box
    phi = ph.clamp_min(0.0)
    return beta, z, torch.where(torch.isfinite(phi), phi, torch.zeros_like(phi))


def _objective(
    stopping: str,
    ws: dict[str, torch.Tensor],
    d: dict[str, torch.Tensor],
    lam: float,
    finite: torch.Tensor | None,
) -> torch.Tensor:
    """The quantity the stopping rule watches, per image, from this sweep's duals ``d`` (``la``, ``beta``,
    ``psi``, ``phi``, ``log_a``, ``lkb``); ``finite`` as in :func:`_moments`.

    ``"wong"``: Wong's ``eval_obj`` called as (alpha, exp_alpha, beta, exp_beta, ...),
    ``-(1/2lam)||e^{la}||^2 - psi eps - <alpha, x> - <e^{la}, w> - <beta, K e^{-beta}>`` (entries capped at
    1e10); ``"hu"``: Hu's, with ``beta + phi`` where z uses ``beta - phi`` and the kernel sum taken with the
    psi before the Newton step; ``"dual"``: the dual objective D of the module docstring.
    """
    la, beta, psi, phi = d["la"], d["beta"], d["psi"], d.get("phi")
    xn, wn, eps = ws["xn"], ws["wn"], ws["eps"]
    if stopping in ("hu", "wong"):
        # <min(alpha, 1e10), x>: alpha = +inf only where x = 0, where the capped products are 1e10 * 0 = 0
        ax = _bsum((-la).clamp(max=1e10) * xn)
    if stopping == "hu":
        bpp = beta + phi if phi is not None else beta
        obj = (
            -0.5 / lam * _bsum(bpp * bpp)
            - psi * eps
            - ax
            - _bsum(bpp.clamp(max=1e10) * wn)
            - _bsum(torch.exp(d["log_a"] - beta))
        )
        return obj - _bsum(phi) if phi is not None else obj
    if stopping == "wong":
        ea = _exp_on(la, finite)
        return (
            -0.5 / lam * _bsum(ea * ea)
            - psi * eps
            - ax
            - _bsum(ea.clamp(max=1e10) * wn)
            - _bsum(beta * torch.exp(d["lkb"]))
        )
    bp = beta - phi if phi is not None else beta
    obj = (
        -0.5 / lam * _bsum(bp * bp)
        - _bsum(bp * wn)
        - _xlogx_safe_dot(-la, xn)
        - psi * eps
        - _bsum(torch.exp(la + d["lkb"]))
    )
    return obj - _bsum(phi) * ws["box"] if phi is not None else obj


_EA_MAX = 23.0  # max la below which e^{la} < 1e10 (the cap of Wong's objective) holds everywhere
_SB_MAX = 80.0  # max(-beta) below which e^{max(-beta) - 1} is finite in float32


def _scaled_alpha(
    ws: dict[str, torch.Tensor], la: torch.Tensor, cost: LocalCost, floor: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """The alpha reduction in the scaling form, and the moments' sums with it (see :func:`_scaled_wong`).

    ``E_a = e^{la - s_a}`` (``s_a``: each plane's max of ``la``), ``A_q = K_q * E_a`` for ``q = 0, 1, 2`` in
    one grouped convolution, and the beta-step's argument ``y = log lam + lam w + log a`` with
    ``log a = log A_0 + s_a - 1`` (any finite value on the empty windows of x, where omega is not used).
    Returns ``(E_a, s_a, (A_1, A_2), y)`` as planes ``(n, m)``, ``(n,)``, ``(2, n, m)`` and ``(B, C, H, W)``,
    or ``None`` for a dense window.
    """
    xn, psi = ws["xn"], ws["psi"]
    B, C, H, W = xn.shape
    n, m = B * C, H * W
    lap = la.reshape(n, m)
    s_a = torch.nan_to_num(lap.amax(1), nan=0.0, posinf=0.0, neginf=0.0)  # a plane without mass: any shift
    e_a = torch.nan_to_num(lap - s_a[:, None], nan=math.nan, posinf=math.inf, neginf=0.0).exp_()
    e_a.mul_(ws["x_fin"].reshape(n, m))  # exp(-inf) = 0 written as exp(0) * 0
    acc = window_sums(e_a.reshape(n, H, W), cost, _plane_eta(psi, C), (0, 1, 2))
    if acc is None:
        return None
    acc = acc.reshape(3, n, m)
    acc_a = acc[0].add_(ws["empty_one"].reshape(n, m))  # 1 on the empty windows: no log(0)
    if float(acc_a.amin()) >= floor:
        shift = s_a - _consts(xn.dtype, xn.device)["one"]
        y = ws["ylw"] + acc_a.log_().add_(shift[:, None]).reshape(B, C, H, W)
    else:  # sums too small for the scaling form somewhere: local_lse recomputes those pixels exactly
        y = torch.nan_to_num(ws["ylw"] + _lk(la, cost, psi, empty=ws["empty_x"]), neginf=0.0)
    return e_a, s_a, acc[1:], y


@functools.lru_cache(maxsize=16)
def _wong_weights(lam: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The signed weights of the plane sums of Wong's stopping quantity, ``(3, 1)``: ``-1/(2 lam)``, ``-1``,
    ``-1/e`` (the last folds the ``-1`` of ``lkb = log(K' * E_b) + s_b - 1``)."""
    return torch.tensor([[-0.5 / lam], [-1.0], [-math.exp(-1.0)]], dtype=dtype, device=device)


def _scaled_objective(
    ws: dict[str, torch.Tensor],
    e_a: torch.Tensor,
    s_a: torch.Tensor,
    beta: torch.Tensor,
    acc_0: torch.Tensor,
    s_b: torch.Tensor,
    psi: torch.Tensor,
    lam: float,
) -> torch.Tensor:
    """Wong's stopping quantity (see :func:`_objective`) from the scaled planes, per image::

        -(1/2lam) e^{2 s_a} <E_a, E_a> - e^{s_a} <E_a, w> - e^{s_b - 1} <beta, A'> - <min(alpha, 1e10), x> - psi eps

    with ``A' = K' * E_b`` at the new psi (``e^{lkb'} = e^{s_b - 1} A'`` for the next kernel sum ``lkb'``),
    and ``<min(alpha, 1e10), x> = <x, lkb> - <x, log x>``, ``lkb`` being the kernel sum ``la`` was formed with
    (``alpha = lkb - log x`` is finite where ``x > 0``). The caller checks ``max la <= _EA_MAX``
    (``e^{la} < 1e10``: the other cap does not bind) and ``max(-beta) <= _SB_MAX`` (finite plane factors).
    """
    xn = ws["xn"]
    B, C = xn.shape[:2]
    n = B * C
    dots = [
        torch.linalg.vecdot(e_a, e_a),
        torch.linalg.vecdot(e_a, ws["wn"].reshape(n, -1)),
        torch.linalg.vecdot(beta.reshape(n, -1), acc_0),
    ]
    # the three plane sums with their factors e^{2 s_a}, e^{s_a}, e^{s_b - 1} and signs, summed over channels
    scale = torch.exp(torch.stack([s_a + s_a, s_a, s_b])) * _wong_weights(lam, xn.dtype, xn.device)
    terms = (torch.stack(dots) * scale).reshape(3, B, C).sum((0, 2))
    ax = ws["xlogx"] - torch.linalg.vecdot(xn.reshape(B, -1), ws["lkb"].reshape(B, -1))
    return terms + ax - psi * ws["eps"]


def _scaled_wong(
    ws: dict[str, torch.Tensor], la: torch.Tensor, cost: LocalCost, lam: float
) -> tuple[dict[str, torch.Tensor], bool] | None:
    """One sweep of Wong's configuration (no box, Wong's stopping quantity) in the scaling form.

    Each potential is exponentiated once, shifted by its plane's max: ``E_a = e^{la - s_a}``,
    ``E_b = e^{-beta - s_b}``. One grouped convolution gives ``A_q = K_q * E_a`` for ``q = 0, 1, 2``
    (``K_q = C^q K`` at this sweep's psi; :func:`_scaled_alpha`): ``a = e^{s_a - 1} A_0`` and, the cost
    being symmetric, the moments

        <P, C^q> = sum_ij C_ij^q e^{la_i} K_ij e^{-beta_j} = e^{s_a + s_b - 1} <E_b, A_q>;

    a second convolution gives the next kernel sum ``lkb = log(K' * E_b) + s_b - 1`` at the new psi, and
    the objective's sums are dot products of these planes (:func:`_scaled_objective`). ``la`` is ``-inf``
    exactly on the zero pixels of x. Window sums below the kernel's
    :func:`~sinkhorn_attacks.ot.kernel.scaling_floor` are recomputed by ``local_lse``. Returns the new
    ``la, beta, psi, lkb, z, obj`` and whether ``lkb`` is finite, or ``None`` where this form does not
    hold to rounding (a moment sum below the floor, ``max la > _EA_MAX``, ``max(-beta) > _SB_MAX``, a
    dense window): the caller then runs the log-domain sweep.
    """
    xn, psi = ws["xn"], ws["psi"]
    B, C, H, W = xn.shape
    n, m = B * C, H * W
    floor = scaling_floor(xn.dtype) if xn.dtype in (torch.float32, torch.float64) else math.inf
    alpha = _scaled_alpha(ws, la, cost, floor)
    if alpha is None:
        return None
    e_a, s_a, acc_q, y = alpha
    # beta-step: lam z = omega(y) where a window holds clean mass, 0 elsewhere (omega(-inf) = 0)
    om, y_min = _omega_finite(y)
    om.mul_(ws["reach"])
    beta = om - ws["lw"]
    z = om / lam
    # moments at this sweep's psi, then one Newton step
    s_b = -beta.reshape(n, m).amin(1)  # max of -beta
    e_b = torch.sub(-s_b[:, None], beta.reshape(n, m)).exp_()  # e^{-beta - s_b}
    dots = torch.linalg.vecdot(acc_q, e_b)  # (2, n)
    one = _consts(xn.dtype, xn.device)["one"]
    sb1 = s_b - one
    mom = torch.exp(torch.log(dots).add_(s_a + sb1)).reshape(2, B, C).sum(2)
    psi_new = _newton_psi(psi, mom[0] - ws["eps"], -mom[1])
    # the next alpha-step's kernel sum, at the new psi
    acc_0 = window_sums(e_b.reshape(n, H, W), cost, _plane_eta(psi_new, C), (0,)).reshape(n, m)
    lkb_fast = float(acc_0.amin()) >= floor
    if lkb_fast:
        lkb = torch.log(acc_0).add_(sb1[:, None]).reshape(B, C, H, W)
    else:  # as in _scaled_alpha
        lkb = _lk(-beta, cost, psi_new)
        acc_0 = torch.exp(lkb.reshape(n, m) - sb1[:, None])
    obj = _scaled_objective(ws, e_a, s_a, beta, acc_0, s_b, psi_new, lam)
    # a moment sum of at least m * floor holds every term but underflowed ones below floor (planes
    # without clean mass have no moments)
    moment = (dots.amin(0) + ws["plane_void"].reshape(n)).amin()
    low, top_la, top_nb = torch.stack([moment, s_a.max(), s_b.max()]).tolist()
    if not (low >= m * floor and top_la <= _EA_MAX and top_nb <= _SB_MAX and y_min > -math.inf):
        return None
    return {"la": la, "beta": beta, "psi": psi_new, "lkb": lkb, "z": z, "obj": obj}, lkb_fast


class _Sweep:
    """One sweep of the shared loop of Wong and Hu (module docstring, "Block updates"), on a working set.

    The alpha-step, the beta-step through Wright omega (and Hu's box), one Newton step on psi, the kernel
    sum ``log(K * e^{-beta})`` at the new psi (the next alpha-step's) and the stopping rule's objective.
    While ``K e^{-beta}`` is finite, ``la`` is ``-inf`` exactly on the zero pixels of ``x`` and ``log a``
    exactly on their empty windows: the reductions, ``exp`` and omega then use those fixed patterns, and
    Wong's configuration runs in the scaling form (:func:`_scaled_wong`) where that is exact to rounding.
    """

    def __init__(
        self,
        cost: LocalCost,
        lam: float,
        stopping: str,
        rtol: float,
        atol: float,
        lkb_fast: bool,
        w_finite: bool,
        scaled: bool,
    ) -> None:
        self.cost, self.lam, self.stopping, self.rtol, self.atol = cost, lam, stopping, rtol, atol
        # the carried log(K * e^{-beta}) is finite and below a quarter of the dtype's range
        self.lkb_fast = lkb_fast
        self.w_finite = w_finite  # log lam + lam w is finite: y = -inf exactly where log a is
        self.scaled = scaled and w_finite  # Wong's configuration: the scaling form first
        # the log domain's reductions try the kernel's fast path until it does not apply once
        self.fast = {"alpha": True, "moments": True, "lkb": True}

    def alpha_step(self, ws: dict[str, torch.Tensor], la: torch.Tensor, known: bool) -> tuple[torch.Tensor, bool]:
        """``log a = log(K * e^{la})``; ``fast`` when it is ``-inf`` exactly on the empty windows of x."""
        if not known:
            return _lk(la, self.cost, ws["psi"]), False
        (log_a,), fast = _lk_fast(la, self.cost, ws["psi"], (0,), _support(ws), self.fast["alpha"])
        self.fast["alpha"] = fast
        return log_a, fast

    def beta_step(
        self, ws: dict[str, torch.Tensor], log_a: torch.Tensor, fast: bool
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``lam z = omega(log lam + lam w + log a)``, ``beta = lam z - lam w`` (and Hu's box): ``(beta, z, phi)``.

        ``z`` is exactly 0 where no clean mass is within the window (``log a = -inf``, ``omega(-inf) = 0``).
        """
        y = ws["ylw"] + log_a
        if fast and self.w_finite:  # omega(-inf) = 0 on the empty windows: omega of any finite value there, times 0
            om = wright_omega(torch.nan_to_num(y, nan=math.nan, posinf=math.inf, neginf=0.0)).mul_(ws["reach"])
        else:
            om = wright_omega(y)
        if "box" in ws:
            return _beta_box(ws, om, log_a, self.lam)
        return om - ws["lw"], om / self.lam, None

    def log_domain(self, ws: dict[str, torch.Tensor], la: torch.Tensor, known: bool) -> dict[str, torch.Tensor]:
        """The sweep in the log domain (any configuration): the new duals, ``z`` and the objective."""
        bounded = self.lkb_fast  # then la is finite where x > 0 and far from overflow: so are la + log(...)
        log_a, fast = self.alpha_step(ws, la, known)
        finite = ws["x_fin"] if known else None
        beta, z, phi = self.beta_step(ws, log_a, fast)
        # psi: one Newton step on <P, C> - eps with the psi of this sweep
        (m1, m2), self.fast["moments"] = _moments(
            la, beta, self.cost, ws["psi"], (1, 2), finite if bounded else None, self.fast["moments"]
        )
        psi = _newton_psi(ws["psi"], m1 - ws["eps"], -m2)
        # the next alpha-step's kernel sum
        (lkb,), self.lkb_fast = _lk_fast(-beta, self.cost, psi, (0,), try_fast=self.fast["lkb"])
        self.fast["lkb"] = self.lkb_fast
        d = {"la": la, "beta": beta, "psi": psi, "log_a": log_a, "lkb": lkb}
        if phi is not None:
            d["phi"] = phi
        d["obj"] = _objective(self.stopping, ws, d, self.lam, finite)
        d["z"] = z
        del d["log_a"]
        return d

    def __call__(self, ws: dict[str, torch.Tensor], it: int) -> torch.Tensor:
        raw = ws["log_x"] - ws["lkb"]  # la = log x - log(K * e^{-beta}), -inf where not finite
        # a finite log(K * e^{-beta}) keeps la finite wherever x > 0
        known = self.lkb_fast or bool((torch.isfinite(raw) | ws["x_zero"]).all())
        # (only -inf, on the zero pixels of x, after a finite one)
        la = raw if self.lkb_fast else torch.nan_to_num(raw, nan=-math.inf, posinf=-math.inf, neginf=-math.inf)
        out = _scaled_wong(ws, la, self.cost, self.lam) if (self.scaled and known) else None
        if out is None:
            # a batch outside the scaling form's range stays outside it: the log domain from here on
            self.scaled = self.scaled and not known
            new = self.log_domain(ws, la, known)
        else:
            new, self.lkb_fast = out
        change = (new["obj"] - ws["obj"]).abs()
        ws["close"] = change <= self.atol + self.rtol * new["obj"].abs()  # numpy allclose(old, new)
        ws.update(new)
        return change


def _hu_decide(cost: LocalCost, max_iter: int, budget_tol: float | None, mass_tol: float | None):
    """Per-example stopping (Hu): settled (or past ``max_iter``) and, before leaving, Hu's feasibility
    re-check ``<P, C> <= eps + budget_tol`` and ``|sum z - 1| <= mass_tol``."""

    def decide(ws, r, ok, it, idx) -> Decision:
        cand = ws["close"] | (it > max_iter)
        if (budget_tol is not None or mass_tol is not None) and bool(cand.any()):
            bad = torch.zeros_like(cand)
            if budget_tol is not None:
                bad |= (_moments(ws["la"], ws["beta"], cost, ws["psi"], (1,))[0][0] - ws["eps"]) > budget_tol
            if mass_tol is not None:
                bad |= (_bsum(ws["z"]) - 1).abs() > mass_tol
            cand = cand & ~bad
        return Decision(cand)

    return decide


def _wong_decide(ws, r, ok, it, idx) -> Decision:
    """Wong: every image runs until all objectives have settled."""
    return Decision(ws["close"])


def _solve(
    xn: torch.Tensor,
    wn: torch.Tensor,
    cost: LocalCost,
    eps: torch.Tensor,
    lam: float,
    max_iter: int,
    *,
    box: torch.Tensor | None,
    init: dict[str, torch.Tensor] | None,
    stopping: str,
    per_example: bool,
    rtol: float,
    atol: float,
    budget_tol: float | None,
    mass_tol: float | None,
    extra_iter: int,
):
    """Shared block-coordinate loop of Wong (``box=None``) and Hu (``box`` = (B,) upper bound).

    One sweep is :class:`_Sweep`. An image is done when its objective is ``allclose`` to the previous
    sweep's (numpy's rule, as in both authors' code); Wong's batch runs until every image is done
    (``per_example=False``), Hu's images leave one by one, after his feasibility re-check.
    """
    duals = _initial_duals(xn, init, box)
    (lkb,), lkb_fast = _lk_fast(-duals["beta"], cost, duals["psi"], (0,))  # log(K * e^{-beta}), carried
    state = {
        "la": duals["log_u"],
        "beta": duals["beta"],
        "psi": duals["psi"],
        "z": wn.clone(),  # lam z = omega(...) (or the box), kept from the sweep: no cancellation in w + beta / lam
        "lkb": lkb,
        "obj": torch.full((xn.shape[0],), -math.inf, dtype=xn.dtype, device=xn.device),
    }
    if "phi" in duals:
        state["phi"] = duals["phi"]
    extra = _fixed_inputs(xn, wn, eps, cost, lam, box)
    w_finite = bool(torch.isfinite(extra["ylw"]).all())
    sweep = _Sweep(cost, lam, stopping, rtol, atol, lkb_fast, w_finite, scaled=box is None and stopping == "wong")
    if per_example:
        cap = max_iter + (extra_iter if (budget_tol is not None or mass_tol is not None) else 0)
        opts, decide = SweepOptions(max_iter=cap), _hu_decide(cost, max_iter, budget_tol, mass_tol)
    else:  # Wong's loop stops once the counter exceeds max_iter
        opts, decide = SweepOptions(max_iter=max_iter + 1, retire="all"), _wong_decide
    out = ("la", "beta", "psi", "z", "lkb", "obj") + (("phi",) if "phi" in state else ())
    log = run_sweeps(state, sweep, opts, out=out, extra=extra, decide=decide)
    la, beta, psi = state["la"], state["beta"], state["psi"]
    (m0, m1), _ = _moments(la, beta, cost, psi, (0, 1))
    return state["z"], la, beta, psi, state.get("phi"), log.iterations, m1, m0, log.converged


def _check_common(cost: object, lam: object, max_iter: object, rtol: object, atol: object, who: str) -> None:
    """Argument checks shared by the projections (before any work): clear errors naming the parameter."""
    check_cost(cost, f"{who}: cost")
    check_positive(lam, f"{who}: lam")  # finite: lam = inf or NaN would make every sweep NaN
    check_count(max_iter, f"{who}: max_iter")
    check_nonnegative(rtol, f"{who}: rtol")
    check_nonnegative(atol, f"{who}: atol")


def _check_points(x: torch.Tensor, w: torch.Tensor, radius: object, dtype: object, who: str, name: str = "w") -> None:
    """The clean images ``x`` in [0, 1], a finite ``w`` (or gradient) like them, the radius and the dtype."""
    check_step_point(x, w, name)
    check_radius(radius, x.shape[0], f"{who}: radius")
    if dtype is not None and dtype not in (torch.float32, torch.float64):
        raise TypeError(f"{who}: dtype must be None, torch.float32 or torch.float64, got {dtype!r}")


def _check_state(state: object, x: torch.Tensor, who: str, *, phi: bool) -> None:
    """A warm start from a previous result's ``.state`` of the same batch: keys and shapes."""
    if state is None:
        return
    if not isinstance(state, dict):
        raise TypeError(f"{who}: state must be a dict from a previous result's .state, got {type(state).__name__}")
    shapes = {"log_u": tuple(x.shape), "beta": tuple(x.shape), "psi": (x.shape[0],)}
    if phi and "phi" in state:
        shapes["phi"] = tuple(x.shape)
    for k, shape in shapes.items():
        v = state.get(k)
        if not isinstance(v, torch.Tensor):
            raise ValueError(f"{who}: state[{k!r}] is missing or not a tensor (keys {sorted(state)})")
        if tuple(v.shape) != shape:
            raise ValueError(
                f"{who}: state[{k!r}] has shape {tuple(v.shape)}, expected {shape} (a state of another batch?)"
            )


def _normalise(x: torch.Tensor, w: torch.Tensor, dtype: torch.dtype | None):
    """``x`` and ``w`` divided by ``||x||_1`` in the computation dtype (checked by :func:`_check_points`)."""
    x, w = x.to(dtype or x.dtype), w.to(dtype or x.dtype)
    mass = _bsum(x)
    if bool((mass <= 0).any()):
        i = int((mass <= 0).nonzero()[0])
        raise ValueError(f"image {i} of x is all zero: every clean image needs positive total mass")
    return x / _b4(mass), w / _b4(mass), mass


def sinkhorn_project(
    x: torch.Tensor,
    w: torch.Tensor,
    cost: LocalCost,
    radius: float | torch.Tensor,
    lam: float = 1000.0,
    max_iter: int = 400,
    *,
    state: dict[str, torch.Tensor] | None = None,
    stopping: str = "wong",
    per_example: bool = False,
    rtol: float = 1e-4,
    atol: float = 1e-4,
    dtype: torch.dtype | None = None,
) -> SinkhornResult:
    """Wong et al.'s projected Sinkhorn: project ``w`` onto the entropic Wasserstein ball around ``x``.

    Args:
        x, w: raw clean and perturbed images ``(B, C, H, W)``; both are divided by ``||x||_1`` (per image,
            all channels) as Wong's attack loop does.
        cost: local ground cost (Wong: ``LocalCost(k, p=2)``, i.e. squared pixel distance).
        radius: budget ``eps`` (scalar or ``(B,)``) on ``<P, C>`` in normalised units.
        lam: the regularisation ``lambda`` (quadratic weight; entropy weight 1).
        max_iter: sweeps (Wong stops after ``max_iter + 1`` or when the objective settles).
        state: warm-start duals (``log_u``, ``beta``, ``psi``) from a previous result (Wong: none).
        stopping: ``"wong"`` watches the quantity Wong's code computes (its ``eval_obj`` is called with the
            arguments in the wrong order); ``"dual"`` the correct dual objective.
        per_example: freeze converged examples (Hu) instead of stopping when all have settled (Wong).
        rtol, atol: ``|obj - obj_old| <= atol + rtol |obj_old|``.
        dtype: computation dtype (default: ``x``'s).
    Returns:
        :class:`SinkhornResult` with ``z = (w_n + beta / lam) * ||x||_1`` (not clamped).
    """
    if stopping not in ("wong", "dual"):
        raise ValueError("stopping must be 'wong' or 'dual'")
    _check_common(cost, lam, max_iter, rtol, atol, "sinkhorn_project")
    _check_points(x, w, radius, dtype, "sinkhorn_project")
    _check_state(state, x, "sinkhorn_project", phi=False)
    xn, wn, mass = _normalise(x, w, dtype)
    eps = _as_batch(radius, x.shape[0], xn)
    zn, la, beta, psi, phi, iters, m1, m0, conv = _solve(
        xn, wn, cost, eps, float(lam), int(max_iter), box=None, init=state, stopping=stopping,
        per_example=per_example, rtol=rtol, atol=atol, budget_tol=None, mass_tol=None, extra_iter=0,
    )  # fmt: skip
    return SinkhornResult(
        z=zn * _b4(mass), psi=psi, iterations=iters, transport=m1, mass=m0, converged=conv, log_u=la, beta=beta
    )


def hu_project(
    x: torch.Tensor,
    w: torch.Tensor,
    cost: LocalCost,
    radius: float | torch.Tensor,
    lam: float = 1000.0,
    max_iter: int = 100,
    *,
    state: dict[str, torch.Tensor] | None = None,
    budget_tol: float | None = 1e-3,
    mass_tol: float | None = 1e-2,
    extra_iter: int = 200,
    rtol: float = 1e-4,
    atol: float = 1e-4,
    offset: float = 1e-15,
    stopping: str = "hu",
    dtype: torch.dtype | None = None,
) -> SinkhornResult:
    """Hu et al.'s constrained projected Sinkhorn: Wong's problem plus the box ``z <= 1/N`` (pixel <= 1).

    ``N = ||x||_1`` of the clean image. Hu's code adds ``offset = 1e-15`` to every normalised clean pixel
    (their fix for ``log 0``). It is part of their threat model, not only a numerical guard: the fictitious
    mass can be transported, and on Wong's adversarially trained model dropping it changes the radius at
    which 3 of 4 sampled images are first fooled (0.17 vs 0.20, 0.10 vs 0.12, 0.58 vs 0.47), while with it
    the per-example radii equal the authors' code. Pixels with no clean mass in their window then receive at
    most ~1e-12 of the clean mass in total (exactly 0 with ``offset=0``, which the log-domain solver
    supports). Per-example convergence on the quantity Hu's
    code watches (``stopping="hu"``; ``"dual"`` watches the dual objective); after ``max_iter`` sweeps,
    examples whose plan cost exceeds ``eps + budget_tol`` or whose mass ``|sum z - 1|`` exceeds
    ``mass_tol`` keep iterating, as in Hu's code, but at most ``extra_iter`` more sweeps (Hu's loop has no
    cap). ``converged`` is False for examples stopped by the cap.
    """
    if stopping not in ("hu", "dual"):
        raise ValueError("stopping must be 'hu' or 'dual'")
    _check_common(cost, lam, max_iter, rtol, atol, "hu_project")
    check_count(extra_iter, "hu_project: extra_iter", lower=0)
    for name, v in (("budget_tol", budget_tol), ("mass_tol", mass_tol)):
        if v is not None:
            check_nonnegative(v, f"hu_project: {name} (None or a number)")
    check_nonnegative(offset, "hu_project: offset")
    _check_points(x, w, radius, dtype, "hu_project")
    _check_state(state, x, "hu_project", phi=True)
    xn, wn, mass = _normalise(x, w, dtype)
    xn = xn + offset
    eps = _as_batch(radius, x.shape[0], xn)
    box = 1.0 / mass
    zn, la, beta, psi, phi, iters, m1, m0, conv = _solve(
        xn, wn, cost, eps, float(lam), int(max_iter), box=box, init=state, stopping=stopping,
        per_example=True, rtol=rtol, atol=atol, budget_tol=budget_tol, mass_tol=mass_tol,
        extra_iter=int(extra_iter),
    )  # fmt: skip
    return SinkhornResult(
        z=zn * _b4(mass), psi=psi, iterations=iters, transport=m1, mass=m0, converged=conv, log_u=la,
        beta=beta, phi=phi,
    )  # fmt: skip


def conjugate_sinkhorn(
    x: torch.Tensor,
    grad: torch.Tensor,
    cost: LocalCost,
    radius: float | torch.Tensor,
    lam: float = 1000.0,
    max_iter: int = 400,
    *,
    rtol: float = 1e-4,
    atol: float = 1e-4,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Wong's conjugate Sinkhorn: the entropic Wasserstein steepest-ascent measure for a gradient.

    Solves ``max_{P >= 0} lam <grad, P^T 1> - sum P log P  s.t.  P 1 = x_n, <P, C> <= eps``, whose
    solution is ``P_ij = e^{-alpha_i} K_ij e^{-beta_j}`` with the column dual fixed, ``beta = -lam grad``.
    Only alpha (row marginal) and psi (Newton, as in the projection) are updated; the dual objective
    ``-psi eps - <alpha, x> - <e^{-alpha}, K * e^{-beta}>`` is watched. Returns the transported measure
    ``z = e^{-beta} (K * e^{-alpha})`` in raw units (``* ||x||_1``); zero for examples whose support
    cannot meet the gradient's (Wong's early exit), with ``alpha = log(1/m) + 0.5`` initially.
    """
    _check_common(cost, lam, max_iter, rtol, atol, "conjugate_sinkhorn")
    _check_points(x, grad, radius, dtype, "conjugate_sinkhorn", "grad")
    dt = dtype or x.dtype
    x, grad = x.to(dt), grad.to(dt)
    mass = _bsum(x)
    xn = x / _b4(mass)
    B, m = x.shape[0], x[0].numel()
    eps = _as_batch(radius, B, xn)
    beta = -lam * grad
    log_x = torch.log(xn)
    la = torch.full_like(xn, -(math.log(1.0 / m) + 0.5))
    psi = torch.ones(B, dtype=dt, device=x.device)
    # Wong's early exit: no overlap between the support of x and the gradient's window
    overlap = _bsum(xn * torch.exp(local_lse(torch.log(grad.abs()), cost, eta=1e30))) != 0
    obj_old = torch.full((B,), -math.inf, dtype=dt, device=x.device)
    for i in range(1, max_iter + 2):
        la_new = log_x - _lk(-beta, cost, psi)
        la_new = torch.where(torch.isfinite(la_new), la_new, torch.full_like(la_new, -math.inf))
        la = torch.where(_b4(overlap), la_new, la)
        (m1, m2), _ = _moments(la, beta, cost, psi, (1, 2))
        psi = torch.where(overlap, _newton_psi(psi, m1 - eps, -m2), psi)
        obj = -psi * eps - _xlogx_safe_dot(-la, xn) - _bsum(torch.exp(la + _lk(-beta, cost, psi)))
        if i > max_iter or bool(((obj - obj_old).abs() <= atol + rtol * obj_old.abs()).all()):
            break
        obj_old = obj
    z = torch.exp(-beta + _lk(la, cost, psi))
    z = torch.where(_b4(overlap), z, torch.zeros_like(z))
    return z * _b4(mass)


# ---------------------------------------------------------------------------------------------------
# callable projections for the attack loop
# ---------------------------------------------------------------------------------------------------
class WongProjection:
    """Wong's projection step of the PGD attack: projected Sinkhorn, then ``clamp(0, 1)``.

    ``radius`` is per image in normalised units. No warm start by default (Wong restarts the duals every
    PGD step); ``info`` holds ``plan_cost``, the entropic plan's ``<P, C>`` (Wong's nominal radius: it
    bounds the pair (x, z) only at convergence and before clamping, so it certifies nothing about the
    returned image), ``psi`` and the sweep count.
    """

    needs_mass = True  # images are normalised by their clean mass

    def __init__(
        self,
        cost: LocalCost,
        lam: float = 1000.0,
        max_iter: int = 400,
        *,
        clamp: bool = True,
        warm_start: bool = False,
        stopping: str = "wong",
        dtype: torch.dtype | None = None,
    ) -> None:
        _check_common(cost, lam, max_iter, 0.0, 0.0, "WongProjection")
        if stopping not in ("wong", "dual"):
            raise ValueError("WongProjection: stopping must be 'wong' or 'dual'")
        self.cost, self.lam, self.max_iter = cost, lam, max_iter
        self.clamp, self.warm_start, self.stopping, self.dtype = clamp, warm_start, stopping, dtype

    def __call__(
        self, x: torch.Tensor, w: torch.Tensor, radius: torch.Tensor, state: dict[str, torch.Tensor] | None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        r = sinkhorn_project(
            x, w, self.cost, radius, self.lam, self.max_iter,
            state=state if self.warm_start else None, stopping=self.stopping, dtype=self.dtype,
        )  # fmt: skip
        z = r.z.to(x.dtype)
        if self.clamp:
            z = z.clamp(0, 1)
        info = {"plan_cost": r.transport, "psi": r.psi, "inner_iterations": r.iterations.to(r.psi.dtype)}
        return z, r.state, info


class HuProjection:
    """Hu's projection step: constrained projected Sinkhorn (box inside), warm-started duals.

    Hu's outer loop caps the normalised iterate at ``60/(H W C)`` before projecting (``pre_clamp``, on by
    default as in Hu's attack; it guards the Lambert-W form against overflow and also bounds how far a
    pixel is pushed). The result is clamped to [0, 1] afterwards as Hu does (the box makes this a no-op up
    to the solver tolerance). ``info["plan_cost"]`` is the entropic plan's ``<P, C>`` (Hu's nominal
    radius; the returned image's mass may differ from the clean one's by up to the mass tolerance, 1 %, so
    it is not a certificate).
    """

    needs_mass = True  # images are normalised by their clean mass

    def __init__(
        self,
        cost: LocalCost,
        lam: float = 1000.0,
        max_iter: int = 100,
        *,
        warm_start: bool = True,
        pre_clamp: bool = True,
        extra_iter: int = 200,
        offset: float = 1e-15,
        dtype: torch.dtype | None = None,
    ) -> None:
        _check_common(cost, lam, max_iter, 0.0, 0.0, "HuProjection")
        check_count(extra_iter, "HuProjection: extra_iter", lower=0)
        check_nonnegative(offset, "HuProjection: offset")
        self.cost, self.lam, self.max_iter = cost, lam, max_iter
        self.warm_start, self.pre_clamp, self.extra_iter, self.dtype = warm_start, pre_clamp, extra_iter, dtype
        self.offset = offset

    def __call__(
        self, x: torch.Tensor, w: torch.Tensor, radius: torch.Tensor, state: dict[str, torch.Tensor] | None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        if self.pre_clamp:
            mass = _b4(_bsum(x))
            w = torch.minimum(w / mass, torch.full_like(w, 60.0 / w[0].numel())) * mass
        r = hu_project(
            x, w, self.cost, radius, self.lam, self.max_iter,
            state=state if self.warm_start else None, extra_iter=self.extra_iter, offset=self.offset,
            dtype=self.dtype,
        )  # fmt: skip
        z = r.z.to(x.dtype).clamp(0, 1)
        info = {
            "plan_cost": r.transport,
            "psi": r.psi,
            "inner_iterations": r.iterations.to(r.psi.dtype),
            "converged": r.converged.to(r.psi.dtype),
        }
        return z, r.state, info
