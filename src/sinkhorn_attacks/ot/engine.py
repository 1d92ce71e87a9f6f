"""The block-ascent loop shared by every Sinkhorn-type solver of the library.

A solver supplies one *sweep* (its half-steps) acting on a working set: a dict of per-image tensors whose
first dimension runs over the images still being solved. The engine owns what surrounds the sweep, once:

* the active set: an image that is done leaves the working set (its tensors are written back and the
  working set is compacted, so a sweep does no gather/scatter), or, with ``retire="all"``, the batch runs
  until every image is done (Wong et al.'s rule);
* iteration counts, last residuals, converged flags and the cap on sweeps;
* optional over-relaxation ``x <- x + omega (T(x) - x)`` (Thibault et al. 2017) with its guards: an image
  whose residual grows past ``DIVERGED`` times its best gets ``omega`` halved towards 1 (a non-finite
  iterate restarts through the solver's ``restart``), one that makes no 10% progress in ``STALL`` sweeps
  continues with ``omega = 1``, a plain float32 solve stalled below ``FLOOR * tol`` stops there, and one
  whose observed rate cannot reach ``tol`` within ``HOPELESS`` times the sweeps left stops unconverged.

The sweep returns the per-image residual; an optional ``decide`` hook turns it into a :class:`Decision`
(the images that are done, default ``residual <= tol``, and those whose progress is measured afresh after
a change of the problem, e.g. a new multiplier).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

__all__ = ["SweepOptions", "Decision", "SweepLog", "run_sweeps", "relaxed", "default_tol"]

DIVERGED = 4.0  # residual above this multiple of the image's best: omega is halved towards 1
STALL = 30  # sweeps without 10% progress after which a relaxed image continues with omega = 1
FLOOR = 10.0  # a plain float32 solve stalled (3 x STALL sweeps) below this multiple of tol stops there
CHECK = 50  # sweeps between two checkpoints of the hopeless-case detector
HOPELESS = 20.0  # stop an image whose projected sweeps to reach tol exceed this multiple of the sweeps left


def default_tol(dtype: torch.dtype) -> float:
    """Default residual tolerance: ``1e-5`` in float32 (attack use), ``1e-10`` in float64 (references)."""
    return 1e-5 if dtype == torch.float32 else 1e-10


@dataclass(frozen=True)
class SweepOptions:
    """How long a solver sweeps: carried unchanged from a preset to the loop.

    Attributes:
        tol: residual at which an image is done (``None``: :func:`default_tol` of the data's dtype).
        max_iter: cap on sweeps.
        relax: over-relaxation ``omega`` in ``[1, 2)`` (1: plain block-coordinate ascent).
        retire: ``"each"`` (an image leaves when done) or ``"all"`` (the batch runs until all are done).
    """

    tol: float | None = None
    max_iter: int = 2000
    relax: float = 1.0
    retire: str = "each"

    def __post_init__(self) -> None:
        if self.tol is not None and not (isinstance(self.tol, (int, float)) and self.tol > 0):
            raise ValueError(f"tol must be a positive number or None, got {self.tol!r}")
        if isinstance(self.max_iter, bool) or not isinstance(self.max_iter, int) or self.max_iter < 1:
            raise ValueError(f"max_iter must be an integer >= 1, got {self.max_iter!r}")
        if not (isinstance(self.relax, (int, float)) and 1.0 <= self.relax < 2.0):
            raise ValueError(f"relax must be in [1, 2), got {self.relax!r}")
        if self.retire not in ("each", "all"):
            raise ValueError(f"retire must be 'each' or 'all', got {self.retire!r}")

    def resolved_tol(self, dtype: torch.dtype) -> float:
        return default_tol(dtype) if self.tol is None else float(self.tol)


@dataclass
class SweepLog:
    """Per image of the whole batch: sweeps run, last residual, done within the cap."""

    iterations: torch.Tensor
    residual: torch.Tensor
    converged: torch.Tensor


def relaxed(old: torch.Tensor, new: torch.Tensor, omega: torch.Tensor) -> torch.Tensor:
    """``old + omega (new - old)`` where both are finite, else ``new`` (infinite potentials are exact)."""
    out = torch.addcmul(old, omega, new - old)  # NaN exactly where old or new is infinite (inf - inf, inf * 0)
    return torch.where(torch.isnan(out), new, out)


def run_sweeps(
    state: dict[str, torch.Tensor],
    sweep: Callable[[dict[str, torch.Tensor], int], torch.Tensor],
    opts: SweepOptions,
    *,
    out: tuple[str, ...],
    extra: dict[str, torch.Tensor] | None = None,
    guarded: bool = False,
    decide: Callable[..., Decision] | None = None,
    restart: Callable[[dict[str, torch.Tensor], torch.Tensor, torch.Tensor], None] | None = None,
    on_leave: Callable[[dict[str, torch.Tensor], torch.Tensor, torch.Tensor], None] | None = None,
) -> SweepLog:
    """Run ``sweep`` on the images of ``state`` until each is done or the cap is reached.

    Args:
        state: per-image tensors of the whole batch (first dimension ``B``); the keys in ``out`` are
            updated in place with the final iterates.
        sweep: ``sweep(ws, it) -> residual (n,)``; updates the working set ``ws`` (the running images'
            tensors, ``extra`` included) in place. A guarded loop's sweep reads the per-image relaxation
            ``ws["omega"]`` ``(n, 1, 1, 1)`` (1 on the first sweep, then ``opts.relax``) and applies it.
        opts: tolerance, cap, relaxation, retirement rule.
        out: the keys of ``state`` written back.
        extra: per-image inputs that travel with the working set (not written back).
        guarded: run the relaxation guards and the hopeless-case detector (module docstring).
        decide: ``decide(ws, residual, ok, it, batch_index) -> Decision``, where ``ok`` is "residual at
            tolerance" (guarded: or stalled at float32's floor, and not diverging); default: done = ok.
        restart: ``restart(ws, mask, batch_index)`` resets images after a non-finite residual (guarded loops;
            without it they stop unconverged).
        on_leave: ``on_leave(ws, mask, batch_index)`` is called before the images in ``mask`` leave.
    Returns:
        :class:`SweepLog` for the whole batch.
    """
    first = state[out[0]]
    B, dev, dt = first.shape[0], first.device, first.dtype
    tol = opts.resolved_tol(dt)
    iters = torch.zeros(B, dtype=torch.long, device=dev)
    resid = torch.full((B,), math.inf, dtype=dt, device=dev)
    conv = torch.zeros(B, dtype=torch.bool, device=dev)
    idx = torch.arange(B, device=dev)
    ws = _working_set(state, out, extra, guarded)
    for it in range(1, opts.max_iter + 1):
        r = sweep(ws, it)
        iters[idx] = it
        resid[idx] = r
        d, stop = _verdict(ws, r, it, tol, opts, idx, guarded=guarded, decide=decide, restart=restart)
        if opts.retire == "all":
            if bool(d.done.all()):
                conv[:] = True
                break
            continue
        if bool(stop.any()):
            conv[idx[d.done]] = True
            ws, idx = _retire(state, ws, out, stop, idx, on_leave)
            if idx.numel() == 0:
                break
    if idx.numel():  # images still running at the cap (or, with retire="all", the whole batch)
        _write_back(state, ws, out, idx, on_leave)
    return SweepLog(iters, resid, conv)


def _working_set(
    state: dict[str, torch.Tensor], out: tuple[str, ...], extra: dict[str, torch.Tensor] | None, guarded: bool
) -> dict[str, torch.Tensor]:
    """The sweep's working set at the start: the iterates ``out``, the ``extra`` inputs and, for a guarded
    loop, the relaxation ``omega = 1`` (the first sweep is plain) and the guards' progress records."""
    first = state[out[0]]
    B, dev, dt = first.shape[0], first.device, first.dtype
    ws = {k: state[k] for k in out}
    ws.update(extra or {})
    if guarded:
        ws.update(
            omega=torch.ones(B, 1, 1, 1, dtype=dt, device=dev),  # the first sweep is plain
            _best=torch.full((B,), math.inf, dtype=dt, device=dev),
            _stall=torch.zeros(B, dtype=torch.long, device=dev),
            _ref=torch.full((B,), math.inf, dtype=dt, device=dev),  # residual at the last checkpoint
            _ref_it=torch.zeros(B, dtype=torch.long, device=dev),
        )
    return ws


def _verdict(
    ws: dict[str, torch.Tensor],
    r: torch.Tensor,
    it: int,
    tol: float,
    opts: SweepOptions,
    idx: torch.Tensor,
    *,
    guarded: bool,
    decide: Callable[..., Decision] | None,
    restart: Callable[[dict[str, torch.Tensor], torch.Tensor, torch.Tensor], None] | None,
) -> tuple[Decision, torch.Tensor]:
    """After a sweep with residuals ``r``: the solver's :class:`Decision` and the images that stop (done, or
    hopeless under the guards: ``ok = r <= tol`` unguarded, see :func:`_guard_before` otherwise)."""
    if guarded:
        ok, hopeless, stalled, diverged = _guard_before(ws, r, it, tol, opts)
    else:
        ok, hopeless = r <= tol, None
    d = Decision(ok) if decide is None else decide(ws, r, ok, it, idx)
    stop = d.done
    if guarded:
        if d.fresh is not None:  # progress is measured afresh after a change of the problem
            ws["_ref_it"][d.fresh] = it
            ws["_ref"][d.fresh] = math.inf
        hopeless = hopeless | _guard_after(ws, r, stalled, diverged, restart, idx)
        stop = stop | hopeless
    return d, stop


def _retire(
    state: dict[str, torch.Tensor],
    ws: dict[str, torch.Tensor],
    out: tuple[str, ...],
    stop: torch.Tensor,
    idx: torch.Tensor,
    on_leave: Callable[[dict[str, torch.Tensor], torch.Tensor, torch.Tensor], None] | None,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Images in ``stop`` leave: their iterates are written back to ``state`` and the working set is
    compacted to the others (every per-image tensor, i.e. first dimension ``n``). Returns the new working
    set and batch index."""
    if on_leave is not None:
        on_leave(ws, stop, idx)
    for k in out:
        state[k][idx[stop]] = ws[k][stop]
    keep = ~stop
    n = keep.shape[0]
    return {k: (v[keep] if v.dim() and v.shape[0] == n else v) for k, v in ws.items()}, idx[keep]


def _write_back(
    state: dict[str, torch.Tensor],
    ws: dict[str, torch.Tensor],
    out: tuple[str, ...],
    idx: torch.Tensor,
    on_leave: Callable[[dict[str, torch.Tensor], torch.Tensor, torch.Tensor], None] | None,
) -> None:
    """The iterates of the images still in the working set at the end (batch index ``idx``) into ``state``."""
    if on_leave is not None:
        on_leave(ws, torch.ones(idx.numel(), dtype=torch.bool, device=idx.device), idx)
    for k in out:
        if idx.numel() < state[k].shape[0]:
            state[k][idx] = ws[k]
        elif state[k] is not ws[k]:
            state[k].copy_(ws[k])


@dataclass
class Decision:
    """A solver's verdict after one sweep, per image of the working set."""

    done: torch.Tensor  # (n,) bool: leaves converged
    fresh: torch.Tensor | None = None  # (n,) bool: the problem changed, progress is measured afresh


def _guard_before(ws, r, it: int, tol: float, opts: SweepOptions):
    """Guards read after a sweep: ``(ok, hopeless, stalled, diverged)``; updates the progress records."""
    dt = r.dtype
    if it == 1:
        ws["omega"] = torch.full_like(ws["omega"], float(opts.relax))
    best_r = ws["_best"]
    diverged = ~(r <= DIVERGED * best_r)  # also NaN
    # stalled: no 10% progress for STALL sweeps (over-relaxation amplifies rounding noise near the floor)
    ws["_stall"] = torch.where(r < 0.9 * best_r, torch.zeros_like(ws["_stall"]), ws["_stall"] + 1)
    plain = ws["omega"].reshape(-1) == 1.0
    # plain float32 sweeps stuck at the rounding level (float64's floor is far below any usable tol)
    at_floor = (ws["_stall"] >= 3 * STALL) & plain & (r <= FLOOR * tol) & (dt == torch.float32)
    stalled = (ws["_stall"] >= STALL) & ~plain
    ok = ((r <= tol) | at_floor) & ~diverged
    # hopeless: at the rate seen since the last checkpoint, tol is out of reach within the sweeps left
    chk = (it - ws["_ref_it"]) >= CHECK
    rate = (r / ws["_ref"]).clamp_min(1e-300) ** (1.0 / CHECK)
    need = torch.log(torch.as_tensor(tol, dtype=dt) / r.clamp_min(1e-300)) / torch.log(rate.clamp(max=1 - 1e-16))
    hopeless = chk & ~ok & (ws["_ref_it"] > 0) & torch.isfinite(r) & (need > HOPELESS * (opts.max_iter - it))
    ws["_ref"] = torch.where(chk, r, ws["_ref"])
    ws["_ref_it"] = torch.where(chk, torch.full_like(ws["_ref_it"], it), ws["_ref_it"])
    return ok, hopeless, stalled, diverged


def _guard_after(ws, r, stalled, diverged, restart, idx) -> torch.Tensor:
    """Act on stalled and diverging images; returns the images that stop unconverged after a restart-less
    non-finite iterate."""
    stop = torch.zeros_like(diverged)
    any_stalled, any_diverged = torch.stack([stalled.any(), diverged.any()]).tolist()
    if any_stalled:  # relaxed sweeps stuck: plain sweeps from here
        ws["omega"][stalled] = 1.0
        ws["_stall"][stalled] = 0
    ws["_best"] = torch.minimum(ws["_best"], r)
    if any_diverged:  # damp omega towards 1 (plain ascent converges from any finite point)
        om_d = 1.0 + 0.5 * (ws["omega"][diverged] - 1.0)
        ws["omega"][diverged] = torch.where(om_d < 1.05, torch.ones_like(om_d), om_d)
        ws["_best"][diverged] = r[diverged]
        bad = diverged & ~torch.isfinite(r)
        if bool(bad.any()):  # non-finite iterate: restart from the initial point, plainly
            if restart is None:
                stop = bad
            else:
                restart(ws, bad, idx)
                ws["omega"][bad] = 1.0
                ws["_best"][bad] = math.inf
    return stop
