"""The study report: best trials, the best config, plots, parameter importance, TensorBoard.

``write_report(study_dir)`` reads ``<study_dir>/study.db`` read-only (it may run while the
driver writes) and writes into ``<study_dir>/report/``::

    report.html        the page: summary, best trials, plots, importance (images by file name)
    best_trials.csv    the 10 best done trials: trial_id, objective, params, busy_s, epochs
    best_config.yaml   the best trial's params over the study's fixed params, ready for
                       ``python -m candle train --trainer <trainer> best_config.yaml``
    convergence.png    best objective so far vs finished trials and vs wall time
    params.png         objective vs each searched parameter
    importance.png     parameter importance (see ``_importance``)
    tensorboard/       one run per trial for TensorBoard's HParams dashboard

The study's config gives ``objective: {metric, mode}`` (mode ``min`` or ``max``), ``space``
(the search space section: log scales and categories come from it), ``trainer`` and
``params``. The trials' ``objective`` column holds the metric's raw value. Only done trials
with a finite objective are ranked; a pruned trial's objective (at the epoch it was stopped)
is shown in the parameter plots, marked apart, but never ranked.
"""

from __future__ import annotations

import csv
import html
import json
import math
import os
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from candle.errors import ConfigError
from candle.workflow.store import TRIAL_STATUSES, Store, TrialRecord

__all__ = ["write_report"]

TOP = 10  # rows of best_trials.csv
MIN_IMPORTANCE_TRIALS = 5
MAX_IMPORTANCE_TRIALS = 3000  # a larger study: importance from a random sample of its trials


def write_report(study_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None) -> Path:
    """Write the report of the study in ``study_dir`` (default into ``<study_dir>/report``);
    returns the path of ``report.html``."""
    study_dir = Path(study_dir)
    out = Path(out_dir) if out_dir is not None else study_dir / "report"
    with Store(study_dir / "study.db", readonly=True) as store:
        study_id = store.study_id()
        study = store.study(study_id)
        counts = store.counts(study_id)
        trials = store.trials(study_id)
        cfg = study["config"]
        objective = cfg.get("objective") or {}
        metric, mode = str(objective.get("metric", "objective")), objective.get("mode", "min")
        if mode not in ("min", "max"):
            raise ConfigError(f"{store.path}: objective.mode must be min or max, got {mode!r}")
        ranked = _ranked(trials, mode)
        epochs = {t.trial_id: _epochs_run(store, t) for t in ranked[:TOP]}
    out.mkdir(parents=True, exist_ok=True)
    kinds = _param_kinds(cfg.get("space"), trials)
    names = _param_names(kinds, trials)

    _write_best_csv(out / "best_trials.csv", ranked[:TOP], names, epochs)
    best = ranked[0] if ranked else None
    best_yaml = _write_best_config(out / "best_config.yaml", cfg, study["name"], best, metric)
    _plot_convergence(out / "convergence.png", trials, mode, metric)
    has_params = _plot_params(out / "params.png", trials, kinds, metric)
    importance = _importance(ranked, kinds)
    if importance["rows"]:
        _plot_importance(out / "importance.png", importance["rows"])
    else:
        (out / "importance.png").unlink(missing_ok=True)
    _write_tensorboard(out / "tensorboard", trials, metric)

    page = _html(study, counts, trials, ranked, names, epochs, metric, mode, best_yaml)
    page += _html_plots(has_params, importance)
    page += (
        f"<h2>TensorBoard</h2><p><code>tensorboard --logdir {html.escape(str(out))}"
        "/tensorboard</code>: one run per trial, the HParams tab compares them.</p>"
        "</body></html>\n"
    )
    path = out / "report.html"
    path.write_text(page, encoding="utf-8")
    return path


# ----------------------------------------------------------------------------------- data


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _ranked(trials: list[TrialRecord], mode: str) -> list[TrialRecord]:
    """Done trials with a finite objective, best first (ties by trial id)."""
    done = [t for t in trials if t.status == "done" and _finite(t.objective)]
    sign = 1.0 if mode == "min" else -1.0
    return sorted(done, key=lambda t: (sign * t.objective, t.trial_id))


def _epochs_run(store: Store, t: TrialRecord) -> int | None:
    if t.segment:
        return t.segment
    epochs = [m["epoch"] for m in store.metrics(t.trial_id)]
    return max(epochs) if epochs else None


def _param_kinds(space: Any, trials: list[TrialRecord]) -> dict[str, tuple[str, list]]:
    """Searched params -> ("log" | "linear" | "categorical", choices), from the space config
    (only its types, ``log`` and ``choices`` are read: the store keeps JSON with sorted keys,
    so the space's order, which its conditions need, is gone). Without a space: the params
    whose values differ between trials, numeric ones linear and the others categorical."""
    kinds: dict[str, tuple[str, list]] = {}
    if isinstance(space, dict) and space:
        for name, spec in space.items():
            if not isinstance(spec, dict):
                continue  # a fixed value
            kind = spec.get("type") or (
                "categorical" if "choices" in spec else "fixed" if "value" in spec else "float"
            )
            if kind == "categorical":
                kinds[name] = ("categorical", list(spec.get("choices") or []))
            elif kind != "fixed":
                kinds[name] = ("log" if spec.get("log") else "linear", [])
        return kinds
    values: dict[str, list] = {}
    for t in trials:
        for k, v in t.params.items():
            values.setdefault(k, []).append(v)
    for k, vs in values.items():
        distinct = list(dict.fromkeys(json.dumps(v, sort_keys=True) for v in vs))
        if len(distinct) < 2:
            continue
        numeric = all(_finite(v) for v in vs)
        kinds[k] = ("linear", []) if numeric else ("categorical", [json.loads(d) for d in distinct])
    return kinds


def _param_names(kinds: dict[str, Any], trials: list[TrialRecord]) -> list[str]:
    """Every param any trial has: the searched ones first, in the space's order."""
    names = dict.fromkeys(kinds)
    for t in trials:
        names.update(dict.fromkeys(t.params))
    return list(names)


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    return json.dumps(value, sort_keys=True) if isinstance(value, list | dict) else value


# ------------------------------------------------------------------------- csv and config


def _write_best_csv(
    path: Path, best: list[TrialRecord], names: list[str], epochs: dict[int, int | None]
) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["trial_id", "objective", *names, "busy_s", "epochs"])
        for t in best:
            params = [_cell(t.params.get(n)) for n in names]
            writer.writerow(
                [t.trial_id, t.objective, *params, round(t.busy_s, 3), _cell(epochs[t.trial_id])]
            )


def _write_best_config(
    path: Path, cfg: dict, study: str, best: TrialRecord | None, metric: str
) -> str | None:
    """best_config.yaml (the study's fixed params, then the best trial's); its text, or None
    (and no file) when no trial is done."""
    import yaml

    if best is None:
        path.unlink(missing_ok=True)
        return None
    params = {**(cfg.get("params") or {}), **best.params}
    trainer = cfg.get("trainer", "MODULE:CLASS")
    header = (
        f"# Best trial of study {study!r}: trial {best.trial_id}, "
        f"{metric} = {best.objective:.6g}\n"
        f"# Train with it: python -m candle train --trainer {trainer} {path.name}\n"
    )
    text = header + yaml.safe_dump(params, sort_keys=False, default_flow_style=False)
    path.write_text(text, encoding="utf-8")
    return text


# ---------------------------------------------------------------------------------- plots


def _figure(width: float, height: float) -> Any:
    # A bare Figure, not pyplot: no global figure list to leak, no GUI backend; PNG via Agg.
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _plot_convergence(path: Path, trials: list[TrialRecord], mode: str, metric: str) -> None:
    finished = sorted(
        (t for t in trials if t.status in ("done", "failed", "pruned") and t.ended_at),
        key=lambda t: (t.ended_at, t.trial_id),
    )
    fig = _figure(10, 3.8)
    axes = fig.subplots(1, 2)
    if not finished:
        for ax in axes:
            ax.text(0.5, 0.5, "no finished trials yet", ha="center", transform=ax.transAxes)
    else:
        starts = [t.started_at for t in trials if t.started_at] or [finished[0].ended_at]
        t0 = min(starts)
        span = finished[-1].ended_at - t0
        unit, scale = ("h", 3600.0) if span > 7200 else ("min", 60.0) if span > 120 else ("s", 1)
        better = min if mode == "min" else max
        best, xs_n, xs_t, ys, done_n, done_t, done_y = None, [], [], [], [], [], []
        for i, t in enumerate(finished, 1):
            hours = (t.ended_at - t0) / scale
            if t.status == "done" and _finite(t.objective):
                best = t.objective if best is None else better(best, t.objective)
                done_n.append(i), done_t.append(hours), done_y.append(t.objective)
            xs_n.append(i), xs_t.append(hours), ys.append(np.nan if best is None else best)
        for ax, xs, dx, label in (
            (axes[0], xs_n, done_n, "finished trials (by end time)"),
            (axes[1], xs_t, done_t, f"wall time ({unit})"),
        ):
            ax.scatter(dx, done_y, s=10, color="0.6", label="done trial")
            ax.step(xs, ys, where="post", color="C0", label=f"best so far ({mode})")
            ax.set_xlabel(label)
            ax.set_ylabel(metric)
            ax.grid(alpha=0.3)
        axes[0].legend(loc="best", fontsize=8)
    fig.suptitle(f"Convergence: best {metric} so far")
    fig.savefig(path)


def _plot_params(
    path: Path, trials: list[TrialRecord], kinds: dict[str, tuple[str, list]], metric: str
) -> bool:
    """One panel per searched param; False (and no file) when nothing is searched."""
    if not kinds:
        path.unlink(missing_ok=True)
        return False
    ncols = min(len(kinds), 3)
    nrows = math.ceil(len(kinds) / ncols)
    fig = _figure(3.6 * ncols, 2.9 * nrows)
    axes = np.atleast_1d(fig.subplots(nrows, ncols)).ravel()
    groups = {
        "done": [t for t in trials if t.status == "done" and _finite(t.objective)],
        "pruned": [t for t in trials if t.status == "pruned" and _finite(t.objective)],
    }
    style = {
        "done": {"color": "C0", "marker": "o", "s": 14, "label": "done"},
        "pruned": {"color": "0.55", "marker": "x", "s": 14, "label": "pruned (at its last epoch)"},
    }
    rng = np.random.default_rng(0)  # jitter of the categorical strips, the same every time
    for ax, (name, (kind, choices)) in zip(axes, kinds.items(), strict=False):
        for status, group in groups.items():
            pts = [(t.params[name], t.objective) for t in group if t.params.get(name) is not None]
            if not pts:
                continue
            if kind == "categorical":
                labels = [json.dumps(c) for c in choices]
                pos = {lab: i for i, lab in enumerate(labels)}
                for x, _ in pts:  # a value outside the listed choices gets its own column
                    pos.setdefault(json.dumps(x), len(pos))
                xs = np.array([pos[json.dumps(x)] for x, _ in pts], dtype=float)
                ys = np.array([y for _, y in pts])
                if status == "done":
                    per = [ys[xs == i] for i in range(len(pos))]
                    keep = [i for i, v in enumerate(per) if len(v)]
                    ax.boxplot(
                        [per[i] for i in keep],
                        positions=keep,
                        widths=0.5,
                        showfliers=False,
                        manage_ticks=False,
                    )
                ax.scatter(xs + rng.uniform(-0.15, 0.15, len(xs)), ys, alpha=0.7, **style[status])
                ax.set_xticks(range(len(pos)), [str(k).strip('"') for k in pos], fontsize=8)
            else:
                xs = np.array([float(x) for x, _ in pts])
                ax.scatter(xs, [y for _, y in pts], alpha=0.7, **style[status])
                if kind == "log" and (xs > 0).all():
                    ax.set_xscale("log")
        ax.set_xlabel(name + (" (log)" if kind == "log" else ""))
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, loc="best")
    for ax in axes[len(kinds) :]:
        ax.set_visible(False)
    fig.savefig(path)
    return True


def _plot_importance(path: Path, rows: list[dict[str, Any]]) -> None:
    fig = _figure(6, 0.4 * len(rows) + 1.2)
    ax = fig.subplots()
    rows = rows[::-1]  # the most important at the top
    ax.barh(
        [r["param"] for r in rows],
        [r["share"] for r in rows],
        xerr=[r["share_std"] for r in rows],
        color="C0",
    )
    ax.set_xlabel("share of permutation importance (held-out folds)")
    ax.grid(axis="x", alpha=0.3)
    fig.savefig(path)


# ----------------------------------------------------------------------------- importance


def _importance(ranked: list[TrialRecord], kinds: dict[str, tuple[str, list]]) -> dict:
    """Permutation importance of a random forest, measured on held-out folds.

    Why this method: a random forest takes float, int, log, categorical and conditional
    (inactive) parameters as they come -- categories as codes, an inactive value as a code
    below every real one -- and captures interactions, with no tuning. Importance is the rise
    of the cross-validated error when one parameter's column is shuffled: it measures what
    the model learned that *generalizes*, so a parameter the forest merely used to memorize
    noise scores ~0. The forest's own impurity importances (MDI) would not: they favour
    parameters with many distinct values (Strobl et al. 2007) and are measured on the
    training trials. fANOVA (Hutter et al. 2014) decomposes variance over the whole space
    but needs the space's bounds and its own tree walk; the question answered here is the
    practical one (how much does knowing this parameter tell about the objective?).
    The objective enters as its rank, so one diverged trial (loss 1e9) cannot dominate. The
    held-out R^2 of the forest is reported with the numbers: near 0, they mean little.
    """
    names = list(kinds)
    if len(ranked) < MIN_IMPORTANCE_TRIALS or not names:
        why = (
            "no searched parameters"
            if not names
            else f"{len(ranked)} done trial(s) with an objective; at least "
            f"{MIN_IMPORTANCE_TRIALS} are needed"
        )
        return {"rows": [], "note": f"Parameter importance skipped: {why}.", "r2": None}
    from scipy.stats import rankdata
    from sklearn.ensemble import RandomForestRegressor
    from sklearn.model_selection import KFold

    sample = ""
    if len(ranked) > MAX_IMPORTANCE_TRIALS:  # the forests' cost grows with n log n
        pick = np.random.default_rng(0).choice(len(ranked), MAX_IMPORTANCE_TRIALS, replace=False)
        sample = f" (a random sample of the {len(ranked)})"
        ranked = [ranked[i] for i in sorted(pick)]
    x = np.column_stack(
        [_encode_column([t.params.get(n) for t in ranked], *kinds[n]) for n in names]
    )
    y = (rankdata([t.objective for t in ranked]) - 1) / max(len(ranked) - 1, 1)
    n = len(y)
    folds = list(KFold(n_splits=min(5, n), shuffle=True, random_state=0).split(x))
    models = []
    pred = np.empty(n)
    for train, test in folds:
        model = RandomForestRegressor(n_estimators=100, min_samples_leaf=2, random_state=0)
        model.fit(x[train], y[train])
        models.append(model)
        pred[test] = model.predict(x[test])
    base = float(np.mean((pred - y) ** 2))
    r2 = 1.0 - base / max(float(np.var(y)), 1e-12)
    # Column j shuffled over all trials (so that small folds still get mixed), repeat r; each
    # fold's model predicts its rows for every (j, r) in one call (a forest's predict has a
    # fixed cost per call).
    repeats, p = 5, len(names)
    rng = np.random.default_rng(0)
    perms = np.stack([rng.permutation(n) for _ in range(repeats)])  # repeats x n
    pp = np.empty((p, repeats, n))
    for model, (_, test) in zip(models, folds, strict=True):
        batch = np.broadcast_to(x[test], (p, repeats, len(test), p)).copy()
        for j in range(p):
            batch[j, :, :, j] = x[perms[:, test], j]
        pp[:, :, test] = model.predict(batch.reshape(-1, p)).reshape(p, repeats, len(test))
    raw = np.mean((pp - y) ** 2, axis=2) - base  # p x repeats
    mean = np.clip(raw.mean(axis=1), 0.0, None)
    total = float(mean.sum())
    share = mean / total if total > 0 else mean
    share_std = raw.std(axis=1) / total if total > 0 else raw.std(axis=1)
    rows = [
        {
            "param": names[j],
            "share": float(share[j]),
            "share_std": float(share_std[j]),
            "mse_increase": float(raw[j].mean()),
        }
        for j in np.argsort(-share, kind="stable")
    ]
    note = (
        f"Permutation importance of a random forest on {n} done trials{sample}, {len(folds)}-fold "
        f"cross-validated, objective by rank; held-out R\u00b2 of the forest = {r2:.2f}"
        + (" (low: the importances say little)." if r2 < 0.2 else ".")
    )
    return {"rows": rows, "note": note, "r2": r2}


def _encode_column(values: list[Any], kind: str, choices: list) -> np.ndarray:
    """One parameter's values -> numbers for the forest: [0, 1] for numbers (log scale for
    log ones), a category's index for categoricals, -1 where the param is inactive."""
    col = np.full(len(values), -1.0)
    if kind == "categorical":
        codes = {json.dumps(c): i for i, c in enumerate(choices)}
        for i, v in enumerate(values):
            if v is not None:
                col[i] = codes.setdefault(json.dumps(v), len(codes))
        return col
    present = [i for i, v in enumerate(values) if _finite(v) and (kind != "log" or v > 0)]
    if present:
        nums = np.array([float(values[i]) for i in present])
        nums = np.log(nums) if kind == "log" else nums
        lo, hi = nums.min(), nums.max()
        col[present] = (nums - lo) / (hi - lo) if hi > lo else 0.5
    return col


# ---------------------------------------------------------------------------- tensorboard


def _hparam_values(trials: list[TrialRecord]) -> dict[int, dict[str, Any]]:
    """Each trial's params as TensorBoard takes them: numbers, or strings (bools, lists and
    params with mixed types become text, so that a param has one type in every run)."""
    names = {k for t in trials for k in t.params}
    numeric = {
        k: all(_finite(t.params[k]) for t in trials if t.params.get(k) is not None) for k in names
    }
    out: dict[int, dict[str, Any]] = {}
    for t in trials:
        hp: dict[str, Any] = {}
        for k, v in t.params.items():
            if v is None:
                continue
            if numeric[k]:
                hp[k] = float(v)
            elif isinstance(v, str):
                hp[k] = v
            else:
                hp[k] = json.dumps(v, sort_keys=True)
        hp.setdefault("status", t.status)
        out[t.trial_id] = hp
    return out


def _write_tensorboard(root: Path, trials: list[TrialRecord], metric: str) -> None:
    """``root`` holds the experiment (every hparam and metric, once); ``root/trial_<id>`` the
    trial's hparams (with its ``status``), its objective (tagged with the metric's name) and
    its last metrics (``last/<name>``). Runs an earlier report wrote there are removed first,
    so that a second report does not add them twice."""
    from torch.utils.tensorboard import SummaryWriter
    from torch.utils.tensorboard.summary import hparams

    for old in root.glob("trial_*"):
        shutil.rmtree(old)
    for old in root.glob("events.out.tfevents.*"):
        old.unlink()
    if not trials:
        return
    hps = _hparam_values(trials)
    example: dict[str, Any] = {}
    domains: dict[str, set] = {}
    for hp in hps.values():
        for k, v in hp.items():
            example.setdefault(k, v)
            if isinstance(v, str):
                domains.setdefault(k, set()).add(v)
    last = {k for t in trials for k, v in t.metrics.items() if _finite(v) and k != "epoch"}
    tags = [metric, *(f"last/{k}" for k in sorted(last))]
    exp, _, _ = hparams(
        example, dict.fromkeys(tags, 0.0), {k: sorted(v) for k, v in domains.items()}
    )
    with SummaryWriter(log_dir=str(root)) as writer:
        writer.file_writer.add_summary(exp)
    for t in trials:
        _, ssi, sei = hparams(hps[t.trial_id], {})
        with SummaryWriter(log_dir=str(root / f"trial_{t.trial_id:05d}")) as writer:
            writer.file_writer.add_summary(ssi)
            writer.file_writer.add_summary(sei)
            step = t.segment or 0
            if _finite(t.objective):
                writer.add_scalar(metric, t.objective, step)
            for k, v in t.metrics.items():
                if _finite(v) and k != "epoch":
                    writer.add_scalar(f"last/{k}", v, step)


# ----------------------------------------------------------------------------------- html

_CSS = (
    "body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
    "table{border-collapse:collapse;margin:0.5em 0}td,th{border:1px solid #ccc;"
    "padding:3px 8px;text-align:right}th{background:#f3f3f3}pre{background:#f6f6f6;"
    "padding:0.6em}img{max-width:100%}.note{color:#555}"
)


def _table(header: list[str] | None, rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header or [])
    head = f"<tr>{head}</tr>" if head else ""
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_fmt(c))}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table>{head}{body}</table>\n"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(_cell(value))


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s" if m else f"{s}s"


def _html(
    study: dict, counts: dict[str, int], trials: list[TrialRecord], ranked: list[TrialRecord],
    names: list[str], epochs: dict[int, int | None], metric: str, mode: str,
    best_yaml: str | None,
) -> str:  # fmt: skip
    cfg = study["config"]
    title = html.escape(f"Study {study['name']}")
    starts = [t.started_at for t in trials if t.started_at]
    ends = [t.ended_at for t in trials if t.ended_at]
    wall = max(ends) - min(starts) if starts and ends else 0.0
    no_objective = sum(1 for t in trials if t.status == "done" and not _finite(t.objective))
    best = ranked[0] if ranked else None
    summary = [
        ["trainer", cfg.get("trainer", "")],
        ["objective", f"{metric} ({mode})"],
        ["trials", len(trials)],
        *[[status, counts.get(status, 0)] for status in TRIAL_STATUSES],
        ["done without a finite objective", no_objective],
        ["best objective", f"{best.objective:.6g} (trial {best.trial_id})" if best else "none"],
        ["total busy time", _duration(sum(t.busy_s for t in trials))],
        ["wall time", _duration(wall)],
    ]
    parts = [
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{title}</title>"
        f"<style>{_CSS}</style></head><body><h1>{title}</h1>",
        "<h2>Summary</h2>",
        _table(None, summary),
    ]
    reasons = Counter(
        f"{t.status}: {t.reason or 'no reason recorded'}"
        for t in trials
        if t.status in ("failed", "pruned")
    )
    if reasons:
        rows = [[r, n] for r, n in reasons.most_common(10)]
        parts += [
            "<h3>Failed and pruned trials, by reason</h3>",
            _table(["reason", "trials"], rows),
        ]
    parts.append("<h2>Best config</h2>")
    if best_yaml is None:
        parts.append("<p class='note'>No done trial with a finite objective yet.</p>")
    else:
        parts.append(
            "<p><a href='best_config.yaml'>best_config.yaml</a>:</p>"
            f"<pre>{html.escape(best_yaml)}</pre>"
        )
    parts.append("<h2>Best trials</h2><p><a href='best_trials.csv'>best_trials.csv</a></p>")
    rows = [
        [t.trial_id, t.objective, *(t.params.get(n) for n in names), round(t.busy_s, 1),
         epochs.get(t.trial_id)]
        for t in ranked[:TOP]
    ]  # fmt: skip
    parts.append(_table(["trial", metric, *names, "busy_s", "epochs"], rows))
    return "".join(parts)


def _html_plots(has_params: bool, importance: dict) -> str:
    parts = ["<h2>Convergence</h2><img src='convergence.png' alt='convergence'>"]
    parts.append("<h2>Objective vs parameters</h2>")
    if has_params:
        parts.append("<img src='params.png' alt='objective vs each parameter'>")
    else:
        parts.append("<p class='note'>No searched parameters.</p>")
    parts.append(
        f"<h2>Parameter importance</h2><p class='note'>{html.escape(importance['note'])}</p>"
    )
    if importance["rows"]:
        parts.append("<img src='importance.png' alt='parameter importance'>")
        rows = [
            [r["param"], f"{r['share']:.1%}", f"{r['share_std']:.1%}"] for r in importance["rows"]
        ]
        parts.append(_table(["parameter", "share", "\u00b1 std"], rows))
    return "".join(parts)
