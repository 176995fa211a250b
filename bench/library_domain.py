"""Which images the library's experts take as theirs: real held-out images against unrelated ones.

``case_answer`` and the trained-heads ``classify`` answer from a case library. Two checks keep
them off images the library says nothing about (``tools.domain`` and ``retrievers.typicality``):

* the shipped library's domain is grey-scale CT, MR and radiographs (``grey_only``,
  ``modalities``): a colour picture, or a DICOM of another modality, is refused;
* a grey image whose embedding is further from every library image than the library's own most
  isolated image is, by a margin (the library's floor), is flagged and its answer withheld.

This script measures both where it matters:

1. **Real images they must keep answering**: each of the 111 VQA-RAD dev images against the
   fold library that never saw it (``medloop eval --library-folds``' 5 folds by image, the
   libraries under ``$MEDLOOP_HOME/eval-libraries/``), with that library's own floor.
2. **Pictures they must not answer about**: every picture scikit-image ships without a download
   (photographs, text, microscopy, a retina, textures, a phantom), and pydicom's test files
   (real CT, MR and a chest radiograph, which they should take; nuclear medicine, ultrasound,
   an RT dose grid, which they should not), through medloop's own ingest, against the
   shipped library.

Run: ``nice .venv/bin/python bench/library_domain.py [--items PATH] [--json]``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

import tools.torch_compat  # noqa: F401  (before torchvision)
from agent.context import AgentContext
from agent.evaluation.libraries import every_image_vectors, fold_libraries
from agent.evaluation.readers import load_suite
from retrievers.shipped_library import shipped
from retrievers.similar import SHIPPED_DOMAIN
from retrievers.typicality import library_floor, typicality
from retrievers.vqa_library import open_case_library
from tools.domain import ImageFacts, colour_share
from tools.ingest.loader import load_image

DEFAULT_ITEMS = Path(__file__).resolve().parents[2] / "shared/data/vqa_rad_dev/items.jsonl"

SKIMAGE_PICTURES = ("astronaut", "binary_blobs", "brick", "camera", "cat", "checkerboard",
                    "chelsea", "clock", "coffee", "coins", "colorwheel", "grass", "gravel",
                    "horse", "hubble_deep_field", "immunohistochemistry", "logo",
                    "microaneurysms", "moon", "page", "retina", "rocket",
                    "shepp_logan_phantom", "text")
"""scikit-image's pictures that need no download (the rest need ``pooch`` and the network)."""

PYDICOM_FILES = ("CT_small.dcm", "MR_small.dcm", "MR2_UNCR.dcm",
                 "MR-SIEMENS-DICOM-WithOverlays.dcm", "RG1_UNCI.dcm", "JPGExtended.dcm",
                 "US1_UNCR.dcm", "rtdose.dcm")
"""pydicom's test files: real CT, MR and a chest radiograph (which the library should take),
a nuclear-medicine image, an ultrasound and an RT dose grid (which it should not)."""


def _as_png(name: str, folder: Path) -> Path:
    import imageio.v3 as iio
    import skimage.data

    a = np.asarray(getattr(skimage.data, name)())
    if a.dtype == bool:
        a = a.astype(np.uint8) * 255
    elif a.dtype != np.uint8:
        a = a.astype(np.float64)
        a = (255 * (a - a.min()) / (np.ptp(a) + 1e-9)).astype(np.uint8)
    path = folder / f"{name}.png"
    iio.imwrite(path, a)
    return path


def dev_images(items_file: Path, folds: int, seed: int) -> list[dict[str, Any]]:
    """Each dev image against the fold library that never saw it."""
    items = load_suite(str(items_file))
    home = AgentContext.from_env().home_dir / "eval-libraries"
    library_of = fold_libraries(items_file, items, folds, seed, home)
    vectors = every_image_vectors(library_of)
    base = items_file.parent
    image_of = {it.id: str(Path(str(it.images[0])).resolve().relative_to(base.resolve()))
                for it in items}
    rows: list[dict[str, Any]] = []
    for path in sorted(set(library_of.values())):
        lib = open_case_library(path)
        try:
            floor = library_floor(lib)
            held = sorted({image_of[i] for i, p in library_of.items() if p == path})
        finally:
            lib.close()
        assert floor is not None
        for name in held:
            typ = typicality(floor, vectors[name])
            shown = load_image(base / name).display
            rows.append({"image": name, "library": path.name, "nearest": typ.nearest,
                         "floor": floor.cosine, "unlike": not typ.inside,
                         "colour": colour_share(shown)})
    return rows


def packaged_pictures() -> list[dict[str, Any]]:
    """Every packaged non-library picture against the shipped library."""
    from pydicom.data import get_testdata_file

    source = shipped()
    if source is None:
        raise SystemExit("this install carries no shipped library")
    lib = open_case_library(source)
    rows: list[dict[str, Any]] = []
    try:
        floor = library_floor(lib)
        assert floor is not None
        with tempfile.TemporaryDirectory() as tmp:
            paths = [("scikit-image", _as_png(n, Path(tmp))) for n in SKIMAGE_PICTURES]
            paths += [("pydicom", Path(str(get_testdata_file(n)))) for n in PYDICOM_FILES]
            for origin, path in paths:
                img = load_image(path)
                verdict = SHIPPED_DOMAIN.judge(ImageFacts.of_image(img))
                typ = typicality(floor, lib.image_embedder.embed_images([img.display])[0])
                rows.append({"image": path.name, "from": origin, "colour": colour_share(img.display),
                             "refused": verdict.reason if verdict.status == "outside" else "",
                             "nearest": typ.nearest, "floor": floor.cosine,
                             "unlike": not typ.inside})
    finally:
        lib.close()
    return rows


def _verdict(row: dict[str, Any]) -> str:
    refused = str(row.get("refused") or "")
    why = "colour" if refused.startswith("a colour image") else refused
    return (f"refused ({why})" if refused else
            "flagged (unlike the library)" if row["unlike"] else "answered")


def main() -> int:
    """Print (or --json) both tables."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=Path, default=DEFAULT_ITEMS)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    t0 = time.perf_counter()
    dev = dev_images(args.items, args.folds, args.seed)
    pictures = packaged_pictures()
    if args.json:
        print(json.dumps({"dev": dev, "packaged": pictures}, indent=1))
        return 0
    nearest = np.array([r["nearest"] for r in dev])
    print(f"## {len(dev)} VQA-RAD dev images, each against the fold library that never saw it")
    print(f"flagged unlike the library: {sum(r['unlike'] for r in dev)}; colour share above "
          f"the refusal line: {sum(r['colour'] > 0.02 for r in dev)} (largest "
          f"{max(r['colour'] for r in dev):.3%})")
    print(f"cosine to the nearest library image: min {nearest.min():.4f}, median "
          f"{np.median(nearest):.4f}; the fold libraries' floors "
          f"{min(r['floor'] for r in dev):.4f}-{max(r['floor'] for r in dev):.4f}")
    for r in sorted(dev, key=lambda r: r["nearest"])[:3]:
        print(f"  closest call: {r['image']} {r['nearest']:.4f} (floor {r['floor']:.4f})")
    print()
    print(f"## {len(pictures)} packaged pictures against the shipped library "
          f"(floor {pictures[0]['floor']:.4f})")
    print("| picture | from | coloured pixels | cosine to nearest | verdict |")
    print("|---|---|---:|---:|---|")
    for r in sorted(pictures, key=lambda r: r["nearest"]):
        print(f"| {r['image']} | {r['from']} | {r['colour']:.1%} | {r['nearest']:.4f} | "
              f"{_verdict(r)} |")
    kept = sum(_verdict(r) != "answered" for r in pictures)
    print(f"\nkept off {kept} of {len(pictures)}; {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
