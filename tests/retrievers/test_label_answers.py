"""Open questions about an image's modality, organ or plane, answered by the trained heads."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from retrievers.case_answers import CaseBank, answer_from_cases
from retrievers.embedders import shared_minilm
from retrievers.header_labels import header_labels, unknown_to_heads
from retrievers.heads import fit_head, predict_heads
from retrievers.label_answers import choice_answer, describe_answer, label_answer, label_phrasings
from retrievers.vqa_library import (
    QAItem,
    choice_question,
    describe_question,
    folds_by_image,
    image_labels,
    load_display,
    normalise_answer,
    open_label_question,
    read_items,
)
from tests.retrievers.test_vqa_library import MINI


@pytest.mark.parametrize(("question", "task"), [
    ("In what plane is this image oriented?", "plane"),
    ("What plane is this X-ray in?", "plane"),
    ("What cut of the brain is this image taken?", "plane"),
    ("How is the image oriented?", "plane"),
    ("What imaging modality was used?", "modality"),
    ("What kind of image is this?", "modality"),
    ("The imaging modality is...?", "modality"),
    ("What organ system is shown in the above image?", "organ"),
    ("Can you name the organ captured by this image?", "organ"),
    ("What part of the body does this radiograph show?", "organ"),
    ("What type of MRI sequence is this?", None),  # the sequence, not the modality
    ("What type of MRI is this?", None),
    ("What type of imaging does this not represent?", None),
    ("Was this image taken in the AP or PA plane?", None),  # a head cannot tell AP from PA
    ("What organ is involved?", None),  # a finding's organ
    ("What is the organ pictured superior to the aorta?", None),
    ("What can be typically visualized in this plane?", None),
    ("Where is the lesion located?", None),
    ("What contrast was administered to this patient?", None),
])
def test_which_open_questions_ask_a_label(question, task) -> None:
    assert open_label_question(question) == task


def _items() -> list[QAItem]:
    """Two axial CTs and three frontal films, asked their plane in clinicians' words."""
    return [
        QAItem("1", "ct1", "What plane is this image in?", "Axial", "open"),
        QAItem("2", "ct1", "Is this a CT?", "yes", "yesno"),
        QAItem("3", "ct2", "In what plane is this image oriented?", "axial", "open"),
        QAItem("4", "xr1", "What plane is this X-ray in?", "PA", "open"),
        QAItem("5", "xr2", "How is the image oriented?", "PA", "open"),
        QAItem("6", "xr3", "What is the name of this image's plane?", "Posteroanterior", "open"),
        QAItem("7", "xr3", "Where is the nodule?", "right upper lobe", "open"),
    ]


def test_phrasings_count_the_answers_per_task_and_class() -> None:
    said = label_phrasings(_items())
    assert said[("plane", "axial")] == Counter({"Axial": 2})  # one spelling per normal form
    assert said[("plane", "frontal")] == Counter({"PA": 2, "Posteroanterior": 1})
    assert all(task == "plane" for task, _ in said)  # "Where is the nodule?" asks no label


def _plane_head() -> tuple[dict, np.ndarray, np.ndarray]:
    x = np.array([[1, 0.1], [1, -0.1], [0.9, 0], [-1, 0.1], [-1, -0.1], [-0.9, 0]])
    head = fit_head(x, ["axial"] * 3 + ["frontal"] * 3, "plane", "e")
    return {"plane": head}, np.array([1.0, 0.0]), np.array([-1.0, 0.0])


def test_the_head_names_the_class_and_the_library_the_words() -> None:
    heads, axial, frontal = _plane_head()
    said = label_phrasings(_items())
    got = label_answer("Which plane is this image taken in?", frontal, heads, "e", said)
    assert got is not None and (got.answer, got.task, got.label) == ("PA", "plane", "frontal")
    assert got.p_label > 0.8 and (got.said, got.of) == (2, 3)
    assert got.score == pytest.approx(got.p_label * 3 / 5)
    assert "frontal" in got.summary and "'PA' 2 of 3" in got.summary
    got = label_answer("What plane is the image in?", axial, heads, "e", said)
    assert got is not None and got.answer == "Axial"
    # the head read what it knows: a plane it never saw would be called one of those
    assert "knows axial and frontal only" in got.summary


def test_without_the_library_s_words_the_class_is_said_at_half_the_probability() -> None:
    heads, _, frontal = _plane_head()
    got = label_answer("What plane is the image in?", frontal, heads, "e", {})
    assert got is not None and got.answer == "frontal (PA or AP)"
    assert got.score == pytest.approx(got.p_label / 2)


def test_a_phrasing_naming_another_organ_than_the_image_reads_as_is_not_said() -> None:
    """The library's films are chest films, answered "Chest x-ray": not a skull film's."""
    heads = _image_heads()  # +x a head CT, -x a chest film
    said = {("modality", "xray"): Counter({"Chest x-ray": 3, "Xray": 2}),
            ("modality", "ct"): Counter({"CT of the head": 2, "CT": 1})}
    film = np.array([-1.0, 0.0])
    got = label_answer("What imaging modality was used?", film, heads, "e", said)
    assert got is not None and got.answer == "Chest x-ray" and (got.said, got.of) == (3, 5)
    # the header says head (a skull film): the chest words go, the next fitting ones are said
    got = label_answer("What imaging modality was used?", film, heads, "e", said,
                       {"organ": "head"})
    assert got is not None and got.answer == "Xray" and (got.said, got.of) == (2, 5)
    assert got.score == pytest.approx(got.p_label * 3 / 7)
    # a CT the heads read as a head CT keeps "CT of the head"; with no fitting words, the class
    got = label_answer("What imaging modality was used?", np.array([1.0, 0.0]), heads, "e",
                       {("modality", "ct"): Counter({"CT of the chest": 2})})
    assert got is not None and got.answer == "CT" and got.score == pytest.approx(got.p_label / 2)
    assert "2 answers to this kind of question about a ct image name another" in got.summary


def test_other_questions_and_missing_heads_get_no_label_answer() -> None:
    heads, axial, _ = _plane_head()
    said = label_phrasings(_items())
    assert label_answer("Where is the nodule?", axial, heads, "e", said) is None
    assert label_answer("What imaging modality was used?", axial, heads, "e", said) is None


@pytest.mark.parametrize(("question", "asks"), [
    ("Describe this image", True),
    ("describe the scan.", True),
    ("Please describe this CT", True),
    ("Can you describe this image?", True),
    ("Could you please summarise the scan?", True),
    ("What do you see?", True),
    ("What does this image show?", True),
    ("What is shown in the image?", True),
    ("What is this?", True),
    # a part or a finding described: the clinicians' pairs ask these, with answers of their own
    ("Describe the appendix", False),
    ("How would you describe the lesion?", False),
    ("Can you describe the lesion?", False),
    ("What is shown in the left lung?", False),
    ("What are the findings?", False),
    ("What plane is this image in?", False),
])
def test_which_questions_ask_for_the_whole_image_described(question, asks) -> None:
    assert describe_question(question) is asks


def _image_heads() -> dict:
    """Modality, organ and plane heads on 2-D vectors: +x a head CT, -x a chest film."""
    x = np.array([[1, 0.1], [1, -0.1], [0.9, 0], [-1, 0.1], [-1, -0.1], [-0.9, 0]])
    planes = ["axial"] * 3 + ["frontal"] * 3
    return {"modality": fit_head(x, ["ct"] * 3 + ["xray"] * 3, "modality", "e"),
            "organ": fit_head(x, ["head"] * 3 + ["chest"] * 3, "organ", "e"),
            "plane": fit_head(x, planes, "plane", "e")}


def test_a_description_names_every_head_s_class_at_their_joint_probability() -> None:
    heads = _image_heads()
    got = describe_answer("Describe this image", np.array([1.0, 0.0]), heads, "e")
    assert got is not None and got.answer == "Axial CT of the head" and got.task == "describe"
    read = predict_heads(heads, np.array([1.0, 0.0]), "e")
    assert got.score == pytest.approx(np.prod([r[0][1] for r in read.values()]))
    assert 0.0 < got.score < 1.0 and got.score == got.p_label
    assert got.label == "ct/head/axial"
    # it names the classes each head knows and that none reads a finding
    assert "(of ct, xray)" in got.summary and "not what it shows" in got.summary
    # a plane the modality implies among the plane head's classes is said to be no more
    assert "knows axial and frontal; a CT has only axial of those" in got.summary
    got = describe_answer("What do you see?", np.array([-1.0, 0.0]), heads, "e")
    assert got is not None and got.answer == "Frontal X-ray of the chest"
    # only the heads there are
    got = describe_answer("What do you see?", np.array([1.0, 0.0]),
                          {"organ": heads["organ"]}, "e")
    assert got is not None and got.answer == "Image of the head"


def test_a_description_never_gives_a_modality_a_plane_it_has_not() -> None:
    # three modalities around the circle; near the centre the modality head leans to "xray"
    # below one half, so the joint plane reading (CT's and MR's "axial" summed) ranks axial first
    angles = {"ct": 0.0, "mr": 2.1, "xray": 4.2}
    x = np.array([[np.cos(a + d), np.sin(a + d)] for a in angles.values() for d in (-0.1, 0, 0.1)])
    modalities = [m for m in angles for _ in range(3)]
    heads = {"modality": fit_head(x, modalities, "modality", "e"),
             "plane": fit_head(x, ["frontal" if m == "xray" else "axial" for m in modalities],
                               "plane", "e")}
    v = 0.01 * np.array([np.cos(3.403), np.sin(3.403)])
    read = predict_heads(heads, v, "e")
    assert read["modality"][0][0] == "xray" and read["plane"][0][0] == "axial"
    got = describe_answer("Describe this image", v, heads, "e")
    assert got is not None and got.answer == "Frontal X-ray"  # a film is a projection


def test_what_the_dicom_header_says_goes_before_the_heads() -> None:
    assert header_labels({"modality": "CT", "body_part": "CHEST"}) == {"modality": "ct",
                                                                       "organ": "chest"}
    assert header_labels({"modality": "DX", "body_part": "Abdomen"}) == {"modality": "xray",
                                                                          "organ": "abd"}
    assert header_labels({"modality": "US", "body_part": "KNEE"}) == {"modality": "us",
                                                                       "organ": "knee"}
    assert header_labels({"modality": "unknown"}) == {} == header_labels({"modality": "OT"})
    heads = _image_heads()
    film = np.array([-1.0, 0.0])  # the heads read a frontal chest film
    got = describe_answer("Describe this image", film, heads, "e", {"modality": "ct"})
    # the header's CT, at probability one; the plane read again for a CT: a section, axial
    assert got is not None and got.answer == "Axial CT of the chest"
    assert "The DICOM header gives modality ct." in got.summary
    assert "organ chest" in got.summary and "modality ct 0." not in got.summary
    named = label_answer("What imaging modality was used?", film, heads, "e", {},
                         {"modality": "ct"})
    assert named is not None and (named.label, named.p_label) == ("ct", 1.0)
    assert "DICOM header gives ct" in named.summary
    # these heads know CT and films only: an MR header still answers a modality question,
    # in words the library has none of (so at half, as any class without them)
    named = label_answer("What imaging modality was used?", film, heads, "e", {},
                         {"modality": "mr"})
    assert named is not None and (named.answer, named.p_label, named.score) == ("MRI", 1.0, 0.5)
    # a modality or organ no head has a class for: the heads know nothing of this image, so
    # only the header speaks (an ultrasound's organ is not read off a head fitted on CT and film)
    got = describe_answer("Describe this image", film, heads, "e", {"modality": "us"})
    assert got is not None and got.answer == "Ultrasound" and got.score == 1.0
    assert "classifiers know nothing of such an image: modality us (its classifier knows ct, xray)" in (
        got.summary)
    got = describe_answer("Describe this image", film, heads, "e", {"organ": "knee"})
    assert got is not None and got.answer == "Image of the knee"
    assert label_answer("What organ is shown?", film, heads, "e", {},
                        {"modality": "us"}) is None
    # and what the header says that no head knows is named, for the tool's "no answer"
    assert unknown_to_heads(heads, {"modality": "us", "organ": "chest"}) == (
        "modality us (its classifier knows ct, xray)")
    assert unknown_to_heads(heads, {"modality": "ct"}) == "" == unknown_to_heads(heads, None)


_AXIAL = [1, 0, 0, 0, 1, 0]
_CORONAL = [1, 0, 0, 0, 0, -1]
_SAGITTAL = [0, 1, 0, 0, 0, -1]


def test_the_header_gives_a_section_s_plane_and_a_film_s_view() -> None:
    # a head CT's gantry tilt of 22 degrees (pydicom's J2K sample) is still axial
    assert header_labels({"modality": "CT", "orientation": [1, 0, 0, 0, 0.9272, -0.3746]})[
        "plane"] == "axial"
    t = np.radians(45)  # halfway between axial and coronal: not named
    assert "plane" not in header_labels({"modality": "MR",
                                          "orientation": [1, 0, 0, 0, np.cos(t), -np.sin(t)]})
    # a plane cut from an axial volume keeps the volume's cosines: its own plane is said
    cut = {"modality": "CT", "orientation": _AXIAL, "slice_orientation": "axial"}
    assert header_labels(cut | {"plane": "coronal"})["plane"] == "coronal"
    assert header_labels(cut | {"plane": "slice"})["plane"] == "axial"
    assert header_labels({"modality": "MR", "slice_orientation": "sagittal"})["plane"] == (
        "sagittal")
    assert header_labels({"modality": "CT", "orientation": _CORONAL}) == {
        "modality": "ct", "plane": "coronal"}
    assert header_labels({"modality": "DX", "view_position": "LL"}) == {
        "modality": "xray", "plane": "lateral"}
    assert header_labels({"modality": "CR", "view_position": "PA"})["plane"] == "frontal"
    # a film's cosines and a section's view say nothing; nor does a view without a modality
    assert "plane" not in header_labels({"modality": "DX", "orientation": _AXIAL})
    assert "plane" not in header_labels({"modality": "CT", "view_position": "AP"})
    assert "plane" not in header_labels({"view_position": "PA", "orientation": _AXIAL})
    heads = _image_heads()
    head_ct = np.array([1.0, 0.0])  # the heads read an axial head CT
    got = describe_answer("Describe this image", head_ct, heads, "e",
                          header_labels({"modality": "CT", "orientation": _AXIAL}))
    assert got is not None and got.answer == "Axial CT of the head"
    assert "The DICOM header gives modality ct, plane axial." in got.summary
    # a coronal section: the plane head (axial, frontal) knows nothing of it, so only the
    # header speaks, and the description says why the organ is not read
    got = describe_answer("Describe this image", head_ct, heads, "e",
                          header_labels({"modality": "CT", "orientation": _CORONAL}))
    assert got is not None and got.answer == "Coronal CT" and got.score == 1.0
    assert "plane coronal (its classifier knows axial, frontal)" in got.summary
    named = label_answer("In what plane is this image?", head_ct, heads, "e", {},
                         header_labels({"modality": "MR", "orientation": _SAGITTAL}))
    assert named is not None and (named.label, named.p_label) == ("sagittal", 1.0)
    assert "DICOM header gives sagittal" in named.summary
    # a lateral film the plane head would call frontal
    film = np.array([-1.0, 0.0])
    assert predict_heads(heads, film, "e")["plane"][0][0] == "frontal"
    named = label_answer("What plane is this film?", film, heads, "e", {},
                         header_labels({"modality": "DX", "view_position": "LATERAL"}))
    assert named is not None and named.label == "lateral"


@pytest.mark.parametrize(("question", "asked"), [
    ("Is this a CT or an MRI?", ("modality", ["ct", "mr"])),
    ("Was this taken with MRI or CT?", ("modality", ["ct", "mr"])),
    ("Is this image a CT scan, an MRI or an X-ray?", ("modality", ["ct", "mr", "xray"])),
    ("Is this an axial or a frontal image?", ("plane", ["axial", "frontal"])),
    ("Is this an axial or coronal section?", ("plane", ["axial", "coronal"])),
    ("Is this a CT?", None),  # no choice offered
    ("Was oral or IV contrast used?", None),  # contrast, not the modality
    ("Is this a contrast or non contrast CT?", None),
    ("Is this an AP or PA film?", None),  # the heads cannot tell AP from PA
    ("Is the lesion in the frontal or parietal lobe?", None),  # one plane word: a lobe
    ("Is this an axial CT or an MRI?", None),  # two tasks at once
])
def test_which_questions_offer_a_choice_of_classes(question, asked) -> None:
    assert choice_question(question) == asked


def test_a_choice_is_answered_with_the_class_the_heads_read_likelier() -> None:
    heads = _image_heads()
    head_ct, film = np.array([1.0, 0.0]), np.array([-1.0, 0.0])
    got = choice_answer("Is this a CT or an X-ray?", head_ct, heads, "e")
    read = dict(predict_heads(heads, head_ct, "e")["modality"])
    assert got is not None and (got.answer, got.task, got.label) == ("CT", "choice", "ct")
    assert got.score == pytest.approx(read["ct"]) and "classifier gives ct" in got.summary
    got = choice_answer("Is this an axial or a frontal image?", film, heads, "e")
    assert got is not None and got.answer == "Frontal" and "knows axial and frontal only" in (
        got.summary)
    # neither offered class: the class read, at one minus what the offered ones hold
    got = choice_answer("Is this an MRI or an ultrasound?", head_ct, heads, "e")
    assert got is None  # the modality head (ct, xray) never saw either: it cannot weigh them
    got = choice_answer("Is this an MRI or an X-ray?", head_ct, heads, "e", {"modality": "ct"})
    assert got is not None and (got.answer, got.label, got.score) == ("CT", "ct", 1.0)
    assert "(neither of MRI and X-ray)" in got.summary and got.from_header
    # a class the head never saw, and no header: no answer
    assert choice_answer("Is this an axial or coronal section?", head_ct, heads, "e") is None
    assert choice_answer("Is this a CT?", head_ct, heads, "e") is None


def test_other_questions_and_no_heads_get_no_description() -> None:
    heads = _image_heads()
    assert describe_answer("What plane is this image in?", np.array([1.0, 0.0]), heads,
                           "e") is None
    assert describe_answer("Describe this image", np.array([1.0, 0.0]), {}, "e") is None


@pytest.mark.slow
def test_label_answers_beat_the_vote_and_the_majority_on_held_out_images(mini_embedder) -> None:
    """The fixture's open modality / organ / plane questions, 4 folds by image.

    Heads and phrasings come from the fitting folds only (as a fold library has them);
    the neighbours' vote and the fitting folds' commonest answer of the category are the
    baselines. The vote answers only where a neighbour was asked a paraphrase; falling back
    to the majority where it has none, it draws level on these 12 images (11 of 18 each);
    the heads answer every one, and above the majority.
    """
    items = read_items(MINI)
    images = sorted({it.image for it in items})
    row = {im: i for i, im in enumerate(images)}
    x = mini_embedder.embed_images([load_display(MINI.parent / im) for im in images])
    qv = shared_minilm().embed_texts([it.question for it in items])
    folds = folds_by_image(images, 4)
    right = vote = alone = majority = n = 0
    for f in range(4):
        fit = [i for i, it in enumerate(items) if folds[it.image] != f]
        fit_imgs = sorted({items[i].image for i in fit})
        labels = image_labels([items[i] for i in fit])
        heads = {}
        for task in ("modality", "organ", "plane"):
            rows = [(im, labels[im][task]) for im in fit_imgs if task in labels[im]]
            if len({v for _, v in rows}) >= 2:
                heads[task] = fit_head(np.stack([x[row[im]] for im, _ in rows]),
                                       [v for _, v in rows], task, mini_embedder.name)
        bank = CaseBank.from_arrays(fit_imgs, x[[row[im] for im in fit_imgs]],
                                    [items[i] for i in fit], qv[fit])
        base: dict[str | None, Counter[str]] = {}
        for i in fit:
            if items[i].answer_type == "open":
                base.setdefault(items[i].category, Counter())[
                    normalise_answer(items[i].answer)] += 1
        for i, it in enumerate(items):
            if (folds[it.image] != f or it.answer_type != "open"
                    or open_label_question(it.question) is None):
                continue
            truth = normalise_answer(it.answer)
            guess = base[it.category].most_common(1)[0][0] if it.category in base else ""
            got = label_answer(it.question, x[row[it.image]], heads, mini_embedder.name,
                               bank.phrasings())
            res = answer_from_cases(bank, x[row[it.image]], qv[i], it.question)
            right += (normalise_answer(got.answer) if got else guess) == truth
            vote += (normalise_answer(res.answer) if res else guess) == truth
            alone += res is not None and normalise_answer(res.answer) == truth
            majority += guess == truth
            n += 1
    assert n >= 15
    assert right > max(majority, alone) and right >= vote, (right, vote, alone, majority, n)
