"""Bayesian optimization with BoTorch: a GP on the encoded space, qLogNoisyExpectedImprovement.

How a suggestion is made (``ask``)
----------------------------------
1. **Initial design.** The first ``n_initial`` suggestions (default ``max(8, 2 x searched
   params)``, Ax's rule; fewer by the number of ``prior`` observations) are points of a
   scrambled Sobol sequence, point ``index`` for suggestion ``index``. The same Sobol point is
   the fallback while fewer than 2 trials have finished with a finite value.
2. **Model.** A ``SingleTaskGP`` (BoTorch's defaults: RBF kernel with dimension-scaled
   log-normal lengthscale prior, constant mean, Gaussian noise) on ``Space.encode``'s unit
   cube, one-hot columns for categoricals, inactive conditional columns at 0.5. Values are
   standardized and negated (BoTorch maximizes, we minimize). Failed trials (None / NaN) are
   told as the *worst* finite value seen: the model learns to avoid the region (a learning rate
   that diverges is a bad learning rate), and they never pass for good points.
3. **Scale.** Up to ``max_points`` observations (default 256) the GP sees all of them. Past
   that it sees the ``max_points`` nearest the best point so far and the acquisition is
   optimized in their bounding box: a local, trust-region model (TuRBO-like) whose cost is
   flat in the number of observations. An exact GP over all points costs 15 s to fit at
   1,000 points and 386 s at 4,000 here (../shared/FACTS.md).
4. **Acquisition.** ``qLogNoisyExpectedImprovement`` (128 QMC samples) with the running
   trials' configs as ``X_pending``, so parallel suggestions spread out; ``ask(n)`` picks
   its ``n`` points greedily, each one pending for the next. Optimizer: ``raw_samples``
   candidates (Sobol in the box, plus perturbations of the best points), each categorical
   drawn as a valid one-hot and ints rounded, scored by the acquisition; the best
   ``num_restarts`` are polished by L-BFGS-B over their continuous columns with their
   categories held; then each categorical of the winner is switched to every other category
   and the best kept. Points that decode to a pending or already suggested config are
   skipped.
5. **Hyperparameters are fitted in a background thread** (``background=True``, the
   default) on the newest data, so ``ask`` never waits for a fit: it conditions a GP on *all*
   current observations with the most recent fitted hyperparameters (fitted on the data of a
   few tells ago at worst). **Before the first fit has finished**, the GP uses BoTorch's
   default hyperparameters (the modes of its priors, made for unit-cube inputs and
   standardized outputs); ``stats["unfitted_asks"]`` counts those suggestions. With
   ``background=False`` the fit runs inside ``ask`` whenever new results arrived, so a
   suggestion is a function of (seed, index, observations, pending) alone: reproducible,
   and what ``restore`` replays exactly. Fits always start from the default
   hyperparameters (no warm start) for the same reason.

Determinism: each ask seeds the QMC sampler and its candidate draws from (seed, index)
inside ``torch.random.fork_rng`` (the caller's global RNG is untouched). With
``background=True``, which fit had finished when ``ask`` ran is a matter of timing.

Measurements behind the choices (2-core CPU, float64, see ``benchmarks/search_latency.py``
and ``benchmarks/search_hartmann.py`` for the figures in benchmarks/README.md):

- TODO fill in
"""

from __future__ import annotations

import threading
import time
import warnings
import weakref
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from candle.errors import ConfigError
from candle.search.samplers.base import Sampler, Suggestion, clean_value
from candle.search.samplers.simple import SobolSampler
from candle.search.space import Space

__all__ = ["BoTorchSampler"]

_DTYPE = torch.float64


def _quiet():
    """Silence BoTorch's and GPyTorch's numerical chatter (jitter added to a Cholesky,
    L-BFGS stopping on its iteration cap, small or duplicate training sets).

    ``warnings.catch_warnings`` is process-wide; BoTorch's own fitting uses it the same way.
    """
    from botorch.exceptions.warnings import BotorchWarning, InputDataWarning
    from gpytorch.utils.warnings import GPInputWarning, NumericalWarning

    ctx = warnings.catch_warnings(record=True)  # records what BoTorch forces to "always"
    ctx.__enter__()
    for category in (BotorchWarning, InputDataWarning, NumericalWarning, GPInputWarning):
        warnings.simplefilter("ignore", category)
    warnings.filterwarnings("ignore", category=RuntimeWarning, module=r"(botorch|gpytorch|scipy)")
    return ctx


def _gp(X: torch.Tensor, Y: torch.Tensor, state: dict[str, torch.Tensor] | None):
    """A ``SingleTaskGP`` on ``X`` (``n x d``) and ``Y`` (``n x 1``, standardized), with
    hyperparameters ``state`` (None: BoTorch's defaults)."""
    from botorch.models import SingleTaskGP

    model = SingleTaskGP(X, Y, outcome_transform=None)
    if state is not None:
        model.load_state_dict(state)
    return model.eval()


def _fit(X: torch.Tensor, Y: torch.Tensor) -> dict[str, torch.Tensor]:
    """Maximum a posteriori hyperparameters of a GP on ``X`` (``n x d``), ``Y`` (``n x 1``)."""
    from botorch.fit import fit_gpytorch_mll
    from gpytorch.mlls import ExactMarginalLogLikelihood

    ctx = _quiet()
    try:
        model = _gp(X, Y, None)
        fit_gpytorch_mll(ExactMarginalLogLikelihood(model.likelihood, model))
    finally:
        ctx.__exit__(None, None, None)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


class _Fitter:
    """Fits hyperparameters on the sampler's newest training set, in a daemon thread.

    ``request()`` wakes the thread, which takes a snapshot of the data when it starts a fit
    (``snapshot()``: ``(version, X, Y, ...)`` or None), so a burst of tells costs one fit.
    The thread holds the sampler only weakly and ends with it (or at ``close()``).
    """

    def __init__(self, snapshot, background: bool):
        self._snapshot = weakref.WeakMethod(snapshot)
        self.background = background
        self._cv = threading.Condition()
        self._wanted = False
        self._closed = False
        self._thread: threading.Thread | None = None
        self.state: dict[str, torch.Tensor] | None = None
        self.version = -1  # the data version self.state was fitted on
        self.fits = 0
        self.failures = 0
        self.last_fit_s = 0.0
        self.last_error = ""

    def request(self) -> None:
        if not self.background:
            return
        with self._cv:
            if self._closed:
                return
            self._wanted = True
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="botorch-fit", daemon=True)
                self._thread.start()
            self._cv.notify_all()

    def wait_first(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for a first fit to finish; whether one has."""
        deadline = time.monotonic() + timeout
        with self._cv:
            while self.state is None and (self._wanted or self._busy):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cv.wait(left)
            return self.state is not None

    _busy = False

    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._wanted and not self._closed:
                    self._cv.wait()
                if self._closed:
                    return
                self._wanted = False
                self._busy = True
            try:
                alive = self.fit_now()
            finally:
                with self._cv:
                    self._busy = False
                    self._cv.notify_all()
            if not alive:
                return

    def fit_now(self) -> bool:
        """Fit on the current data, in the calling thread; False once the sampler is gone."""
        snapshot = self._snapshot()
        if snapshot is None:
            return False
        try:
            snap = snapshot()
            del snapshot
            if snap is None or snap[0] <= self.version:
                return True
            version, X, Y = snap[:3]
            t0 = time.perf_counter()
            state = _fit(X, Y)
        except Exception as e:  # a failed fit keeps the previous hyperparameters
            with self._cv:
                self.failures += 1
                self.last_error = f"{type(e).__name__}: {e}"
            return True
        with self._cv:
            if version > self.version:
                self.state, self.version = state, version
                self.fits += 1
                self.last_fit_s = time.perf_counter() - t0
        return True

    def close(self, wait: bool = True) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify_all()
            thread, self._thread = self._thread, None
        if wait and thread is not None and thread is not threading.current_thread():
            thread.join()


class BoTorchSampler(Sampler):
    """GP Bayesian optimization with qLogNEI, pending points and a local model at scale.

    Args:
        space: the search space.
        seed: seeds the Sobol design and every ask's random draws.
        n_initial: Sobol points before the model (default ``max(8, 2 x searched params)``).
        prior: ``(config, value)`` observations from earlier studies, used as data from the
            start (they are not this study's suggestions); they shorten the Sobol design.
        max_points: observations the GP sees; past it, the ones nearest the best point.
        background: fit hyperparameters in a background thread (see the module docstring).
        raw_samples, num_restarts, maxiter: the acquisition optimizer's budget.
    """

    name = "botorch"

    def __init__(
        self,
        space: Space,
        seed: int = 0,
        *,
        n_initial: int | None = None,
        prior: Sequence[tuple[dict[str, Any], float | None]] = (),
        max_points: int = 256,
        background: bool = True,
        raw_samples: int = 256,
        num_restarts: int = 4,
        maxiter: int = 50,
    ):
        super().__init__(space, seed)
        if n_initial is None:
            n_initial = max(8, 2 * space.n_raw)
        for key, value, least in (
            ("n_initial", n_initial, 0),
            ("max_points", max_points, 8),
            ("raw_samples", raw_samples, 1),
            ("num_restarts", num_restarts, 1),
            ("maxiter", maxiter, 1),
        ):
            if not isinstance(value, int) or value < least:
                raise ConfigError(
                    f"botorch sampler: {key} must be an integer >= {least}, got {value!r}"
                )
        if raw_samples < num_restarts:
            raise ConfigError(
                f"botorch sampler: raw_samples ({raw_samples}) must be at least "
                f"num_restarts ({num_restarts})"
            )
        self.max_points, self.raw_samples = max_points, raw_samples
        self.first_fit_wait_s = 2.0
        self.num_restarts, self.maxiter = num_restarts, maxiter
        self._lock = threading.Lock()  # guards the data arrays (the fit thread reads them)
        self._X = np.zeros((0, space.dim))  # encodings of everything told, prior first
        self._y = np.zeros(0)  # values, NaN for failed trials
        self._keys: set[str] = set()  # configs told, to skip duplicates
        self._version = 0
        for config, value in prior:
            self._add(config, clean_value(value))
        self.n_prior = len(self._y)
        self._prior_keys = set(self._keys)
        self.n_initial = max(0, n_initial - int(np.isfinite(self._y).sum()))
        self._sobol = SobolSampler(space, seed)
        self._fitter = _Fitter(self._training_set, background)
        self.stats = {"sobol": 0, "model": 0, "unfitted_asks": 0, "local": 0}
        self._quiet_restore = False

    # ------------------------------------------------------------------ data
    def _add(self, config: dict[str, Any], value: float | None) -> None:
        x = self.space.encode(config)
        with self._lock:
            self._X = np.vstack([self._X, x[None]])
            self._y = np.append(self._y, np.nan if value is None else value)
            self._keys.add(_key(self.space.canonical(config)))
            self._version += 1

    def tell(self, config: dict[str, Any], value: float | None) -> None:
        super().tell(config, value)
        self._add(config, clean_value(value))
        if not self._quiet_restore:
            self._fitter.request()

    def restore(self, asked: int, observations: Sequence[tuple[dict[str, Any], float | None]]):
        with self._lock:
            n = self.n_prior
            self._X, self._y = self._X[:n], self._y[:n]
            self._keys = set(self._prior_keys)
            self._version += 1
        self._quiet_restore = True
        try:
            super().restore(asked, observations)
        finally:
            self._quiet_restore = False
        self._fitter.fit_now()  # once, here: the next ask then sees what the live one did

    def _training_set(self):
        """``(version, X, Y, lo, hi, local)``: what the GP sees now. X ``n x d`` (encoded),
        Y ``n x 1`` (standardized, negated: larger is better), the box ``lo``, ``hi`` (``d``)
        to search, and whether the model is local. None with fewer than 2 finite values."""
        with self._lock:
            X, y, version = self._X, self._y, self._version
        ok = np.isfinite(y)
        if ok.sum() < 2:
            return None
        y = np.where(ok, y, y[ok].max())  # failed trials count as the worst seen
        lo, hi, local = np.zeros(X.shape[1]), np.ones(X.shape[1]), False
        if len(y) > self.max_points:
            best = X[np.flatnonzero(ok)[np.argmin(y[ok])]]
            near = np.argsort(((X - best) ** 2).sum(axis=1), kind="stable")[: self.max_points]
            X, y = X[near], y[near]
            lo, hi, local = X.min(axis=0), X.max(axis=0), True
        std = y.std(ddof=1)
        Y = -(y - y.mean()) / (std if std > 0 else 1.0)
        return (
            version,
            torch.as_tensor(X, dtype=_DTYPE),
            torch.as_tensor(Y, dtype=_DTYPE)[:, None],
            lo,
            hi,
            local,
        )

    # ------------------------------------------------------------------ ask
    def ask(self, n: int, pending: Sequence[dict[str, Any]] = ()) -> list[Suggestion]:
        if n <= 0:
            return []
        out: list[Suggestion] = []
        sobol_left = self.n_initial - self.asked
        while len(out) < n and sobol_left > 0:
            out.append(self._sobol_suggestion())
            sobol_left -= 1
        if len(out) == n:
            return out
        data = self._training_set() if self.space.dim else None
        if data is None:
            while len(out) < n:
                out.append(self._sobol_suggestion())
            return out
        if not self._fitter.background:
            if self._fitter.version != data[0]:
                self._fitter.fit_now()
        elif self._fitter.state is None:
            self._fitter.request()
            self._fitter.wait_first(self.first_fit_wait_s)
        taken = [_key(self.space.canonical(c)) for c in pending] + [_key(s.config) for s in out]
        X_pending = [self.space.encode(c) for c in pending] + [
            self.space.encode(s.config) for s in out
        ]
        configs = self._model_configs(n - len(out), data, X_pending, set(taken))
        for config in configs:
            out.append(self._next(config))
        return out

    def _sobol_suggestion(self) -> Suggestion:
        self.stats["sobol"] += 1
        u = self._sobol.points(self.asked, 1)[0]
        return self._next(self.space.from_unit(u))

    def _model_configs(self, n, data, X_pending, taken) -> list[dict[str, Any]]:
        from botorch.acquisition.logei import qLogNoisyExpectedImprovement
        from botorch.sampling import SobolQMCNormalSampler

        _, X, Y, lo, hi, local = data
        state = self._fitter.state if self._fitter.version >= 0 else None
        seed = int(np.random.SeedSequence([self.seed, self.asked]).generate_state(1)[0])
        ctx = _quiet()
        try:
            with torch.random.fork_rng():
                torch.manual_seed(seed)
                model = _gp(X, Y, state)
                top = torch.argsort(Y[:, 0], descending=True)[:32]
                pend = torch.as_tensor(np.array(X_pending), dtype=_DTYPE).reshape(-1, X.shape[1])
                acq = qLogNoisyExpectedImprovement(
                    model,
                    X_baseline=X[top],
                    X_pending=pend if len(pend) else None,
                    sampler=SobolQMCNormalSampler(torch.Size([128]), seed=seed % 2**31),
                    prune_baseline=True,
                )
                out = []
                for i in range(n):
                    x = self._optimize(acq, X, Y, lo, hi, taken, seed + i)
                    config = self.space.decode(x)
                    out.append(config)
                    taken.add(_key(config))
                    pend = torch.cat(
                        [pend, torch.as_tensor(self.space.encode(config), dtype=_DTYPE)[None]]
                    )
                    if i + 1 < n:
                        acq.set_X_pending(pend)
        finally:
            ctx.__exit__(None, None, None)
        self.stats["model"] += n
        self.stats["unfitted_asks"] += n if state is None else 0
        self.stats["local"] += n if local else 0
        return out

    def _optimize(self, acq, X, Y, lo, hi, taken: set[str], seed: int) -> np.ndarray:
        """The best point found for ``acq`` in the box ``lo``..``hi`` whose config is not in
        ``taken``: an encoding (``d``) of a config as ``decode`` gives it."""
        from botorch.generation.gen import gen_candidates_scipy

        space, d = self.space, self.space.dim
        gen = torch.Generator().manual_seed(seed)
        lo_t, hi_t = torch.as_tensor(lo, dtype=_DTYPE), torch.as_tensor(hi, dtype=_DTYPE)
        n_near = self.raw_samples // 4
        u = torch.quasirandom.SobolEngine(d, scramble=True, seed=seed % 2**31).draw(
            self.raw_samples - n_near, dtype=_DTYPE
        )
        raw = lo_t + (hi_t - lo_t) * u
        for cols in space.categorical_columns:  # one valid category per row
            allowed = [c for c in cols if hi[c] >= 0.5]
            raw[:, cols] = 0.0
            if allowed:
                pick = torch.randint(len(allowed), (len(raw),), generator=gen)
                raw[torch.arange(len(raw)), torch.as_tensor(allowed)[pick]] = 1.0
        # perturbations of the best points, keeping their categories
        best = X[torch.argsort(Y[:, 0], descending=True)[:5]]
        near = best[torch.randint(len(best), (n_near,), generator=gen)]
        noise = 0.05 * (hi_t - lo_t) * torch.randn(n_near, d, generator=gen, dtype=_DTYPE)
        noise[:, [c for cols in space.categorical_columns for c in cols]] = 0.0
        raw = torch.cat([raw, torch.minimum(torch.maximum(near + noise, lo_t), hi_t)])
        raw = self._canonical(raw)
        with torch.no_grad():
            values = acq(raw[:, None, :])
        order = torch.argsort(values, descending=True)
        starts, seen = [], set()
        for i in order.tolist():
            key = _key(space.decode(raw[i].numpy()))
            if key not in seen:
                seen.add(key)
                starts.append(i)
            if len(starts) == self.num_restarts:
                break
        x0 = raw[starts]
        # L-BFGS-B over each start's active continuous columns, its categories held
        L, U = lo_t.expand_as(x0).clone(), hi_t.expand_as(x0).clone()
        for j in range(len(x0)):
            held = self._held_columns(x0[j])
            L[j, held], U[j, held] = x0[j, held], x0[j, held]
        polished, _ = gen_candidates_scipy(
            x0[:, None, :],
            acq,
            lower_bounds=L[:, None, :],
            upper_bounds=U[:, None, :],
            options={"maxiter": self.maxiter},
            use_parallel_mode=False,
        )
        cands = torch.cat([self._canonical(polished[:, 0, :].detach()), x0])
        # switch each categorical of the best point to each other allowed category
        with torch.no_grad():
            cvals = acq(cands[:, None, :])
        top = cands[int(torch.argmax(cvals))]
        swaps = []
        for cols in space.categorical_columns:
            for c in cols:
                if hi[c] >= 0.5 and top[c] < 0.5:
                    x = top.clone()
                    x[cols] = 0.0
                    x[c] = 1.0
                    swaps.append(x)
        if swaps:
            swapped = self._canonical(torch.stack(swaps))
            with torch.no_grad():
                svals = acq(swapped[:, None, :])
            cands, cvals = torch.cat([cands, swapped]), torch.cat([cvals, svals])
        for i in torch.argsort(cvals, descending=True).tolist():
            if _key(space.decode(cands[i].numpy())) not in taken:
                return cands[i].numpy()
        # every candidate is taken (a small discrete space): any raw point that is not
        for i in order.tolist():
            if _key(space.decode(raw[i].numpy())) not in taken:
                return raw[i].numpy()
        return cands[int(torch.argmax(cvals))].numpy()

    def _canonical(self, X: torch.Tensor) -> torch.Tensor:
        """Each row (``n x d``) as the encoding of the config it decodes to: ints rounded,
        one-hot groups made one-hot, inactive parameters at their fixed encoding."""
        rows = [self.space.encode(self.space.decode(x)) for x in X.numpy()]
        return torch.as_tensor(np.array(rows), dtype=_DTYPE).reshape(X.shape)

    def _held_columns(self, x: torch.Tensor) -> list[int]:
        """Columns the continuous polish must not move for this point: every one-hot column,
        and the columns of parameters inactive in its config."""
        config = self.space.decode(x.numpy())
        held = []
        for p in self.space.searched:
            cols = self.space.columns[p.name]
            if len(cols) > 1 or p.name not in config or hasattr(p, "choices"):
                held.extend(cols)
        return held

    # ------------------------------------------------------------------ lifecycle
    def close(self) -> None:
        self._fitter.close()

    def __del__(self) -> None:
        fitter = getattr(self, "_fitter", None)
        if fitter is not None:
            fitter.close(wait=False)


def _key(config: dict[str, Any]) -> str:
    return repr(sorted((k, repr(v)) for k, v in config.items()))
