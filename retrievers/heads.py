"""Trained heads: light classifiers on frozen image embeddings, saved with a case library.

``medloop library train`` fits one head per label task of a library (a task is the part before
the colon of labels written ``task:value``: ``organ:chest``, ``modality:ct``, ``plane:axial``,
``finding:normal`` — any task a site labels), on the library's own image vectors. A head is a
multinomial logistic regression (scikit-learn) on standardised features, followed by a
temperature fitted on out-of-fold predictions (3-fold, stratified), so that its probabilities
are calibrated rather than the regression's raw, over-confident ones on a few hundred cases,
and mixed with the uniform by Laplace's ``1 / (n + 2)`` (``Head.doubt``): no head says 1.00
about an image after ``n`` fitting cases.

Saved as ``ROOT/heads.json`` (plain numbers, no pickle): per task the classes, the weights
``(K, D)`` and biases ``(K,)`` folded over the standardisation, the temperature, how many
cases it was fitted on, and the image embedder's identity (a head refuses vectors from another
embedder). ``head_classify_tools`` offers them as a ``classify`` backend.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from langchain_core.tools import BaseTool
from pydantic import Field

from retrievers.header_labels import header_labels, unknown_to_heads
from retrievers.similar import LIBRARY_DOMAIN, SHIPPED_DOMAIN
from retrievers.typicality import LIBRARY_IMAGES, flag_if_unlike, library_typicality
from tools.base import ImageArgs
from tools.errors import ToolFailure, ToolInputError
from tools.evidence import Assertion, Evidence
from tools.packaged import LITE_MEDSAM
from tools.spec import ToolDeps, ToolSpec
from tools.store import ImageStore
from tools.vision.classify import CLASSIFY_EXAMPLES

__all__ = [
    "HEADS_FILE",
    "PROJECTIONS",
    "TOOLS",
    "Head",
    "fit_head",
    "head_classify_tools",
    "joint_plane",
    "library_labels",
    "load_heads",
    "predict_heads",
    "read_labels",
    "save_heads",
    "train_and_save",
    "train_heads",
]

HEADS_FILE = "heads.json"
_TEMPERATURES = np.exp(np.linspace(np.log(0.05), np.log(20.0), 81))
_C = 1.0  # L2 strength on standardised features; fixed a priori, not tuned on the dev set


@dataclass
class Head:
    """One task's classifier: ``softmax((x @ weights.T + bias) / temperature)``.

    ``x`` is an image embedding ``(N, D)`` from the embedder named ``embedder``; the result is
    ``(N, K)`` probabilities over ``classes``. ``fitted_on`` counts the cases per class.
    """

    task: str
    classes: list[str]
    weights: np.ndarray
    bias: np.ndarray
    temperature: float
    embedder: str
    fitted_on: dict[str, int]

    def logits(self, x: np.ndarray) -> np.ndarray:
        """Uncalibrated class scores ``(N, K)``."""
        return np.asarray(x, np.float64) @ self.weights.T + self.bias

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """Calibrated probabilities ``(N, K)``, rows summing to 1, none above 1 - doubt (K-1)/K.

        The tempered softmax mixed with the uniform by ``doubt``: where the out-of-fold
        predictions were all right, the temperature that fits them best is the sharpest one
        tried, and the shipped organ and plane heads said 1.00; a head CT, lossily compressed,
        was then "abdomen 1.00" (pydicom's 693_J2KI). A head fitted on 21 images has not
        earned that.
        """
        p = _softmax(self.logits(np.atleast_2d(x)) / self.temperature)
        return (1.0 - self.doubt) * p + self.doubt / len(self.classes)

    @property
    def doubt(self) -> float:
        """``1 / (n + 2)`` for ``n`` fitting cases: the least doubt they allow (Laplace's rule).

        Laplace's estimate of an error rate after ``n`` cases without one; 0.009 for the
        shipped organ head (111 images), 0.043 for its plane head (21).
        """
        return 1.0 / (sum(self.fitted_on.values()) + 2)

    def as_json(self) -> dict[str, Any]:
        """The ``heads.json`` entry."""
        d = asdict(self)
        d["weights"] = self.weights.round(7).tolist()
        d["bias"] = self.bias.round(7).tolist()
        return d


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _fit_linear(x: np.ndarray, y: Sequence[str], classes: list[str], c: float = _C,
                standardise: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Weights ``(K, D)`` and bias ``(K,)`` on the raw features (standardisation folded in)."""
    from sklearn.linear_model import LogisticRegression

    mu = x.mean(axis=0) if standardise else np.zeros(x.shape[1])
    sd = x.std(axis=0) + 1e-6 if standardise else np.ones(x.shape[1])
    lr = LogisticRegression(C=c, max_iter=3000)
    lr.fit((x - mu) / sd, list(y))
    coef, icpt = np.asarray(lr.coef_, np.float64), np.asarray(lr.intercept_, np.float64)
    if len(classes) == 2:  # sklearn keeps one row for two classes: logits [0, w.x + b]
        coef = np.vstack([np.zeros_like(coef), coef])
        icpt = np.concatenate([[0.0], icpt])
    order = [list(lr.classes_).index(c) for c in classes]
    coef, icpt = coef[order], icpt[order]
    weights = coef / sd
    return weights, icpt - weights @ mu


def _temperature(x: np.ndarray, y: Sequence[str], classes: list[str], c: float = _C,
                 standardise: bool = True) -> float:
    """The temperature minimising the out-of-fold negative log-likelihood (1.0 if too few)."""
    from sklearn.model_selection import StratifiedKFold

    counts = Counter(y)
    n_splits = min(3, min(counts.values()))
    if n_splits < 2:
        return 1.0
    yi = np.array([classes.index(c) for c in y])
    oof = np.zeros((len(y), len(classes)))
    for fit, held in StratifiedKFold(n_splits, shuffle=True, random_state=0).split(x, yi):
        sub = sorted({classes[i] for i in yi[fit]})
        w, b = _fit_linear(x[fit], [classes[i] for i in yi[fit]], sub, c, standardise)
        z = np.full((len(held), len(classes)), -1e9)
        z[:, [classes.index(c) for c in sub]] = x[held] @ w.T + b
        oof[held] = z
    nll = [-np.log(_softmax(oof / t)[np.arange(len(yi)), yi] + 1e-12).mean()
           for t in _TEMPERATURES]
    return float(_TEMPERATURES[int(np.argmin(nll))])


def fit_head(x: np.ndarray, y: Sequence[str], task: str = "label", embedder: str = "",
             calibrate: bool = True, c: float = _C, standardise: bool = True) -> Head:
    """A calibrated logistic-regression head on embeddings ``x`` ``(N, D)`` for labels ``y``.

    ``c`` is the inverse L2 strength, on standardised features unless ``standardise`` is
    False (unit vectors whose scale already means something). Raises ``ToolInputError`` when
    ``y`` has fewer than two classes.
    """
    x = np.asarray(x, np.float64)
    classes = sorted(set(y))
    if len(classes) < 2:
        raise ToolInputError(f"task {task!r}: needs at least two classes, has {classes}")
    weights, bias = _fit_linear(x, y, classes, c, standardise)
    temp = _temperature(x, y, classes, c, standardise) if calibrate else 1.0
    return Head(task, classes, weights, bias, temp, embedder, dict(Counter(y)))


def library_labels(library: Any) -> tuple[list[int], dict[str, dict[int, str]]]:
    """The image rows of a ``CaseLibrary`` and, per task, row -> value from its labels.

    Labels without a colon are not a task (there is no telling a negative from an unlabelled
    case) and are left out.
    """
    rows = sorted(int(i) for i in library.image_index.ids())
    records = library.db.get(rows)
    tasks: dict[str, dict[int, str]] = {}
    for rid in rows:
        rec = records.get(rid)
        for lab in rec.labels if rec else []:
            if ":" in lab:
                task, value = lab.split(":", 1)
                tasks.setdefault(task, {})[rid] = value
    return rows, tasks


def train_heads(library: Any, tasks: Sequence[str] | None = None,
                min_per_class: int = 2) -> dict[str, Head]:
    """Fit a head per label task of ``library`` (a ``CaseLibrary`` with an image index).

    Classes with fewer than ``min_per_class`` cases are left out of that task's head; a task
    left with one class is skipped. Saves nothing: see ``save_heads``.
    """
    if library.image_index is None or library.image_embedder is None:
        raise ToolInputError("the library has no image index to train heads on")
    _, by_task = library_labels(library)
    heads: dict[str, Head] = {}
    for task in sorted(by_task if tasks is None else tasks):
        rows_values = by_task.get(task, {})
        counts = Counter(rows_values.values())
        keep = {r: v for r, v in rows_values.items() if counts[v] >= min_per_class}
        if len(set(keep.values())) < 2:
            continue
        rows = sorted(keep)
        x = library.image_index.reconstruct(rows)
        heads[task] = fit_head(x, [keep[r] for r in rows], task, library.image_embedder.name)
    return heads


def train_and_save(library: Any, tasks: Sequence[str] | None = None) -> dict[str, Any]:
    """``medloop library train``: fit every task's head, save them, return a JSON summary.

    The summary names, per task, the classes with their case counts and the temperature.
    """
    t0 = time.perf_counter()
    heads = train_heads(library, tasks)
    if not heads:
        raise ToolInputError(f"{library.root}: no label task with two classes of at least two "
                             "cases each (labels are written task:value, e.g. organ:chest)")
    path = save_heads(library.root, heads)
    return {"path": str(path), "embedder": library.image_embedder.name,
            "seconds": round(time.perf_counter() - t0, 2),
            "tasks": {t: {"classes": h.fitted_on, "temperature": round(h.temperature, 3)}
                      for t, h in heads.items()}}


def save_heads(root: str | Path, heads: dict[str, Head]) -> Path:
    """Write ``ROOT/heads.json`` (atomically); returns its path."""
    path = Path(root) / HEADS_FILE
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({t: h.as_json() for t, h in heads.items()}))
    tmp.replace(path)
    return path


def load_heads(root: str | Path) -> dict[str, Head]:
    """The heads saved in ``ROOT`` ({} when none were trained)."""
    path = Path(root) / HEADS_FILE
    if not path.exists():
        return {}
    out = {}
    for task, d in json.loads(path.read_text()).items():
        d["weights"] = np.asarray(d["weights"], np.float64)
        d["bias"] = np.asarray(d["bias"], np.float64)
        out[task] = Head(**d)
    return out


PROJECTIONS: dict[str, tuple[str, ...]] = {
    "xray": ("frontal", "lateral"), "ct": ("axial", "coronal", "sagittal"),
    "mr": ("axial", "coronal", "sagittal")}
"""The planes each modality has: a radiograph is a projection, CT and MR are sections."""


def predict_heads(heads: dict[str, Head], vector: np.ndarray, embedder: str,
                  tasks: Sequence[str] | None = None) -> dict[str, list[tuple[str, float]]]:
    """Per task of ``tasks`` (default: every head), ``(class, probability)`` highest first.

    ``vector`` is one image vector ``(D,)``. A plane is read jointly with the modality where
    there is a modality head (``joint_plane``): the plane head is fitted on the few images
    whose plane was asked (21 of the dev set's 111) and called a chest film axial at 0.66 and
    0.81; the modality head sees more images and knows films from sections.
    """
    raw = {}
    for task, head in heads.items():
        if head.embedder and head.embedder != embedder:
            raise ToolInputError(f"head {task!r} was trained on {head.embedder!r} vectors, "
                                 f"not {embedder!r}; retrain it (`medloop library train`)")
        p = head.predict_proba(vector)[0]
        raw[task] = sorted(zip(head.classes, (float(v) for v in p), strict=True),
                           key=lambda t: -t[1])
    if "plane" in raw and "modality" in raw:
        raw["plane"] = joint_plane(raw["plane"], raw["modality"])
    return {task: raw[task] for task in (heads if tasks is None else tasks)}


def read_labels(heads: dict[str, Head], vector: np.ndarray, embedder: str,
                tasks: list[str], header: Mapping[str, str] | None = None,
                ) -> dict[str, list[tuple[str, float]]]:
    """``predict_heads`` for ``tasks``, with what the image's DICOM header says put first.

    ``header`` (``header_labels``) replaces the head's reading of a task it names, at
    probability one (held out on pydicom's test files, the modality head called a chest CT an
    X-ray and an abdominal MR a CT), and a plane the header does not give is read again given
    the header's modality.
    When the header names a class that the task's head does not have (an ultrasound, a knee),
    the heads know nothing of such an image: only what the header says is returned.
    """
    if unknown_to_heads(heads, header):  # any task's: an ultrasound's organ is not read either
        return {t: [(v, 1.0)] for t, v in (header or {}).items() if t in tasks}
    header = {t: v for t, v in (header or {}).items() if t in tasks}
    given = {t: [(v, 1.0)] for t, v in header.items()}
    ranked = predict_heads(heads, vector, embedder, [t for t in tasks if t in heads]) | given
    if "modality" in header and "plane" not in header and "plane" in ranked and "plane" in heads:
        own = predict_heads({"plane": heads["plane"]}, vector, embedder)["plane"]
        ranked["plane"] = joint_plane(own, [(header["modality"], 1.0)])
    return ranked


def joint_plane(plane: list[tuple[str, float]],
                modality: list[tuple[str, float]]) -> list[tuple[str, float]]:
    """``P(plane) = sum over modalities of P(modality) x P(plane | the planes it has)``.

    A modality not in ``PROJECTIONS`` allows every plane. One whose planes the plane head has
    none of adds nothing: its share is a plane this head cannot name, so the probabilities
    then sum to less than one. Highest first; the plane head's own reading when nothing is
    left.
    """
    probs = dict(plane)
    joint = dict.fromkeys(probs, 0.0)
    for mod, pm in modality:
        allowed = [c for c in probs if c in PROJECTIONS.get(mod, tuple(probs))]
        mass = sum(probs[c] for c in allowed)
        for c in allowed if mass > 0 else ():
            joint[c] += pm * probs[c] / mass
    return sorted(joint.items(), key=lambda t: -t[1]) if sum(joint.values()) > 0 else plane


TASK_WORDS: dict[str, tuple[str, ...]] = {
    "modality": ("modality", "mri", "mr", "ct", "x-ray", "xray", "x ray", "radiograph",
                 "radiography", "film", "ultrasound", "imaging", "scan", "study", "sequence",
                 "t1", "t2", "flair", "contrast"),
    "organ": ("organ", "organs", "body part", "part of the body", "region", "anatomy",
              "system", "abdomen", "abdominal", "chest", "thorax", "thoracic", "head", "brain",
              "skull", "cranial"),
    "plane": ("plane", "view", "axial", "coronal", "sagittal", "frontal", "lateral", "pa", "ap",
              "section", "slice", "orientation", "projection", "cut"),
}
"""Words a question about each label task uses, beside the task's own class names."""


def about_words(tasks: dict[str, Sequence[str]]) -> list[str]:
    """What trained heads' evidence speaks to: each task's name, words and class names.

    An answer citing only this evidence for a question that names none of them stands on
    nothing that bears on it (``agent.trust.agreement.speaks_to``): on real items the small
    planner answered "Which rectus muscles are enhanced on the left?" and "Is there fat
    stranding around the appendix?" from modality, organ and plane probabilities, at 0.82-0.89.
    """
    words = {w for task, classes in tasks.items()
             for w in (task, *TASK_WORDS.get(task, ()), *classes)}
    return sorted(w.lower() for w in words)


class HeadArgs(ImageArgs):
    """Arguments of the trained-heads ``classify``."""

    task: str | None = Field(default=None, description="one label task, e.g. 'modality', "
                             "'organ', 'plane' (default: every trained task)")


_DESCRIPTION = (
    "Classify the image with classifiers trained on the case library's labelled images "
    "(modality, organ, plane and any label the library has): calibrated probabilities per task."
)


def _head_classify(store: ImageStore, get_lib: Callable[[], Any]
                   ) -> Callable[[HeadArgs], Evidence]:
    def classify(args: HeadArgs) -> Evidence:
        img = store.get(args.image_id)
        t0 = time.perf_counter()
        lib = get_lib()
        heads = load_heads(lib.root)
        if not heads:
            raise ToolInputError("the case library has no trained heads "
                                 "(`medloop library train` fits them); use another tool")
        if args.task is not None and args.task not in heads:
            raise ToolInputError(f"no head for task {args.task!r}; trained: "
                                 f"{', '.join(sorted(heads))}")
        tasks = list(heads) if args.task is None else [args.task]
        vec = lib.image_embedder.embed_images([img.display])[0]
        # every head is read, so that a plane asked alone is still read with the modality;
        # what the image's DICOM header says goes first
        header = header_labels(img.meta)
        probs = read_labels(heads, vec, lib.image_embedder.name, tasks, header)
        unknown = unknown_to_heads(heads, header)
        if not probs:
            raise ToolInputError(f"the image's DICOM header gives {unknown}: the library's "
                                 "classifiers know nothing of such an image; use another tool")
        parts = [f"{task}: {ranked[0][0]} (DICOM header)" if task in header else
                 f"{task}: {ranked[0][0]} {ranked[0][1]:.2f}"
                 + (f" (then {ranked[1][0]} {ranked[1][1]:.2f})" if len(ranked) > 1 else "")
                 for task, ranked in probs.items()]
        if unknown:
            parts.append(f"nothing else read: the classifiers know nothing of {unknown}")
        ev = Evidence(
            tool="classify", image_id=args.image_id,
            summary=("Trained heads on the library's labelled images (calibrated "
                     f"probabilities): {'; '.join(parts)}."),
            score=float(min(r[0][1] for r in probs.values())),
            assertions=[Assertion(finding=f"{task} {ranked[0][0]}", present=ranked[0][1] >= 0.5,
                                  probability=ranked[0][1]) for task, ranked in probs.items()],
            data={"method": "trained-heads", "library": str(lib.root),
                  "about": about_words({t: [c for c, _ in r] for t, r in probs.items()}),
                  "probabilities": {t: [[c, round(p, 4)] for c, p in r]
                                    for t, r in probs.items()},
                  "fitted_on": {t: heads[t].fitted_on for t in tasks},
                  "from_header": sorted(t for t in probs if t in header)},
            elapsed_s=time.perf_counter() - t0,
        )
        return flag_if_unlike(ev, library_typicality(lib, vec), LIBRARY_IMAGES)

    return classify


def _has_heads(deps: ToolDeps) -> bool:
    """Offered only when the configured library has trained heads (``medloop library train``)."""
    return deps.library_has(HEADS_FILE)


def _falls_back(deps: ToolDeps) -> bool:
    """Offered over ``case_answer``'s fallback library (the shipped one) when the run's has none.

    These are the heads ``case_answer`` reads. Before, with no library configured,
    ``classify`` was the kNN over the demo library (eight DICOM images labelled with body
    regions), and its first call started that library's minutes-long build in the
    background; ``medloop eval --library-folds``, whose fold libraries carry heads, measured
    the trained heads instead.
    """
    return deps.falls_back_on(HEADS_FILE)


def _tasks_in(folder: Path | None) -> dict[str, tuple[str, ...]]:
    """``{"task": (its trained tasks...)}`` from the heads file in ``folder`` (weights unread)."""
    path = None if folder is None else folder / HEADS_FILE
    if path is None or not path.exists():
        return {}
    try:
        return {"task": tuple(sorted(json.loads(path.read_text())))}
    except (OSError, ValueError, AttributeError):
        return {}  # the tool says what is wrong with the file when it is called


TOOLS = (
    ToolSpec(
        name="classify", description=_DESCRIPTION, args=HeadArgs, variant="trained-heads",
        build=lambda deps: _head_classify(deps.store, _library(deps)),
        models=(LITE_MEDSAM,), enabled=_has_heads, precedence=5, examples=CLASSIFY_EXAMPLES,
        domain=LIBRARY_DOMAIN, choices=lambda deps: _tasks_in(deps.library_path),
    ),
    ToolSpec(
        name="classify", description=_DESCRIPTION, args=HeadArgs, variant="shipped-heads",
        build=lambda deps: _head_classify(deps.store, deps.answers_library()),
        models=(LITE_MEDSAM,), enabled=_falls_back, precedence=4, examples=CLASSIFY_EXAMPLES,
        domain=SHIPPED_DOMAIN, choices=lambda deps: _tasks_in(deps.answers_path),
    ),
)
"""``classify`` by trained heads: the run's library's, else the shipped library's; both outrank
the kNN one (0), not a configured model (10)."""


def _library(deps: ToolDeps) -> Callable[[], Any]:
    """The run's library getter; the tool is only enabled when there is one."""
    if deps.library is None:
        raise ToolFailure("this tool needs a case library (MEDLOOP_LIBRARY)")
    return deps.library


def head_classify_tools(store: ImageStore, library_getter: Callable[[], Any]) -> list[BaseTool]:
    """``classify`` by the library's trained heads (the library opens on the first call)."""
    return [TOOLS[0].bind(_head_classify(store, library_getter), store)]
