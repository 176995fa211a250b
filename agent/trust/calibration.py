"""Calibration maps for confidences: temperature, Platt and isotonic scaling, and abstention.

A raw confidence (``agent.trust.confidence.combine_confidence``) is a ranking signal, not yet a
probability. Fitted on a held-out set of (confidence, was-it-right) pairs, a calibration map
turns it into one (Guo et al. 2017; Platt 1999; Zadrozny & Elkan 2002):

- ``temperature``: ``sigmoid(logit(p) / T)`` — one parameter, keeps the ranking, fixes over- or
  under-confidence;
- ``platt``: ``sigmoid(a · logit(p) + b)`` — also fixes a shifted base rate;
- ``isotonic``: the pool-adjacent-violators fit of accuracy as a non-decreasing step function of
  confidence (interpolated), the most flexible, and the hungriest for data;
- ``auto``: the method with the lowest cross-validated log-loss on the fit set; the identity map
  competes too, so a confidence that is already calibrated is left alone.

``abstain_threshold`` picks the lowest confidence above which the answered items reach a target
accuracy. A ``Calibration`` is saved as JSON beside the model configuration it was fitted for;
``load_calibration`` reads it back (``None`` when there is no file).

A map is only valid on the kind of image it was fitted on: how often the agent is right at a
given raw confidence on medloop's synthetic phantoms says nothing about real radiographs (the
phantom map's ECE of 0.03 became 0.36 on real images). Every map therefore records its
``domain`` (``image_domain``: ``phantom`` or ``clinical``), and the answer node applies it only
to questions about images of that domain (``domain_of``).

Within a domain, closed questions (yes/no, either-or) and open ones are different populations:
on real images the agent was right on about half of its closed answers and on almost none of
its open ones, at similar raw confidences. One map over both pulls the closed answers down and
leaves the open ones far too high (cross-fitted ECE 0.11 on 234 VQA-RAD items, against 0.04
with a map per form). ``fit_calibration(..., forms=)`` therefore also fits a map per question
form (``question_form``) that has enough items, kept in ``Calibration.by_form``; the answer
node applies the map of the question's form (``for_form``), the pooled map otherwise.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from tools.question_form import is_closed_question

__all__ = [
    "CLINICAL",
    "CLOSED",
    "DOMAINS",
    "FORMS",
    "ISOTONIC_MIN_ITEMS",
    "METHODS",
    "MIN_FORM_ITEMS",
    "OPEN",
    "PHANTOM",
    "Calibration",
    "abstain_threshold",
    "domain_of",
    "fit_calibration",
    "image_domain",
    "load_calibration",
    "question_form",
    "save_calibration",
]

PHANTOM = "phantom"
CLINICAL = "clinical"
DOMAINS = (PHANTOM, CLINICAL)

CLOSED = "closed"
OPEN = "open"
FORMS = (CLOSED, OPEN)
MIN_FORM_ITEMS = 30
"""A question form with fewer fitting items than this is calibrated by the pooled map."""
ISOTONIC_MIN_ITEMS = 200
"""``auto`` considers the isotonic map only when fitted on at least this many items.

Below that its step function follows the noise, and a 5-fold log-loss on 20-odd items a fold
is too noisy to reject it: on 320 real agent items, per-form maps chosen by ``auto`` (isotonic
for the 65 open items) gave a cross-fitted ECE of 0.056-0.066 over three fold seeds, Platt
maps 0.024-0.044."""
def question_form(question: str) -> str:
    """``closed`` for a closed question (yes/no, either-or: ``is_closed_question``); or ``open``.

    Read off the question alone, so that the evaluation fits its maps on exactly the strata
    the answer node applies them to.
    """
    return CLOSED if is_closed_question(question) else OPEN


Method = Literal["identity", "temperature", "platt", "isotonic"]
METHODS: tuple[Method, ...] = ("identity", "temperature", "platt", "isotonic")
_EPS = 1e-4


@dataclass
class Calibration:
    """A fitted calibration map (JSON-able).

    Attributes:
        method: which map.
        params: ``{"T": ...}`` for temperature, ``{"a": ..., "b": ...}`` for Platt; for isotonic
            ``{"x": [...], "y": [...]}`` knots (raw confidence → accuracy), interpolated linearly.
        abstain_below: the abstention threshold on the *calibrated* confidence, or None.
        target_accuracy: the accuracy the threshold was chosen for.
        n_fit: items it was fitted on; ``fitted_for``: the model configuration (e.g. the
            ``--llm`` spec and the prompt versions); ``metrics``: before/after figures.
        domain: the image domain it was fitted on (``phantom`` or ``clinical``). It defaults to
            ``phantom`` because every map saved before domains were recorded was fitted on the
            phantom suite; a map read from such a file is therefore never applied to clinical
            images.
    """

    method: Method = "identity"
    params: dict[str, float | list[float]] = field(default_factory=dict)
    abstain_below: float | None = None
    target_accuracy: float | None = None
    n_fit: int = 0
    fitted_for: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    domain: str = PHANTOM
    by_form: dict[str, Calibration] = field(default_factory=dict)

    def __call__(self, p: float) -> float:
        """The calibrated probability of a raw confidence ``p``."""
        return float(self.apply(np.asarray([p], dtype=np.float64))[0])

    def for_form(self, form: str) -> Calibration:
        """The map for questions of ``form`` (``question_form``): its own, else this one."""
        return self.by_form.get(form, self)

    def apply_forms(self, p: Sequence[float] | np.ndarray,
                    forms: Sequence[str] | None) -> np.ndarray:
        """``apply`` with each value mapped by the map of its question's form."""
        p = np.asarray(p, dtype=np.float64)
        if forms is None or not self.by_form:
            return self.apply(p)
        if len(forms) != p.size:
            raise ValueError("need one question form per confidence")
        out = self.apply(p)
        f = np.asarray(forms)
        for form, sub in self.by_form.items():
            mask = f == form
            if mask.any():
                out[mask] = sub.apply(p[mask])
        return out

    def apply(self, p: np.ndarray) -> np.ndarray:
        """Vectorised ``__call__`` (the pooled map, whatever the question's form)."""
        p = np.clip(np.asarray(p, dtype=np.float64), _EPS, 1 - _EPS)
        z = np.log(p / (1 - p))
        if self.method == "temperature":
            out = 0.5 * (1.0 + np.tanh(0.5 * z / float(self.params["T"])))  # type: ignore[arg-type]
        elif self.method == "platt":
            a, b = float(self.params["a"]), float(self.params["b"])  # type: ignore[arg-type]
            out = 0.5 * (1.0 + np.tanh(0.5 * (a * z + b)))
        elif self.method == "isotonic":
            xs = np.asarray(self.params["x"], dtype=np.float64)
            ys = np.asarray(self.params["y"], dtype=np.float64)
            out = np.interp(p, xs, ys)
        else:
            out = p
        return np.clip(out, 0.0, 1.0)


def _log_loss(p: np.ndarray, y: np.ndarray) -> float:
    p = np.clip(p, _EPS, 1 - _EPS)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def _fit_logistic(z: np.ndarray, y: np.ndarray, *, slope_only: bool) -> tuple[float, float]:
    """Maximum-likelihood ``(a, b)`` of ``sigmoid(a z + b)`` (b = 0 if ``slope_only``).

    L-BFGS on the log-loss with a small ridge toward a = 1, so separable data stays finite.
    """
    from scipy.optimize import minimize

    def nll(theta: np.ndarray) -> tuple[float, np.ndarray]:
        a, b = float(theta[0]), 0.0 if slope_only else float(theta[1])
        t = a * z + b
        # log(1 + e^t) - y t, computed stably
        loss = float(np.sum(np.logaddexp(0.0, t) - y * t)) + 1e-3 * (a - 1.0) ** 2
        q = 0.5 * (1.0 + np.tanh(0.5 * t))
        ga = float(np.sum((q - y) * z)) + 2e-3 * (a - 1.0)
        grad = [ga] if slope_only else [ga, float(np.sum(q - y))]
        return loss, np.asarray(grad)

    x0 = np.array([1.0] if slope_only else [1.0, 0.0])
    res = minimize(nll, x0, jac=True, method="L-BFGS-B")
    a = float(res.x[0])
    return a, 0.0 if slope_only else float(res.x[1])


def _isotonic(p: np.ndarray, y: np.ndarray) -> tuple[list[float], list[float]]:
    """Pool-adjacent-violators: knots of the non-decreasing least-squares fit of y on p.

    Equal confidences are pooled first, so each knot x has one value.
    """
    xs_u, inv = np.unique(p, return_inverse=True)
    sums = np.bincount(inv, weights=y.astype(np.float64))
    counts = np.bincount(inv).astype(np.float64)
    # blocks of [sum_y, count, first x index, last x index]
    blocks: list[list[float]] = []
    for i in range(xs_u.size):
        blocks.append([float(sums[i]), float(counts[i]), i, i])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] >= blocks[-1][0] / blocks[-1][1]:
            s_, c_, _, hi = blocks.pop()
            blocks[-1][0] += s_
            blocks[-1][1] += c_
            blocks[-1][3] = hi
    xs: list[float] = []
    vals: list[float] = []
    for s_, c_, lo, hi in blocks:
        # A little shrinkage toward 0.5 keeps a one-item block from claiming 0 or 1.
        v = (s_ + 0.5) / (c_ + 1.0)
        for j in sorted({int(lo), int(hi)}):
            xs.append(float(xs_u[j]))
            vals.append(v)
    # shrinkage can undo monotonicity between blocks of different sizes: restore it
    return xs, [float(v) for v in np.maximum.accumulate(np.asarray(vals))]


def _fit_one(method: Method, p: np.ndarray, y: np.ndarray) -> Calibration:
    z = np.log(np.clip(p, _EPS, 1 - _EPS) / (1 - np.clip(p, _EPS, 1 - _EPS)))
    if method == "temperature":
        a, _ = _fit_logistic(z, y, slope_only=True)
        return Calibration("temperature", {"T": 1.0 / max(a, 1e-3)})
    if method == "platt":
        a, b = _fit_logistic(z, y, slope_only=False)
        return Calibration("platt", {"a": a, "b": b})
    if method == "isotonic":
        xs, ys = _isotonic(p, y)
        return Calibration("isotonic", {"x": xs, "y": ys})
    return Calibration("identity", {})


def fit_calibration(
    confidences: Sequence[float],
    correct: Sequence[bool | int | float],
    *,
    method: Method | Literal["auto"] = "auto",
    folds: int = 5,
    seed: int = 0,
    forms: Sequence[str] | None = None,
) -> Calibration:
    """Fit a calibration map on held-out ``(confidence, correct)`` pairs.

    ``auto`` compares every method (identity included) by ``folds``-fold cross-validated
    log-loss and refits the best on all the data, so a map is only adopted when it helps on
    items it was not fitted on. ``forms`` (each pair's ``question_form``) adds a map per form
    with at least ``MIN_FORM_ITEMS`` pairs, each choosing its own method, beside the pooled
    one. Raises ValueError for empty or mismatched inputs.
    """
    p = np.asarray(confidences, dtype=np.float64)
    y = np.asarray(correct, dtype=np.float64)
    if p.size == 0 or p.shape != y.shape:
        raise ValueError("need equally many confidences and outcomes, at least one")
    if forms is not None:
        if len(forms) != p.size:
            raise ValueError("need one question form per confidence")
        pooled = fit_calibration(p.tolist(), y.tolist(), method=method, folds=folds, seed=seed)
        kinds = np.asarray(forms)
        for form in sorted(set(kinds.tolist())):
            mask = kinds == form
            if int(mask.sum()) >= MIN_FORM_ITEMS:
                pooled.by_form[form] = fit_calibration(p[mask].tolist(), y[mask].tolist(),
                                                       method=method, folds=folds, seed=seed)
        return pooled
    if method != "auto":
        cal = _fit_one(method, p, y)
    else:
        k = min(folds, p.size)
        fold = np.random.default_rng(seed).permutation(p.size) % k
        scores: dict[Method, float] = {}
        for m in METHODS:
            losses = []
            for f in range(k):
                train, test = fold != f, fold == f
                if not train.any() or not test.any():
                    continue
                losses.append(_log_loss(_fit_one(m, p[train], y[train]).apply(p[test]), y[test]))
            scores[m] = float(np.mean(losses)) if losses else math.inf
        allowed = [m for m in METHODS if m != "isotonic" or p.size >= ISOTONIC_MIN_ITEMS]
        best = min(allowed, key=lambda m: scores[m])
        cal = _fit_one(best, p, y)
        cal.metrics = {f"cv_log_loss_{m}": round(v, 5) for m, v in scores.items()}
    cal.n_fit = int(p.size)
    return cal


def abstain_threshold(
    confidences: Sequence[float], correct: Sequence[bool | int | float], target_accuracy: float
) -> float | None:
    """The lowest threshold t at which the items answered (confidence >= t) reach the target.

    Items with confidence >= t must be right at least ``target_accuracy`` of the time; None
    when no non-empty set of the most confident items reaches it.

    Use calibrated confidences: the threshold is then a probability a user can read.
    """
    p = np.asarray(confidences, dtype=np.float64)
    y = np.asarray(correct, dtype=np.float64)
    order = np.argsort(-p, kind="stable")
    ps, ys = p[order], y[order]
    acc = np.cumsum(ys) / np.arange(1, ys.size + 1)
    best: float | None = None
    for i in range(ps.size):
        # Only cut between distinct confidences: ties are answered or abstained together.
        if i + 1 < ps.size and ps[i + 1] == ps[i]:
            continue
        if acc[i] >= target_accuracy:
            best = float(ps[i])
    return best


def image_domain(source_format: str | None, meta: Mapping[str, Any] | None = None) -> str:
    """``phantom`` for an image made by ``agent.evaluation.phantoms``, else ``clinical``.

    The phantom generator marks its images with ``source_format="phantom"`` and
    ``meta["phantom"] = True`` (the blank-image baseline keeps both); an image read from a file
    (DICOM, PNG, JPEG, NIfTI) is taken to be clinical, the safe side: a clinical map is fitted
    on real images, while a phantom map applied to one would claim an accuracy it never had.
    """
    if source_format == PHANTOM or bool((meta or {}).get("phantom")):
        return PHANTOM
    return CLINICAL


def domain_of(images: Iterable[Any]) -> str:
    """The domain of a question about ``images`` (``LoadedImage`` or ``ImageRef`` objects).

    ``phantom`` only when there is at least one image and every one is a phantom; a question
    about a clinical image, or about no image at all, is ``clinical``.
    """
    domains = [image_domain(getattr(im, "source_format", None), getattr(im, "meta", None))
               for im in images]
    return PHANTOM if domains and all(d == PHANTOM for d in domains) else CLINICAL


def save_calibration(cal: Calibration, path: str | Path) -> Path:
    """Write ``cal`` as JSON to ``path`` (folders created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(asdict(cal), indent=2) + "\n", encoding="utf-8")
    return path


def load_calibration(path: str | Path) -> Calibration | None:
    """Read a calibration saved by ``save_calibration``; None when the file does not exist.

    A file that exists but is not a calibration raises ValueError naming it.
    """
    path = Path(path)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        subs = data.pop("by_form", None) or {}
        cal = Calibration(**data)
        # a form's map belongs to its parent's domain (files before 2026-11-30 said "phantom")
        cal.by_form = {str(k): Calibration(**{**v, "domain": cal.domain})
                       for k, v in subs.items()}
    except (json.JSONDecodeError, TypeError, AttributeError) as exc:
        raise ValueError(f"{path.name}: not a medloop calibration file ({exc})") from exc
    for c in (cal, *cal.by_form.values()):
        if c.method not in METHODS:
            raise ValueError(f"{path.name}: unknown calibration method {c.method!r}")
    return cal

