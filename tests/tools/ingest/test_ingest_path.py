"""tools.ingest.ingest_path, through the graph's ingest node: ids in state, pixels in the store."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tests.tools.ingest.helpers import CT, POSITIONS, sample, write_series
from tools.ingest import ingest_path
from tools.ingest.guard import SuspiciousFileError
from tools.ingest.loader import load_image
from tools.planes import volume_plane
from tools.store import ImageStore


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
    graph = build_graph(ctx, store=store)
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


def test_graph_ingest_refuses_a_polyglot(tmp_path: Path, medloop_home: Path) -> None:
    from agent import AgentContext, build_graph
    from tests.fakes import ScriptedChatModel

    raw = bytearray(Path(sample("MR_small.dcm")).read_bytes())
    raw[:4] = b"MZ\x90\x00"  # a Windows executable header in the preamble
    (tmp_path / "scan.dcm").write_bytes(bytes(raw))
    ctx = AgentContext(llm=ScriptedChatModel.of([]), tools=[], home=medloop_home,
                       checkpoint="memory")
    graph = build_graph(ctx)
    with pytest.raises(SuspiciousFileError, match=r"^scan\.dcm: the DICOM preamble holds a "
                                                  r"Windows PE executable header"):
        graph.invoke({"messages": [("user", "what is this?")],
                      "images": [str(tmp_path / "scan.dcm")]},
                     config={"configurable": {"thread_id": "poly"}})


def test_ingest_path_stores_a_volume_with_its_planes_and_an_image_alone(
        tmp_path: Path, store: ImageStore) -> None:
    write_series(tmp_path / "ct", POSITIONS)
    img, refs = ingest_path(store, tmp_path / "ct")
    assert img.source_format == "dicom-series" and refs[0].shape == (6, 128, 128)
    assert [r.plane for r in refs] == [None, "axial", "coronal", "sagittal"]
    assert all(r.id in store for r in refs) and refs[1].volume_id == refs[0].id
    flat, only = ingest_path(store, CT)
    assert flat.source_format == "dicom" and len(only) == 1 and only[0].plane is None
