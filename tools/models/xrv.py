"""TorchXRayVision's chest X-ray experts: the findings classifiers and the anatomy PSPNet.

**Loading.** By name, through torchxrayvision's own constructors (``xrv.models.DenseNet(
weights=NAME)``, ``xrv.models.ResNet(weights=NAME)``, ``xrv.baseline_models.chestx_det.PSPNet()``)
reading the weight file from torchxrayvision's cache folder (``tools.models.xrv_catalog``:
``~/.torchxrayvision/models_data/``), once per process and device through the registry's
``load_once`` within the GPU memory budget. A tool call never downloads: torchxrayvision would
fetch hundreds of MB inside a call that has a minute; a missing file is a ``ToolFailure``
naming the file and its URL, and ``fetch_weights`` (for ``medloop models pull``) downloads it
with torchxrayvision's own downloader (connect and read time limits). Note that the DenseNet
files are whole pickled modules that torchxrayvision unpickles (``weights_only=False``): only
files from its release page belong in that folder.

**Input** (``xrv_pixels``): one grey frame scaled to [-1024, 1024] as torchxrayvision does.
A single-frame grey DICOM is read the way ``xrv.utils.read_xray_dcm`` reads the file: its
stored values over ``2**BitsStored - 1``, MONOCHROME1 inverted, no VOI LUT. Anything else (a
PNG or JPEG, a DICOM whose values were rescaled or do not fit its BitsStored) uses the 8-bit
display over 255 (``xrv.utils.normalize(img, 255)``), colour averaged to grey, as
torchxrayvision's README does for image files. Classifiers then get torchxrayvision's own
``XRayCenterCrop`` and ``XRayResizer`` (224 or 512 px); the PSPNet gets the whole film padded
to a square (black) and resized to 512 px, because a crop would cut the lungs of a landscape
film off and its masks must cover the whole image to be measured.

**Classifier outputs.** torchxrayvision's ``forward`` returns, per label, the sigmoid of the
logit rescaled piecewise-linearly so that the label's operating threshold maps to 0.5
(``op_norm``). Each threshold is the sigmoid value that maximised sensitivity + specificity
(Youden's J) on a held-out 20 % patient split of the training datasets. So a score above 0.5
means "above the operating point", NOT a calibrated probability of disease (prevalences differ
by site; the authors' own issue tracker reports many positives at 0.5 on MIMIC-CXR). Both the
normalised score and the raw sigmoid are reported. Labels a weight set was not trained on (an
empty name) or has no threshold for (``nan``: torchxrayvision outputs a constant 0.5) are
"not judged", never reported as findings.

``write_random_weights`` / ``build_random`` write architecture-exact random weights where the
loader looks and load them by name: the tests, bench/xrv_experts.py and the GPU check run the
user's loading path on them without a download.
"""

from __future__ import annotations

import math
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tools.errors import ToolFailure, ToolInputError
from tools.image import LoadedImage
from tools.models.lazy import EmbeddingCache, LazyModel
from tools.models.registry import load_once
from tools.models.xrv_catalog import PSPNET, WEIGHTS, XrvWeights
from tools.spec import VisionConfig

__all__ = [
    "ANATOMY_STRUCTURES",
    "Anatomy",
    "AnatomySegmenter",
    "ChestFindings",
    "Finding",
    "XrvClassifier",
    "XrvInput",
    "anatomy_for",
    "anatomy_input",
    "build_random",
    "classifier_for",
    "classifier_input",
    "fetch_weights",
    "write_random_weights",
    "xrv_pixels",
]

ANATOMY_STRUCTURES = (
    "Left Clavicle", "Right Clavicle", "Left Scapula", "Right Scapula", "Left Lung",
    "Right Lung", "Left Hilus Pulmonis", "Right Hilus Pulmonis", "Heart", "Aorta",
    "Facies Diaphragmatica", "Mediastinum", "Weasand", "Spine",
)
"""The PSPNet's 14 output channels, in order (``PSPNet.targets``; checked by the tests)."""

_PAD = -1024.0  # black on torchxrayvision's scale: what the square padding is filled with
# A pixel belongs to a structure when its sigmoid reaches this (torchxrayvision's demo's cut).
_MASK_THRESHOLD = 0.5


def _xrv() -> Any:
    """``torchxrayvision``, imported after torchvision is made importable.

    Its ``models`` module runs ``warnings.filterwarnings("ignore")`` at import, silencing every
    warning in the process; importing it inside ``catch_warnings`` undoes that. Its own
    normalisation warning (printed to stdout, which would corrupt ``--json`` output) is marked
    as done: every input here comes from ``xrv_pixels``, in range by construction.
    """
    from tools.torch_compat import ensure_torchvision

    ensure_torchvision()
    with warnings.catch_warnings():
        import torchxrayvision as xrv
    xrv.utils.warning_log["norm_check"] = True
    return xrv


# =============================================================================================
# Input
# =============================================================================================
@dataclass(frozen=True)
class XrvInput:
    """What a model sees, and where it lies on the image.

    Attributes:
        array: float32 ``(1, R, R)`` in [-1024, 1024] (torchxrayvision's layout).
        source: how the grey values were made, in words.
        x0, y0: the image pixel at the square's top-left corner (negative: padding).
        side: the square's side in image pixels (it was resized from this to R).
    """

    array: np.ndarray
    source: str
    x0: int
    y0: int
    side: int

    def to_image(self, plane: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
        """A float ``(R, R)`` map over the input, back on the image's ``(H, W)`` pixels.

        Resized bilinearly to the square's side, then cropped (or, for a crop, placed) to the
        image; image pixels the square did not cover are 0.
        """
        import cv2

        h, w = shape
        big = cv2.resize(np.asarray(plane, np.float32), (self.side, self.side),
                         interpolation=cv2.INTER_LINEAR)
        out = np.zeros((h, w), np.float32)
        # The overlap of the square [x0, x0 + side) with the image [0, w), in both frames.
        ix0, iy0 = max(self.x0, 0), max(self.y0, 0)
        ix1, iy1 = min(self.x0 + self.side, w), min(self.y0 + self.side, h)
        out[iy0:iy1, ix0:ix1] = big[iy0 - self.y0:iy1 - self.y0, ix0 - self.x0:ix1 - self.x0]
        return out


def _dicom_stored(img: LoadedImage) -> tuple[np.ndarray, int] | None:
    """The stored values and their maximum (``2**BitsStored - 1``), when they can be used."""
    bits = img.meta.get("bits_stored")
    px = img.pixels
    if (img.source_format != "dicom" or img.display.ndim != 2 or px.ndim != 2
            or not isinstance(bits, int) or not 1 <= bits <= 32 or px.dtype.kind not in "iu"):
        return None
    maxval = 2**bits - 1
    if px.size == 0 or int(px.min()) < 0 or int(px.max()) > maxval:
        return None  # rescaled or signed values: not what BitsStored describes
    return px, maxval


def xrv_pixels(img: LoadedImage) -> tuple[np.ndarray, str]:
    """``img`` as one float32 ``(H, W)`` grey frame in [-1024, 1024], and how it was made.

    A single-frame grey DICOM: its stored values as ``xrv.utils.read_xray_dcm`` reads them
    (over ``2**BitsStored - 1``, MONOCHROME1 inverted, no VOI LUT). Anything else: the 8-bit
    display over 255, colour averaged to grey.
    """
    xrv = _xrv()
    stored = _dicom_stored(img)
    if stored is not None:
        px, maxval = stored
        if str(img.meta.get("photometric", "")).upper() == "MONOCHROME1":
            px = maxval - px.astype(np.int64)
        bits = img.meta["bits_stored"]
        grey = xrv.utils.normalize(np.asarray(px), maxval)
        return grey.astype(np.float32), (f"the DICOM's stored values over 2^{bits}-1, as "
                                         "torchxrayvision reads a DICOM")
    display = np.asarray(img.display)
    if display.ndim == 3:
        display = display[..., :3].mean(axis=2)
    if display.ndim != 2 or min(display.shape) < 8:
        raise ToolInputError(f"the image's display is {display.shape}: a chest X-ray model "
                             "needs a 2D grey or colour image of at least 8x8 pixels")
    return xrv.utils.normalize(display, 255).astype(np.float32), "the 8-bit display over 255"


def classifier_input(img: LoadedImage, resolution: int) -> XrvInput:
    """torchxrayvision's classifier input: centre square crop, resized to ``resolution``."""
    xrv = _xrv()
    grey, source = xrv_pixels(img)
    h, w = grey.shape
    side = min(h, w)
    x0, y0 = w // 2 - side // 2, h // 2 - side // 2  # XRayCenterCrop's corner
    crop = xrv.datasets.XRayCenterCrop()(grey[None])
    array = xrv.datasets.XRayResizer(resolution)(crop)
    return XrvInput(array=array.astype(np.float32), source=source, x0=x0, y0=y0, side=side)


def anatomy_input(img: LoadedImage, resolution: int = 512) -> XrvInput:
    """The PSPNet's input: the whole film padded to a black square, resized to ``resolution``."""
    xrv = _xrv()
    grey, source = xrv_pixels(img)
    h, w = grey.shape
    side = max(h, w)
    x0, y0 = -((side - w) // 2), -((side - h) // 2)
    square = np.full((1, side, side), _PAD, np.float32)
    square[0, -y0:-y0 + h, -x0:-x0 + w] = grey
    array = xrv.datasets.XRayResizer(resolution)(square)
    return XrvInput(array=array.astype(np.float32), source=source, x0=x0, y0=y0, side=side)


# =============================================================================================
# Loading
# =============================================================================================
def _weights(name: str) -> XrvWeights:
    w = WEIGHTS.get(name)
    if w is None:
        raise ToolInputError(f"unknown TorchXRayVision weights {name!r}; known: "
                             f"{', '.join(WEIGHTS)}")
    return w


def _require_file(w: XrvWeights, cache_dir: str | Path | None) -> Path:
    path = w.path(cache_dir)
    if not path.is_file():
        raise ToolFailure(f"TorchXRayVision weights {w.name!r} are not downloaded: {path} is "
                          f"missing. Fetch them once with `medloop models pull` or "
                          f"`wget {w.url} -O {path}`")
    return path


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def load_classifier(name: str, device: str, cache_dir: str | Path | None = None) -> Any:
    """The classifier ``name`` on ``device``, built by torchxrayvision from its weight file."""
    w = _weights(name)
    path = _require_file(w, cache_dir)
    xrv = _xrv()
    build = xrv.models.DenseNet if w.arch == "densenet121" else xrv.models.ResNet
    try:
        model = build(weights=name, cache_dir=str(path.parent))
    except Exception as exc:  # a corrupt or foreign file: say which, and how to replace it
        raise ToolFailure(f"TorchXRayVision weights {name!r} could not be loaded from {path} "
                          f"({_first_line(exc)}); delete it and fetch it again") from exc
    return model.to(device).eval()


def load_pspnet(device: str, cache_dir: str | Path | None = None) -> Any:
    """ChestX-Det's PSPNet on ``device``, built by torchxrayvision from its weight file."""
    path = _require_file(WEIGHTS[PSPNET], cache_dir)
    xrv = _xrv()
    try:
        model = xrv.baseline_models.chestx_det.PSPNet(cache_dir=str(path.parent))
    except Exception as exc:
        raise ToolFailure(f"the PSPNet weights could not be loaded from {path} "
                          f"({_first_line(exc)}); delete it and fetch it again") from exc
    return model.to(device).eval()


def fetch_weights(name: str, cache_dir: str | Path | None = None) -> Path:
    """Download weight set ``name`` (a classifier or ``xrv-pspnet``) unless already there.

    torchxrayvision's downloader: 10 s to connect, 60 s between reads, resumable ``.part``
    file moved into place only when complete. For ``medloop models pull``.
    """
    w = _weights(name)
    path = w.path(cache_dir)
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        _xrv().utils.download(w.url, str(path))
    except Exception as exc:  # network errors of every kind: one line naming the file
        raise ToolFailure(f"could not download {w.url} to {path}: {_first_line(exc)}") from exc
    return path


def write_random_weights(name: str, cache_dir: str | Path, seed: int = 0) -> Path:
    """Architecture-exact random weights for ``name``, saved where the loader looks for them.

    In the format of the published file: a pickled DenseNet module, a ResNet state dict, a
    PSPNet state dict saved from ``DataParallel`` (``module.`` prefixes). For tests, benchmarks
    and the GPU check: the real loading path on weights that need no download.
    """
    import torch

    xrv = _xrv()
    w = _weights(name)
    path = w.path(cache_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    payload: Any
    if w.arch == "densenet121":
        payload = _settle(xrv.models.DenseNet(weights=None), w.resolution)
    elif w.arch == "resnet50":
        import torchvision

        net = torchvision.models.resnet50(num_classes=18, weights=None)
        net.conv1 = torch.nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
        payload = _settle(net, w.resolution).state_dict()
    else:
        from torchxrayvision.baseline_models.chestx_det.ptsemseg.pspnet import pspnet

        state = pspnet(len(ANATOMY_STRUCTURES)).state_dict()
        payload = {f"module.{k}": v for k, v in state.items()}
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)
    return path


def _settle(net: Any, resolution: int) -> Any:
    """``net`` with its batch-norm statistics taken from one random batch, in eval mode.

    Fresh batch norms (mean 0, variance 1) normalise nothing, so 121 random layers drive every
    logit to a saturated sigmoid of 0 or 1; after one batch in training mode the outputs spread
    over (0, 1) like a trained model's, which is what the tests and timings need.
    """
    import torch

    net.train()
    with torch.no_grad():
        net(torch.rand(2, 1, resolution, resolution) * 2048 - 1024)
    return net.eval()


def build_random(name: str, device: str = "cpu", cache_dir: str | Path | None = None) -> Any:
    """Model ``name`` (a classifier or ``xrv-pspnet``) with random weights, on ``device``.

    Writes them with ``write_random_weights`` (into a temporary folder unless ``cache_dir``)
    and loads them by name through ``load_classifier`` / ``load_pspnet``: the GPU check times
    exactly what a user's first call runs.
    """
    folder = Path(cache_dir) if cache_dir is not None else Path(tempfile.mkdtemp(prefix="xrv-"))
    write_random_weights(name, folder)
    if name == PSPNET:
        return load_pspnet(device, folder)
    return load_classifier(name, device, folder)


# =============================================================================================
# Findings classifier
# =============================================================================================
@dataclass(frozen=True)
class Finding:
    """One label's output.

    Attributes:
        label: torchxrayvision's name (``Effusion``, ``Pleural_Thickening``...).
        score: its output: the sigmoid normalised so the operating threshold is 0.5.
        sigmoid: the raw sigmoid of the logit.
        threshold: the operating threshold on the sigmoid (Youden's J on held-out data).
        ppv80: whether the sigmoid reaches the threshold where precision reached 0.8 on
            held-out data (None where torchxrayvision publishes no such threshold).
    """

    label: str
    score: float
    sigmoid: float
    threshold: float
    ppv80: bool | None = None

    @property
    def present(self) -> bool:
        """Above the operating point."""
        return self.score >= 0.5

    @property
    def name(self) -> str:
        """The label in plain lower case: ``pleural thickening``."""
        return self.label.replace("_", " ").lower()


@dataclass(frozen=True)
class ChestFindings:
    """A classifier's reading of one film.

    Attributes:
        weights: the weight set's name.
        findings: the judged labels, highest score first.
        not_judged: labels of torchxrayvision's 18 this weight set has no output for.
        source: how the input's grey values were made.
        heatmap: Grad-CAM of the top finding on the image's pixels, ``(H, W)`` in [0, 1]
            (None unless asked for).
    """

    weights: str
    findings: list[Finding]
    not_judged: list[str]
    source: str
    heatmap: np.ndarray | None = None


def op_inverse(score: float, threshold: float) -> float:
    """The sigmoid that torchxrayvision's ``op_norm`` maps to ``score`` (its exact inverse)."""
    if score < 0.5:
        return score * 2 * threshold
    return 1 - (1 - score) * 2 * (1 - threshold)


def _activations_and_logits(model: Any, x: Any) -> tuple[Any, Any]:
    """The last convolutional activations (for Grad-CAM) and the logits, as xrv computes them."""
    import torch
    import torch.nn.functional as F

    if hasattr(model, "classifier"):  # DenseNet: features -> relu -> pool -> linear
        act = F.relu(model.features(x))
        return act, model.classifier(F.adaptive_avg_pool2d(act, (1, 1)).flatten(1))
    net = model.model  # ResNet: torchvision's forward, stopping after layer4
    y = net.maxpool(net.relu(net.bn1(net.conv1(x))))
    act = net.layer4(net.layer3(net.layer2(net.layer1(y))))
    return act, net.fc(torch.flatten(net.avgpool(act), 1))


class XrvClassifier(LazyModel[Any]):
    """A TorchXRayVision findings classifier by weight name; loads on first use, once.

    ``cache_dir`` is where its weights are (default: torchxrayvision's own folder).
    """

    kind = "xrv"

    def __init__(self, name: str, device: str = "auto",
                 cache_dir: str | Path | None = None) -> None:
        self.weights = _weights(name)
        super().__init__(name, device)
        self.cache_dir = cache_dir
        self.name = f"xrv:{name}"

    def model(self) -> Any:
        """The loaded torchxrayvision module, within the memory budget."""
        return load_once(self.key, self._load, memory_mb=self.weights.memory_mb,
                         device=self.device)

    def _load(self) -> Any:
        return load_classifier(self.ref, self.device, self.cache_dir)

    def classify(self, img: LoadedImage, heatmap: bool = False) -> ChestFindings:
        """Every judged label's score for ``img``; with ``heatmap``, the top one's Grad-CAM."""
        import torch

        xrv = _xrv()
        model = self.model()
        inp = classifier_input(img, self.weights.resolution)
        x = torch.from_numpy(inp.array[None]).to(self.device)
        with torch.inference_mode():
            _, logits = _activations_and_logits(model, x)
            scores = xrv.models.op_norm(torch.sigmoid(logits), model.op_threshs)[0]
        labels = list(model.pathologies)
        threshs = model.op_threshs.detach().cpu().tolist()
        ppv = xrv.models.model_urls[self.ref].get("ppv80_thres")
        findings, judged = [], set()
        for i, (label, t) in enumerate(zip(labels, threshs, strict=True)):
            if not label or math.isnan(t):
                continue
            s = float(scores[i])
            sig = op_inverse(s, t)
            high = None if ppv is None or math.isnan(ppv[i]) else sig >= ppv[i]
            findings.append(Finding(label, s, sig, float(t), high))
            judged.add(label)
        findings.sort(key=lambda f: -f.score)
        not_judged = [p for p in xrv.datasets.default_pathologies if p not in judged]
        cam = None
        if heatmap and findings:
            cam = self._grad_cam(model, x, labels.index(findings[0].label), inp,
                                 img.display.shape[:2])
        return ChestFindings(self.ref, findings, not_judged, inp.source, cam)

    def _grad_cam(self, model: Any, x: Any, index: int, inp: XrvInput,
                  shape: tuple[int, ...]) -> np.ndarray:
        """Grad-CAM (Selvaraju et al.) of label ``index`` on the image's pixels, in [0, 1]."""
        import torch

        with torch.enable_grad():
            act, logits = _activations_and_logits(model, x)
            (grad,) = torch.autograd.grad(logits[0, index], act)
            cam = torch.relu((grad.mean(dim=(2, 3), keepdim=True) * act).sum(dim=1))[0]
        cam_np = cam.detach().float().cpu().numpy()
        top = float(cam_np.max())
        cam_np = cam_np / top if top > 0 else cam_np
        return np.clip(inp.to_image(cam_np, (int(shape[0]), int(shape[1]))), 0.0, 1.0)


def classifier_for(config: VisionConfig, cache_dir: str | Path | None = None
                   ) -> XrvClassifier | None:
    """The classifier ``config.classifier`` names when it is ``xrv:...``, else None."""
    if not config.classifier or not config.classifier.startswith("xrv:"):
        return None
    return XrvClassifier(config.classifier[4:], config.device, cache_dir)


# =============================================================================================
# Anatomy segmenter
# =============================================================================================
@dataclass(frozen=True)
class Anatomy:
    """The PSPNet's structures on one film.

    Attributes:
        masks: structure name (``ANATOMY_STRUCTURES``) -> bool ``(H, W)`` mask on the image.
        scores: structure name -> mean sigmoid inside its mask (0 for an empty mask).
        source: how the input's grey values were made.
    """

    masks: dict[str, np.ndarray]
    scores: dict[str, float]
    source: str

    def present(self) -> list[str]:
        """The structures with a non-empty mask, in the model's order."""
        return [n for n in ANATOMY_STRUCTURES if self.masks[n].any()]


class AnatomySegmenter(LazyModel[Any]):
    """ChestX-Det's PSPNet: 14 chest structures per film; loads on first use, once.

    Results are kept per image (``EmbeddingCache``): ``segment_anatomy`` and
    ``measure_lungs`` on one film run the network once.
    """

    kind = "xrv"

    def __init__(self, device: str = "auto", cache_dir: str | Path | None = None) -> None:
        super().__init__(PSPNET, device)
        self.cache_dir = cache_dir
        self.name = PSPNET
        self.cache: EmbeddingCache[Anatomy] = EmbeddingCache(size=4)

    def model(self) -> Any:
        """The loaded torchxrayvision PSPNet, within the memory budget."""
        return load_once(self.key, self._load, memory_mb=WEIGHTS[PSPNET].memory_mb,
                         device=self.device)

    def _load(self) -> Any:
        return load_pspnet(self.device, self.cache_dir)

    def segment(self, img: LoadedImage, image_id: str | None = None) -> Anatomy:
        """Every structure's mask on ``img`` (cached under ``image_id``)."""
        return self.cache.get(image_id, np.asarray(img.display), lambda: self._segment(img))

    def _segment(self, img: LoadedImage) -> Anatomy:
        import torch

        model = self.model()
        inp = anatomy_input(img)
        x = torch.from_numpy(inp.array[None]).to(self.device)
        with torch.inference_mode(), warnings.catch_warnings():
            # ptsemseg calls the deprecated F.upsample: torchxrayvision's to fix, not a user's.
            warnings.filterwarnings("ignore", message=".*upsample.*deprecated")
            prob = torch.sigmoid(model(x))[0].float().cpu().numpy()  # (14, 512, 512)
        shape = (int(img.display.shape[0]), int(img.display.shape[1]))
        masks, scores = {}, {}
        for name, plane in zip(ANATOMY_STRUCTURES, prob, strict=True):
            on_image = inp.to_image(plane, shape)
            mask = on_image >= _MASK_THRESHOLD
            masks[name] = mask
            scores[name] = float(on_image[mask].mean()) if mask.any() else 0.0
        return Anatomy(masks, scores, inp.source)


def anatomy_for(config: VisionConfig, cache_dir: str | Path | None = None
                ) -> AnatomySegmenter | None:
    """The anatomy segmenter ``config.anatomy`` names (``xrv-pspnet``), else None."""
    return AnatomySegmenter(config.device, cache_dir) if config.anatomy == PSPNET else None


def structure_names(names: Sequence[str]) -> list[str]:
    """Canonical structure names for ``names`` (case and ``_`` ignored), or ``ToolInputError``."""
    index = {n.lower(): n for n in ANATOMY_STRUCTURES}
    out = []
    for raw in names:
        key = " ".join(str(raw).replace("_", " ").lower().split())
        if key not in index:
            raise ToolInputError(f"unknown structure {raw!r}; the anatomy model outlines: "
                                 f"{', '.join(ANATOMY_STRUCTURES)}")
        if index[key] not in out:
            out.append(index[key])
    return out
