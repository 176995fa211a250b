"""Volumes: DICOM series folders, NIfTI, orthogonal views, and CT window presets."""

from __future__ import annotations

import json
import random
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from tools.vision.basic import describe, measure_distance
from tools.errors import IngestError, NotAnImageError, ToolInputError
from tools.ingest.guard import ImageTooLargeError, InvalidDimensionsError
from tools.ingest.volume import WINDOW_PRESETS, is_volume, orthogonal_views, volume_plane, window
from tools.ingest.loader import load_image
from tools.store import ImageStore

CT = get_testdata_file("CT_small.dcm")
assert CT is not None


def write_series(
    folder: Path,
    positions_mm: list[float],
    orientation: tuple[float, ...] = (1, 0, 0, 0, 1, 0),
    series_uid: str | None = None,
    seed: int = 0,
    prefix: str = "",
) -> list[int]:
    """Copies of CT_small, one per position along the slice normal, in shuffled file order.

    Slice k (in position order) has raw pixels + 10*k, so the order is readable from the values.
    Returns the file order used (slice index per file).
    """
    folder.mkdir(exist_ok=True)
    base = pydicom.dcmread(CT)
    row, col = np.array(orientation[:3], float), np.array(orientation[3:], float)
    normal = np.cross(row, col)
    origin = np.array([-158.1, -179.0, 0.0])
    uid = series_uid or generate_uid()
    order = list(range(len(positions_mm)))
    random.Random(seed).shuffle(order)
    for file_index, k in enumerate(order):
        ds = pydicom.dcmread(CT)
        ds.SeriesInstanceUID = uid
        ds.SOPInstanceUID = generate_uid()
        ds.InstanceNumber = len(order) - k  # deliberately reversed: must not drive the order
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in orientation]
        ds.ImagePositionPatient = [f"{v:.6f}" for v in origin + positions_mm[k] * normal]
        ds.PixelData = (base.pixel_array + 10 * k).astype(np.int16).tobytes()
        ds.save_as(folder / f"{prefix}{file_index:03d}.dcm")
    return order


def raw_hu() -> np.ndarray:
    return pydicom.dcmread(CT).pixel_array.astype(np.float32) - 1024


# ---------------------------------------------------------------------------------------------
# DICOM series
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_series_sorted_by_position_whatever_the_file_order(tmp_path: Path, seed: int) -> None:
    positions = [2.5 * k for k in range(7)]
    write_series(tmp_path / "ct", positions, seed=seed)
    img = load_image(tmp_path / "ct")
    assert img.pixels.shape == (7, 128, 128) and img.frames == 7
    assert img.source_format == "dicom-series"
    for k in range(7):
        np.testing.assert_array_equal(img.pixels[k], raw_hu() + 10 * k)
    # Spacing from the geometry (2.5 mm), not SliceThickness (5 mm in CT_small).
    assert img.meta["slice_spacing_mm"] == pytest.approx(2.5)
    assert img.meta["slice_thickness"] == 5.0
    assert img.spacing_mm == pytest.approx((0.661468, 0.661468))
    assert img.meta["units"] == "HU" and img.meta["frames"] == 7
    assert img.display.shape == (128, 128) and img.display.dtype == np.uint8


def test_oblique_series_sorted_along_the_normal(tmp_path: Path) -> None:
    c, s = np.cos(np.radians(30)), np.sin(np.radians(30))
    # Rows along x, columns tilted 30 deg in y-z: the normal has a large y component, so sorting
    # by z alone would still work here but sorting by x would not; negative steps too.
    orientation = (1.0, 0.0, 0.0, 0.0, c, s)
    positions = [-6.0, -3.0, 0.0, 3.0, 6.0]
    write_series(tmp_path / "obl", positions, orientation=orientation, seed=3)
    img = load_image(tmp_path / "obl")
    means = img.pixels.reshape(5, -1).mean(axis=1)
    assert (np.diff(means) > 0).all()  # slice k has +10 k: ascending along the normal
    assert img.meta["slice_spacing_mm"] == pytest.approx(3.0, abs=1e-4)


def test_irregular_gaps_noted(tmp_path: Path) -> None:
    write_series(tmp_path / "gap", [0.0, 2.0, 4.0, 9.0, 11.0])
    img = load_image(tmp_path / "gap")
    assert img.meta["slice_spacing_mm"] == pytest.approx(2.0)
    assert any("irregular" in n for n in img.notes)


def test_mixed_series_names_the_uids(tmp_path: Path) -> None:
    folder = tmp_path / "mixed"
    a, b = generate_uid(), generate_uid()
    write_series(folder, [0.0, 5.0], series_uid=a, prefix="a")
    write_series(folder, [0.0, 5.0], series_uid=b, prefix="b")
    with pytest.raises(IngestError) as info:
        load_image(folder)
    msg = str(info.value)
    assert msg.startswith("mixed: folder mixes 2 series") and a in msg and b in msg
    assert "\n" not in msg


def test_duplicate_positions_and_missing_geometry(tmp_path: Path) -> None:
    write_series(tmp_path / "dup", [0.0, 5.0, 5.0])
    with pytest.raises(IngestError, match="share a position"):
        load_image(tmp_path / "dup")
    write_series(tmp_path / "nogeo", [0.0, 5.0])
    path = next((tmp_path / "nogeo").iterdir())
    ds = pydicom.dcmread(path)
    del ds.ImagePositionPatient
    ds.save_as(path)
    with pytest.raises(InvalidDimensionsError, match="ImagePositionPatient"):
        load_image(tmp_path / "nogeo")


def test_junk_files_ignored_and_single_file_folder(tmp_path: Path) -> None:
    write_series(tmp_path / "s", [0.0, 1.0, 2.0])
    (tmp_path / "s" / "README.txt").write_text("not a slice")
    img = load_image(tmp_path / "s")
    assert img.frames == 3 and any("1 non-DICOM file" in n for n in img.notes)
    write_series(tmp_path / "one", [0.0])
    single = load_image(tmp_path / "one")
    assert single.pixels.shape == (128, 128) and single.source_format == "dicom"
    (tmp_path / "none").mkdir()
    with pytest.raises(NotAnImageError, match="none: folder holds no DICOM files"):
        load_image(tmp_path / "none")


# ---------------------------------------------------------------------------------------------
# NIfTI
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_nifti_ras_volume(tmp_path: Path, suffix: str) -> None:
    data = np.zeros((20, 30, 10), dtype=np.int16)  # (X, Y, Z) voxels
    data[0, 29, 9] = 1000  # patient-left-most, most anterior, most superior voxel (RAS affine)
    data[5:15, 10:20, 3:7] = 200
    affine = np.diag([0.8, 0.9, 3.0, 1.0])
    path = tmp_path / f"brain{suffix}"
    nib.save(nib.Nifti1Image(data, affine), str(path))
    img = load_image(path)
    assert img.source_format == "nifti" and img.pixels.shape == (10, 30, 20)
    assert img.spacing_mm == pytest.approx((0.9, 0.8))
    assert img.meta["slice_spacing_mm"] == pytest.approx(3.0)
    # Radiological layout: top slice = superior, row 0 = anterior, last column = patient left.
    assert img.pixels[9, 0, 19] == 1000
    assert img.display.shape == (30, 20) and img.frames == 10


def test_nifti_lps_affine_is_reoriented(tmp_path: Path) -> None:
    data = np.zeros((20, 30, 10), dtype=np.float32)
    data[0, 0, 0] = 5.0  # with x, y flipped (LPS-like) voxel 0 is patient right, anterior
    affine = np.diag([-0.8, -0.9, 3.0, 1.0])
    nib.save(nib.Nifti1Image(data, affine), str(tmp_path / "lps.nii"))
    img = load_image(tmp_path / "lps.nii")
    assert img.pixels[0, 0, 0] == 5.0  # image left = patient right, top row = anterior


def test_nifti_4d_keeps_first_volume_and_bad_file_is_refused(tmp_path: Path) -> None:
    data = np.stack([np.full((8, 8, 4), v, np.float32) for v in (1.0, 2.0)], axis=-1)
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(tmp_path / "fmri.nii.gz"))
    img = load_image(tmp_path / "fmri.nii.gz")
    assert img.pixels.shape == (4, 8, 8) and (img.pixels == 1.0).all()
    assert any("4D" in n for n in img.notes)
    (tmp_path / "bad.nii").write_bytes(b"\x00" * 100)
    with pytest.raises(NotAnImageError, match=r"bad\.nii: not a readable NIfTI"):
        load_image(tmp_path / "bad.nii")


def test_nifti_absurd_header_dimensions(tmp_path: Path) -> None:
    img = nib.Nifti1Image(np.zeros((4, 4, 4), np.uint8), np.eye(4))
    path = tmp_path / "huge.nii"
    nib.save(img, str(path))
    raw = bytearray(path.read_bytes())
    dims = np.frombuffer(bytes(raw[40:56]), dtype="<i2").copy()
    dims[1:4] = 30000  # 2.7e13 voxels declared
    raw[40:56] = dims.astype("<i2").tobytes()
    path.write_bytes(bytes(raw))
    with pytest.raises(IngestError, match=r"huge\.nii: image is too large"):
        load_image(path)


def test_nifti_gzip_bomb_is_refused_from_the_header(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A gzipped float64 volume of zeros: tiny on disk, refused before it is inflated."""
    import tools.ingest.volume as iv

    nib.save(nib.Nifti1Image(np.zeros((64, 64, 64), np.float64), np.eye(4)),
             tmp_path / "bomb.nii.gz")
    assert (tmp_path / "bomb.nii.gz").stat().st_size < 10_000  # 2 MiB of voxels inflated
    monkeypatch.setattr(iv, "MAX_NIFTI_BYTES", 2**20)  # as if 1 GiB, scaled down
    with pytest.raises(ImageTooLargeError, match=r"bomb\.nii\.gz: .*2097152 bytes of voxel"):
        load_image(tmp_path / "bomb.nii.gz")


# ---------------------------------------------------------------------------------------------
# Orthogonal views
# ---------------------------------------------------------------------------------------------
def test_orthogonal_views_shapes_and_orientation() -> None:
    s, h, w = 10, 30, 20
    vol = np.zeros((s, h, w), np.float32)
    vol[s - 1] = 7.0  # the most superior slice
    views = orthogonal_views(vol)
    assert views["axial"].shape == (h, w)
    assert views["coronal"].shape == (s, w) and views["sagittal"].shape == (s, h)
    assert (views["coronal"][0] == 7.0).all() and (views["sagittal"][0] == 7.0).all()
    assert (views["axial"] == vol[s // 2]).all()
    with pytest.raises(ToolInputError):
        orthogonal_views(np.zeros((4, 4)))


# ---------------------------------------------------------------------------------------------
# CT windows
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(WINDOW_PRESETS))
def test_window_presets_map_their_range(name: str) -> None:
    center, width = WINDOW_PRESETS[name]
    hu = np.array([center - width / 2 - 100, center - width / 2, center, center + width / 2,
                   center + width / 2 + 100])
    out = window(hu, name)
    assert out.dtype == np.uint8
    assert list(out[[0, 1, 3, 4]]) == [0, 0, 255, 255]
    assert 127 <= out[2] <= 128


def test_lung_window_values_and_pairs() -> None:
    out = window(np.array([[-1350.0, -600.0, 150.0, 3000.0, np.nan]]), "lung")
    assert out.tolist() == [[0, 128, 255, 255, 0]]
    assert window(np.array([-125.0, 225.0]), "Mediastinum").tolist() == [0, 255]
    assert window(np.array([0.0, 80.0]), "brain").tolist() == [0, 255]
    assert window(np.array([-500.0, 1300.0]), "bone").tolist() == [0, 255]
    assert window(np.array([-160.0, 240.0]), "abdomen").tolist() == [0, 255]
    np.testing.assert_array_equal(window(np.array([-600.0, 150.0]), (-600, 1500)),
                                  window(np.array([-600.0, 150.0]), "lung"))
    with pytest.raises(ToolInputError, match="unknown window preset"):
        window(np.zeros(3), "liver")
    with pytest.raises(ToolInputError, match="positive"):
        window(np.zeros(3), (40, 0))


def test_window_on_a_real_ct_series(tmp_path: Path) -> None:
    write_series(tmp_path / "ct", [0.0, 5.0, 10.0])
    vol = load_image(tmp_path / "ct").pixels
    lung = window(vol, "lung")
    assert lung.shape == vol.shape
    assert (lung[vol <= -1350] == 0).all() and (lung[vol >= 150] == 255).all()


# ---------------------------------------------------------------------------------------------
# Volumes end to end: store, planes for the 2D tools, the graph's ingest node, the CLI
# ---------------------------------------------------------------------------------------------
POSITIONS = [0.0, 2.5, 5.0, 7.5, 10.0, 12.5]  # 2.5 mm apart


def test_store_keeps_the_volume_and_cuts_planes(tmp_path: Path, store: ImageStore) -> None:
    write_series(tmp_path / "ct", POSITIONS)
    vol = load_image(tmp_path / "ct")
    assert is_volume(vol) and vol.meta["slice_orientation"] == "axial"
    ref = store.put(vol)
    assert ref.shape == (6, 128, 128) and "6-slice axial volume" in ref.summary
    assert "2.5 mm apart" in ref.summary

    views = store.put_views(ref.id)
    assert [v.plane for v in views] == ["axial", "coronal", "sagittal"]
    assert all(v.volume_id == ref.id and v.id != ref.id for v in views)
    axial, coronal, sagittal = (store.get(v.id) for v in views)
    px = store.get(ref.id).pixels  # the volume itself, kept whole by its id
    np.testing.assert_array_equal(axial.pixels, px[3])
    np.testing.assert_array_equal(coronal.pixels, px[::-1, 64])  # superior slice on top
    np.testing.assert_array_equal(sagittal.pixels, px[::-1, :, 64])
    assert axial.spacing_mm == pytest.approx((0.661468, 0.661468))
    assert axial.spacing_source == "PixelSpacing" and coronal.spacing_source == "volume geometry"
    # Reformatted rows are slices: their spacing is the slice spacing from the positions.
    assert coronal.spacing_mm == pytest.approx((2.5, 0.661468))
    assert sagittal.spacing_mm == pytest.approx((2.5, 0.661468))
    assert coronal.meta["units"] == "HU" and coronal.meta["volume_id"] == ref.id
    assert "coronal plane 65/128 of " + ref.id in views[1].summary
    # 2D tools work on a plane, in real mm: 4 slices down the coronal plane = 10 mm.
    assert measure_distance(coronal, [10, 0, 10, 4]).length_mm == pytest.approx(10.0)
    d = describe(coronal)
    assert d.stats.unit == "HU" and d.frames == 1
    assert d.fov_mm == pytest.approx((128 * 0.661468, 6 * 2.5))
    # Any slice can be asked for; one plane image per content, so asking twice is free.
    first = store.put_plane(ref.id, "axial", 0)
    np.testing.assert_array_equal(store.get(first.id).pixels, px[0])
    assert store.put_plane(ref.id, "axial", 0).id == first.id


def test_plane_display_uses_one_window_for_every_plane(tmp_path: Path) -> None:
    write_series(tmp_path / "ct", POSITIONS)
    vol = load_image(tmp_path / "ct")
    vol.meta.pop("window_center", None)
    vol.meta.pop("window_width", None)
    lo, hi = np.percentile(vol.pixels, [0.5, 99.5])
    for plane in ("axial", "coronal", "sagittal"):
        img = volume_plane(vol, plane)
        assert img.display.dtype == np.uint8
        assert (img.display[img.pixels <= lo] == 0).all()
        assert (img.display[img.pixels >= hi] == 255).all()
    vol.meta.update(window_center=[40.0, 400.0], window_width=[400.0, 2000.0])
    img = volume_plane(vol, "coronal")  # the file's first window: -160..240 HU
    assert (img.display[img.pixels <= -160] == 0).all()
    assert (img.display[img.pixels >= 240] == 255).all()


def test_planes_refuse_bad_requests(tmp_path: Path, store: ImageStore) -> None:
    write_series(tmp_path / "ct", POSITIONS)
    vol = load_image(tmp_path / "ct")
    with pytest.raises(ToolInputError, match=r"outside the volume \(0-5\)"):
        volume_plane(vol, "axial", 6)
    with pytest.raises(ToolInputError, match="unknown plane"):
        volume_plane(vol, "oblique")
    flat = load_image(CT)
    with pytest.raises(ToolInputError, match="not a volume"):
        volume_plane(flat, "axial")
    with pytest.raises(ToolInputError, match="not a volume"):
        store.put_views(store.put(flat).id)
    # A sagittal stack: its own slices only, reformats would be mislabelled.
    write_series(tmp_path / "sag", POSITIONS, orientation=(0, 1, 0, 0, 0, -1))
    sag = load_image(tmp_path / "sag")
    assert sag.meta["slice_orientation"] == "sagittal"
    with pytest.raises(ToolInputError, match="sagittal stack"):
        volume_plane(sag, "coronal")
    ref = store.put(sag)
    assert [v.plane for v in store.put_views(ref.id)] == ["slice"]


def test_axial_series_with_a_downward_normal_still_runs_feet_to_head(tmp_path: Path) -> None:
    # Columns running toward the patient's anterior make row x col point inferior.
    write_series(tmp_path / "ct", POSITIONS, orientation=(1, 0, 0, 0, -1, 0))
    vol = load_image(tmp_path / "ct")
    assert vol.meta["slice_orientation"] == "axial"
    # write_series adds 10 * k to slice k at position POSITIONS[k] * normal, normal = -z:
    # the most superior slice is k = 0, so it must come last.
    np.testing.assert_array_equal(vol.pixels[-1], raw_hu())
    np.testing.assert_array_equal(vol.pixels[0], raw_hu() + 50)


def test_nifti_volume_gets_planes(tmp_path: Path, store: ImageStore) -> None:
    data = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)  # X, Y, Z
    nib.save(nib.Nifti1Image(data, np.diag([0.8, 0.9, 3.0, 1.0])), tmp_path / "v.nii.gz")
    ref = store.put(load_image(tmp_path / "v.nii.gz"))
    views = {v.plane: store.get(v.id) for v in store.put_views(ref.id)}
    assert views["axial"].pixels.shape == (5, 4)
    assert views["axial"].spacing_mm == pytest.approx((0.9, 0.8))
    assert views["coronal"].pixels.shape == (6, 4)
    assert views["coronal"].spacing_mm == pytest.approx((3.0, 0.8))
    assert views["sagittal"].spacing_mm == pytest.approx((3.0, 0.9))
    # Top row of the coronal plane is the most superior voxel row (Z = 5).
    assert views["coronal"].pixels[0].tolist() == data[::-1, 2, 5].tolist()


def test_graph_ingests_a_series_folder_and_a_nifti(tmp_path: Path, store: ImageStore,
                                                    medloop_home: Path) -> None:
    """A folder and a .nii.gz in one turn: volume ids plus their planes, ids only in state."""
    from agent import AgentContext, build_graph
    from tests.fakes import ScriptedChatModel, ai, call, final
    from tools.vision.basic import basic_tools

    write_series(tmp_path / "ct", POSITIONS)
    nib.save(nib.Nifti1Image(np.random.default_rng(0).normal(size=(8, 8, 5)).astype(np.float32),
                             np.diag([1.0, 1.0, 2.0, 1.0])), tmp_path / "brain.nii.gz")
    coronal_id = volume_plane(load_image(tmp_path / "ct"), "coronal").content_id()
    model = ScriptedChatModel.of([
        ai(call("measure_distance", image_id=coronal_id, points=[10, 0, 10, 4])),
        lambda msgs: final("The segment is 10 mm long.", [("10 mm", ["E1"])], 0.9),
    ])
    ctx = AgentContext(llm=model, tools=basic_tools(store), home=medloop_home,
                       checkpoint="memory")
    ctx._store = store
    graph = build_graph(ctx)
    result = graph.invoke(
        {"messages": [("user", "How long?")],
         "images": [str(tmp_path / "ct"), str(tmp_path / "brain.nii.gz")]},
        config={"configurable": {"thread_id": "vol"}},
    )
    refs = result["image_refs"]
    assert [r.plane for r in refs] == [None, "axial", "coronal", "sagittal"] * 2
    assert refs[2].id == coronal_id and refs[2].volume_id == refs[0].id
    assert result["evidence"][0].status == "ok"
    assert result["evidence"][0].summary.startswith("distance 10.0 mm")
    # The planner was offered every id, the volumes' and their planes'.
    schema = {t["function"]["name"]: t for t in model.offered[0]}
    offered = schema["measure_distance"]["function"]["parameters"]["properties"]["image_id"]
    assert set(offered["enum"]) == {r.id for r in refs}
    # The state keeps ids and summaries, never paths.
    assert str(tmp_path) not in json.dumps([r.model_dump(mode="json") for r in refs])
    assert result["images"] == []


@pytest.mark.parametrize("kind", ["folder", "nifti"])
def test_cli_inspect_volumes(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                             kind: str) -> None:
    from agent.cli.main import main

    if kind == "folder":
        write_series(tmp_path / "ct", POSITIONS)
        target, fmt, shape = tmp_path / "ct", "dicom-series", [6, 128, 128]
    else:
        nib.save(nib.Nifti1Image(np.zeros((4, 5, 6), np.float32), np.eye(4)),
                 tmp_path / "v.nii.gz")
        target, fmt, shape = tmp_path / "v.nii.gz", "nifti", [6, 5, 4]
    assert main(["inspect", str(target), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["source_format"] == fmt and data["shape"] == shape
    assert data["metadata"]["slice_orientation"] == "axial"
    assert data["metadata"]["slice_spacing_mm"] == pytest.approx(2.5 if kind == "folder" else 1)


@pytest.mark.parametrize("kind", ["empty-folder", "mixed-folder", "bad-nifti"])
def test_cli_inspect_bad_volume_exits_2_with_one_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str) -> None:
    from agent.cli.main import main

    if kind == "empty-folder":
        target = tmp_path / "empty"
        target.mkdir()
    elif kind == "mixed-folder":
        target = tmp_path / "mixed"
        write_series(target, [0.0, 5.0])
        write_series(target, [0.0, 5.0], prefix="b")
    else:
        target = tmp_path / "broken.nii.gz"
        target.write_bytes(b"\x1f\x8b not really gzip")
    code = main(["inspect", str(target), "--json"])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert err.startswith("medloop: ") and err.count("\n") == 1 and target.name in err
