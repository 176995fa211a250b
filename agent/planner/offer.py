"""Which tool schemas the planner is offered this round.

The schemas are the tools' own (pydantic → OpenAI function format) with the ids that exist
right now written in as ``enum`` values: ``image_id`` may only name a loaded image and
``evidence_ids`` only an evidence item that succeeded. A constrained decoder (the embedded
model) then cannot produce an id that does not exist, and a larger model is told exactly what
it may cite. ``final_answer`` is withheld until there is evidence when images are attached:
the agent looks before it speaks.

Each tool's declared domain (``tools.domain``, on the tool as ``metadata["domain"]``) is read
against the images' modality and format: an image a tool refuses is left out of its
``image_id`` enum (the tool is withheld when no image is left), and a tool that would run
flagged on every image gets ``OUTSIDE_NOTE`` and the reason appended to its description, which
the planner reads and the router (``agent.planner.route``) ranks last.

A tool does not change its answer: once a tool that reads nothing but the image
(``repeats_nothing``: its one required argument is ``image_id``, its options are scalars) has
returned good evidence on an image, that image leaves its ``image_id`` enum, and the tool is
withheld when no image is left. Offered anyway, the Qwen planners called ``describe_image``
again and again until the round budget ran out (issue 15). Tools that take a place or a
target (a box, points, a preset) stay on offer: another box is another question; *act* turns
an identical call into "already done: see E1".

A string argument with a closed set of values under the run's libraries (``ToolSpec.choices``,
on the tool as ``metadata["choices"]``: the trained tasks of the heads ``classify`` reads)
becomes an enum of them too.

A tool that failed twice running on an image (``FAILURES_BEFORE_WITHHELD``) is no longer
offered that image either: its failures stay in the evidence for the planner to read.

A mask that flagged evidence made is not offered to the tools that take one, and while every
good result so far is flagged as outside its tool's domain and another tool is on offer,
``final_answer`` waits, and once an unflagged result is in, only unflagged ones may be cited:
such evidence cannot carry an answer (``agreement.outside_only``). On real items both Qwen
planners, offered ``measure_lungs`` beside ``case_answer``, called the first and answered from
its lung areas on abdominal and head images; the 1.5B, made to wait, then cited the lung areas
beside the expert's answer.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_openai_tool

from agent.answer import FINAL_ANSWER_TOOL, FinalAnswerArgs
from agent.llm.text_protocol import inline_refs
from tools.domain import Domain, ImageFacts
from tools.evidence import Evidence
from tools.image import ImageRef

OUTSIDE_NOTE = "Not validated for"
"""Starts the sentence appended to a tool's description when every attached image is outside
its declared domain; the router finds it there."""


def _set_enum(params: dict[str, Any], key: str, values: list[str], *, array: bool) -> None:
    prop = params.get("properties", {}).get(key)
    if prop is None or not values:
        return
    if array:
        prop["items"] = {"type": "string", "enum": values}
        prop["minItems"] = 1
    else:
        prop.clear()
        prop.update({"type": "string", "enum": values})


def final_answer_schema(evidence_ids: list[str]) -> dict[str, Any]:
    """The ``final_answer`` tool in OpenAI format, citing only ``evidence_ids``."""
    spec = convert_to_openai_tool(FinalAnswerArgs)
    spec["function"]["name"] = FINAL_ANSWER_TOOL
    params = inline_refs(spec["function"]["parameters"])
    claims = params["properties"]["claims"]
    claim = claims["items"]
    _set_enum(claim, "evidence_ids", evidence_ids, array=True)
    if evidence_ids:
        # With evidence to cite, an answer must make at least one cited claim: a constrained
        # decoder then cannot emit "claims": [] (the small planner did, before this).
        claims["minItems"] = 1
        claim["required"] = ["statement", "evidence_ids"]
    params["required"] = ["answer", "claims", "confidence"]
    spec["function"]["parameters"] = params
    return spec


ANSWER_TAIL = r"( [A-Za-z0-9 ,.;:()%'/-]{1,150})?$"
"""What may follow the bound yes/no in ``final_answer``'s answer: a short plain sentence (no
quotes or backslashes, so the JSON string cannot break)."""


_PLAIN = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ./-]{0,40}")
"""A lead the pattern can hold: words and numbers ("Yes", "2", "Right", "13.5 mm", "X-ray")."""


def bind_answer(offer: list[dict[str, Any]], lead: str | None) -> list[dict[str, Any]]:
    """``offer`` with ``final_answer``'s answer bound to open with ``lead``.

    *think* passes what in-domain evidence gave this very question, one way
    (``agent.trust.agreement.evidence_lead``): its yes or no, a count, a patient's side. The
    answer's schema gets a ``pattern``: "Yes." or "No." (or with a comma), or the count or
    side with optional punctuation, and then the planner's own words. A constrained decoder
    (the embedded planner) cannot write another; a server that honours patterns neither; for
    any other, rethink's meaning check still holds the answer to it. On real items the small
    planner answered "No." under evidence reading "Answer: yes", and the loop then abstained;
    on phantoms it answered counts with places and sides the wrong way round. The planner
    keeps every other choice: to call another tool first, what to cite, what to add. Nothing
    changes when evidence answered both ways or not at all.
    """
    if lead is None or not _PLAIN.fullmatch(lead):
        return offer
    yes_no = lead.lower() in ("yes", "no")
    # llama.cpp's schema converter copies a backslash escape into the grammar literally: a
    # dot, hyphen or slash goes in a class of its own; nothing else but letters, digits and
    # spaces is bound
    head = re.sub(r"([./-])", r"[\1]", lead.capitalize() if yes_no else lead)
    pattern = f"^{head}[.,]{ANSWER_TAIL}" if yes_no else f"^{head}[.,]?{ANSWER_TAIL}"
    out = []
    for spec in offer:
        if spec["function"]["name"] == FINAL_ANSWER_TOOL:
            spec = {**spec, "function": {**spec["function"]}}
            params = dict(spec["function"]["parameters"])
            props = dict(params["properties"])
            props["answer"] = {"type": "string", "pattern": pattern,
                               "description": props["answer"].get("description", "")}
            spec["function"]["parameters"] = {**params, "properties": props}
        out.append(spec)
    return out


def repeats_nothing(params: dict[str, Any]) -> bool:
    """Whether a tool with these parameters (``$ref``s inlined) answers the same every time.

    True when ``image_id`` is its only required argument and no option is a list or object (a
    box, points), which would make another call another question.
    """
    props = params.get("properties", {})
    if params.get("required", []) != ["image_id"] or "image_id" not in props:
        return False
    return all(_scalar(p) for k, p in props.items() if k != "image_id")


def _scalar(schema: Any) -> bool:
    """A JSON schema of a number, string, boolean or null (or a choice among them)."""
    if not isinstance(schema, dict):
        return False
    if "anyOf" in schema:
        return all(_scalar(s) for s in schema["anyOf"])
    return schema.get("type") in ("string", "integer", "number", "boolean", "null")


def answered_images(evidence: Sequence[Evidence]) -> dict[str, list[str]]:
    """Per tool, the images it has already returned good evidence on, in order."""
    out: dict[str, dict[str, None]] = {}
    for e in evidence:
        image = e.image_id or e.args.get("image_id")
        if e.status == "ok" and isinstance(image, str):
            out.setdefault(e.tool, {})[image] = None
    return {tool: list(images) for tool, images in out.items()}


FAILURES_BEFORE_WITHHELD = 2
"""Failed calls of a tool on an image, with no success since, after which that image leaves the
tool's ``image_id`` enum. On real items the small planner called ``find`` with a target it
cannot ground five times in a row, each failure naming what it can ground, until the round
budget ran out; withheld, the planner answers from what it has or abstains a round sooner."""


def failing_images(evidence: Sequence[Evidence]) -> dict[str, list[str]]:
    """Per tool, the images its last ``FAILURES_BEFORE_WITHHELD`` calls or more failed on.

    A tool that takes no image (a text search) is keyed by ``""``: failing twice running, it
    is withheld altogether. A tool that refused an image as outside its domain
    (``OutsideDomain``, ``data["refused"]``) is withheld for it at once: no other arguments
    mend the image (a colour photograph), and offered again, the small planner called
    ``case_answer`` on it once more and the refusal cost a round.
    """
    streak: dict[tuple[str, str], int] = {}
    for e in evidence:
        image = e.image_id or e.args.get("image_id")
        key = (e.tool, image if isinstance(image, str) else "")
        streak[key] = (0 if e.status == "ok" else FAILURES_BEFORE_WITHHELD
                       if e.data.get("refused") else streak.get(key, 0) + 1)
    out: dict[str, list[str]] = {}
    for (tool, image), n in streak.items():
        if n >= FAILURES_BEFORE_WITHHELD:
            out.setdefault(tool, []).append(image)
    return out


def _domain_fit(tool: BaseTool, images: Sequence[ImageRef]) -> tuple[list[str], str]:
    """The image ids ``tool`` may be offered, and a note when it is outside for all of them.

    Only what the refs say is judged (modality, format): a ref carries no body part or view, so
    an *unknown* verdict here is not held against the tool; the wrapper judges the full
    metadata when it runs. A domain that covers only some calls (``applies``) never drops one.
    """
    domain = (tool.metadata or {}).get("domain")
    ids = [r.id for r in images]
    if not isinstance(domain, Domain) or domain.is_any:
        return ids, ""
    verdicts = {r.id: domain.judge(ImageFacts.of_ref(r)) for r in images}
    partial = domain.applies is not None
    kept = [i for i in ids if partial or verdicts[i].status != "outside"
            or domain.outside != "refuse"]
    outside = [i for i in kept if verdicts[i].status == "outside"]
    if not kept or len(outside) < len(kept):
        return kept, ""
    # No ids in the note: the tools' text is the start of every prompt, and an id there would
    # make each image's prompt a new one (the embedded planner reuses a prompt's shared start).
    reasons = "; ".join(dict.fromkeys(verdicts[i].reason for i in outside))
    which = "this image" if len(outside) == 1 else "these images"
    return kept, (f"{OUTSIDE_NOTE} {which} (validated on {domain.validated_on}; "
                  f"this is {reasons}): its results there are not findings.")


def unfit_tools(tools: Sequence[BaseTool], images: Sequence[ImageRef]) -> dict[str, str]:
    """Tool name -> why, for each tool whose domain refuses every image (so it is not offered).

    What the refs say decides (``_domain_fit``): a colour picture for a grey-scale domain, a
    modality outside a declared list. The answer names them, so an abstention says what could
    not look at the image as well as what did and found nothing.
    """
    out: dict[str, str] = {}
    for tool in tools:
        if images and not _domain_fit(tool, images)[0]:
            # only a declared domain drops every id
            domain: Domain = (tool.metadata or {})["domain"]
            out[tool.name] = "; ".join(dict.fromkeys(
                domain.judge(ImageFacts.of_ref(r)).reason for r in images))
    return out


def tool_catalogue(tools: Sequence[BaseTool]) -> list[dict[str, Any]]:
    """Every tool (and ``final_answer``) as OpenAI-format dicts, the same whatever the round.

    No ids, no domain notes, nothing withheld: a planner that can be told the round's offer
    apart from its prompt (the embedded one: its grammar allows only the offered tools)
    describes these, so its prompt's long shared start, tools and worked examples, is the
    same from round to round and image to image, and is evaluated once (``PrefixStates``).
    """
    out = []
    for tool in tools:
        spec = convert_to_openai_tool(tool)
        spec["function"]["parameters"] = inline_refs(spec["function"].get("parameters", {}))
        out.append(spec)
    return [*out, final_answer_schema([])]


def offered_tools(
    tools: Sequence[BaseTool], images: Sequence[ImageRef], evidence: Sequence[Evidence],
    bearing: Callable[[Evidence], bool] | None = None, asked: Sequence[Evidence] = (),
) -> list[dict[str, Any]]:
    """OpenAI-format tool dicts for this round, ids constrained to what exists.

    Image ids and mask keys become enums of the ones that exist, so a constrained planner
    cannot invent one; a tool that needs a mask is withheld until some tool has made one, and
    one that needs an image while none it accepts is attached is withheld. Domains, tools
    that already answered, and when ``final_answer`` waits or cites only some results: see
    the module docstring. ``bearing`` (when given) says which results can bear on the
    question; the others are citable only when none can (on real images the small planner,
    with ``case_answer``'s answer in hand, cited ``describe_image``'s reading of the pixels,
    or the trained heads' modality for a question about a finding, and the answer could not
    be given). ``asked`` are results of tools that take the user's question, on this very
    question: such a tool is not offered again on that image (*act* gives it the question as
    asked, so another call repeats the first; on a page of text the small planner called
    ``case_answer`` three times, two of them refused as already done).
    """
    # a flagged tool's masks are not offered: what is measured on them is flagged too
    # (``agent.nodes.act.inherit_flags``), and the Qwen planners, with final_answer waiting,
    # measured measure_lungs' masks until the round budget ran out
    mask_keys = list(dict.fromkeys(k for e in evidence if e.status == "ok"
                                   and not e.data.get("out_of_domain") for k in e.mask_keys))
    answered = answered_images(evidence)
    failing = failing_images(evidence)
    out: list[dict[str, Any]] = []
    for tool in tools:
        spec = convert_to_openai_tool(tool)
        params = inline_refs(spec["function"].get("parameters", {}))
        if "mask_key" in params.get("required", []) and not mask_keys:
            continue
        image_ids, note = _domain_fit(tool, images)
        if tool.name in answered and repeats_nothing(params):
            image_ids = [i for i in image_ids if i not in answered[tool.name]]
        done = answered_images(asked).get(tool.name, [])
        image_ids = [i for i in image_ids if i not in done]
        if tool.name in failing:
            if "" in failing[tool.name] and "image_id" not in params.get("properties", {}):
                continue  # a tool without an image failed twice running: it is not offered
            image_ids = [i for i in image_ids if i not in failing[tool.name]]
        if "image_id" in params.get("required", []) and not image_ids:
            continue  # no image it can run on: offered, it only invites a made-up id
        if note:
            spec["function"]["description"] = f"{spec['function'].get('description', '')} {note}"
        _set_enum(params, "image_id", image_ids, array=False)
        _set_enum(params, "mask_key", mask_keys, array=False)
        for key, values in ((tool.metadata or {}).get("choices") or {}).items():
            said = params.get("properties", {}).get(key, {}).get("description")
            _set_enum(params, key, list(values), array=False)
            if said and values:
                params["properties"][key]["description"] = said
        spec["function"]["parameters"] = params
        out.append(spec)
    ok_ids = [e.id for e in evidence if e.status == "ok"]
    inside = [e.id for e in evidence if e.status == "ok" and not e.data.get("out_of_domain")]
    if bearing is not None:
        inside = [e.id for e in evidence if e.id in inside and bearing(e)] or inside
    if (ok_ids or not images) and (inside or not ok_ids or not out):
        # flagged results are citable only when nothing else is: the 1.5B, with case_answer's
        # yes/no beside measure_lungs' flagged lung areas, cited the lung areas
        out.append(final_answer_schema(inside or ok_ids))
    return out
