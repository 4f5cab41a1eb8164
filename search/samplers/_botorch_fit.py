"""GP hyperparameter fitting for the BoTorch sampler, in a worker process.

Why a process and not a thread: Python's warning filters are process-wide, and BoTorch both
fits (``fit_gpytorch_mll``) and optimizes acquisitions (``gen_candidates_scipy``) inside
``warnings.catch_warnings``; two threads doing that at once restore each other's filters in
the wrong order, which can leave a recording ``showwarning`` installed for the rest of the
process (warnings then vanish silently) or turn a warning into an exception in ``ask``. A
worker process has its own warnings, its own GIL (the driver's ask does not wait for it) and
one torch thread, leaving the other core to the driver.

Protocol (stdin/stdout, length-prefixed pickles): the parent sends ``(version, X, Y)``
(numpy, ``n x d`` and ``n x 1``); the worker answers ``("ok", version, state, seconds)``
with the fitted ``state_dict`` as numpy arrays, or ``("error", version, message)``. The
worker exits when its stdin closes (its parent ended or closed it).

    python -m candle.search.samplers._botorch_fit     # started by BoTorchSampler
"""

from __future__ import annotations

import contextlib
import os
import pickle
import subprocess
import sys
import threading
import time
import warnings
import weakref
from collections.abc import Callable
from typing import Any

import torch

with warnings.catch_warnings():  # linear_operator's import calls the deprecated torch.jit.script
    warnings.simplefilter("ignore", DeprecationWarning)
    from botorch.exceptions.warnings import BotorchWarning, InputDataWarning
    from botorch.fit import fit_gpytorch_mll
    from botorch.models import SingleTaskGP
    from gpytorch.mlls import ExactMarginalLogLikelihood
    from gpytorch.utils.warnings import GPInputWarning, NumericalWarning

__all__ = ["Fitter", "fit", "gp", "quiet"]

State = dict[str, torch.Tensor]
MAX_WORKER_FAILURES = 3


class quiet(warnings.catch_warnings):  # a context manager, named like one
    """Silence BoTorch's and GPyTorch's numerical chatter: jitter added to a Cholesky,
    L-BFGS-B stopping at its iteration cap (BoTorch forces those to "always": they are
    recorded and dropped), small or duplicate training sets."""

    def __init__(self) -> None:
        super().__init__(record=True)

    def __enter__(self):
        log = super().__enter__()
        for category in (BotorchWarning, InputDataWarning, NumericalWarning, GPInputWarning):
            warnings.simplefilter("ignore", category)
        warnings.filterwarnings(
            "ignore", category=RuntimeWarning, module=r"(botorch|gpytorch|linear_operator|scipy)"
        )
        return log


def gp(X: torch.Tensor, Y: torch.Tensor, state: State | None) -> SingleTaskGP:
    """A ``SingleTaskGP`` on ``X`` (``n x d``) and ``Y`` (``n x 1``, standardized: no
    outcome transform, so fitted hyperparameters carry over to new data), with
    hyperparameters ``state`` (None: BoTorch's defaults, the modes of its priors)."""
    model = SingleTaskGP(X, Y, outcome_transform=None)
    if state is not None:
        model.load_state_dict(state)
    return model.eval()


def fit(X: torch.Tensor, Y: torch.Tensor) -> State:
    """MAP hyperparameters of a GP on ``X`` (``n x d``), ``Y`` (``n x 1``), from BoTorch's
    default starting values (no warm start: the result depends on the data alone)."""
    with quiet():
        model = gp(X, Y, None)
        fit_gpytorch_mll(ExactMarginalLogLikelihood(model.likelihood, model))
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


class Fitter:
    """The latest fitted hyperparameters of a sampler's GP, refitted in a worker process.

    ``snapshot()`` (held weakly: the fitter must not keep its sampler alive) returns
    ``(version, X, Y, ...)`` for the data now, or None when there is nothing to fit;
    ``version`` grows with every change. ``request()`` asks for a fit of the newest data: a
    thread sends it to the worker and waits for the answer, so a burst of tells costs one
    fit. ``fit_now()`` fits in the calling process instead (``background=False``, restore).
    """

    def __init__(self, snapshot: Callable[[], Any], background: bool):
        self._snapshot = weakref.WeakMethod(snapshot)
        self.background = background
        self._cv = threading.Condition()
        self._wanted = self._busy = self._closed = False
        self._thread: threading.Thread | None = None
        self._proc: subprocess.Popen | None = None
        self.state: State | None = None
        self.version = -1  # the data version ``state`` was fitted on
        self.fits = self.failures = 0
        self.last_fit_s = 0.0
        self.last_error = ""
        self.backoff_s = 1.0  # before restarting a crashed worker: 2, then 4 s

    # ------------------------------------------------------------------ driver side
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
        """Wait up to ``timeout`` s while a first fit is under way; whether one is done."""
        deadline = time.monotonic() + timeout
        with self._cv:
            while self.state is None and (self._wanted or self._busy):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cv.wait(left)
            return self.state is not None

    def fit_now(self) -> None:
        """Fit the current data in this process and thread."""
        snap = self._take()
        if snap is None:
            return
        version, X, Y = snap
        t0 = time.perf_counter()
        try:
            state = fit(X, Y)
        except Exception as e:  # a failed fit keeps the previous hyperparameters
            self._failed(f"{type(e).__name__}: {e}")
            return
        self._store(version, state, time.perf_counter() - t0)

    def close(self, wait: bool = True) -> None:
        """Stop fitting: the worker exits after its current fit; ``wait``: until it has."""
        with self._cv:
            self._closed = True
            self._cv.notify_all()
            thread = self._thread
            proc = self._proc
        if proc is not None and proc.stdin is not None:
            with contextlib.suppress(OSError):
                proc.stdin.close()
        if wait and thread is not None and thread is not threading.current_thread():
            thread.join()

    # ------------------------------------------------------------------ internals
    def _take(self):
        """``(version, X, Y)`` newer than the fitted one, or None."""
        sampler_snapshot = self._snapshot()
        if sampler_snapshot is None:
            return None
        snap = sampler_snapshot()
        if snap is None or snap[0] <= self.version:
            return None
        return snap[0], snap[1], snap[2]

    def _store(self, version: int, state: State, seconds: float) -> None:
        with self._cv:
            if version > self.version:
                self.state, self.version = state, version
                self.fits += 1
                self.last_fit_s = seconds
            self._cv.notify_all()

    def _failed(self, message: str) -> None:
        with self._cv:
            self.failures += 1
            self.last_error = message
            self._cv.notify_all()

    def _loop(self) -> None:
        """The thread: no BoTorch calls here (see the module docstring), only I/O. After
        ``MAX_WORKER_FAILURES`` failed worker starts or deaths in a row, it gives up and
        the sampler fits in-process, in ``ask`` (``background`` becomes False)."""
        crashes = 0
        try:
            while True:
                with self._cv:
                    while not self._wanted and not self._closed:
                        self._cv.wait()
                    if self._closed or self._snapshot() is None:
                        return
                    self._wanted, self._busy = False, True
                try:
                    snap = self._take()
                    if snap is not None:
                        self._remote_fit(*snap)
                    crashes = 0
                except Exception as e:  # the worker died or could not start
                    crashes += 1
                    self._failed(f"fit worker: {type(e).__name__}: {e}")
                    self._stop_worker()
                finally:
                    with self._cv:
                        self._busy = False
                        self._cv.notify_all()
                if crashes >= MAX_WORKER_FAILURES:
                    self.background = False
                    return
                if crashes:
                    with self._cv:  # back off before a new worker; close() cuts this short
                        self._cv.wait(self.backoff_s * 2.0**crashes)
                        self._wanted = True  # the data is still unfitted: try again
        finally:
            self._stop_worker(kill=False)

    def _remote_fit(self, version: int, X: torch.Tensor, Y: torch.Tensor) -> None:
        proc = self._worker()
        _send(proc.stdin, (version, X.numpy(), Y.numpy()))
        reply = _recv(proc.stdout)
        if reply is None:
            raise RuntimeError(f"the worker exited (code {proc.poll()})")
        if reply[0] == "ok":
            _, version, arrays, seconds = reply
            self._store(version, {k: torch.from_numpy(v) for k, v in arrays.items()}, seconds)
        else:
            self._failed(reply[2])

    def _worker(self) -> subprocess.Popen:
        with self._cv:
            if self._proc is not None and self._proc.poll() is None:
                return self._proc
        env = dict(os.environ)  # the worker imports candle from where this process does
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
        proc = subprocess.Popen(
            [sys.executable, "-m", "candle.search.samplers._botorch_fit"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
        )
        with self._cv:
            self._proc = proc
        return proc

    def _stop_worker(self, kill: bool = True) -> None:
        with self._cv:
            proc, self._proc = self._proc, None
        if proc is None:
            return
        with contextlib.suppress(OSError):
            proc.stdin.close()  # the worker exits when its input ends
        try:
            if kill:
                proc.kill()
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stdout.close()


def _send(stream, obj: Any) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(len(data).to_bytes(8, "little") + data)
    stream.flush()


def _recv(stream) -> Any:
    header = stream.read(8)
    if len(header) < 8:
        return None
    return pickle.loads(stream.read(int.from_bytes(header, "little")))


def main() -> int:
    """The worker: fit what comes in on stdin until it closes."""
    torch.set_num_threads(1)  # the other core is the driver's
    requests = sys.stdin.buffer
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # stray prints must not hit the pipe
    while (job := _recv(requests)) is not None:
        version, X, Y = job
        t0 = time.perf_counter()
        try:
            state = fit(torch.from_numpy(X), torch.from_numpy(Y))
            arrays = {k: v.numpy() for k, v in state.items()}
            _send(replies, ("ok", version, arrays, time.perf_counter() - t0))
        except Exception as e:
            _send(replies, ("error", version, f"{type(e).__name__}: {e}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
