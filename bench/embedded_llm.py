"""Bench the embedded planner: speed, and how often it makes the right kind of call.

Prints load time, prompt and generation speed and the time to the first tool call, then the
replies to a dozen planner prompts and the hit rates.

Run: ``.venv/bin/python bench/embedded_llm.py`` (add ``--no-quality`` for the timings only;
``--llm embedded:qwen2.5-1.5b`` or ``--llm gguf:PATH`` for another planner).
The planner prompts are rendered with the agent's own ``think`` prompt and offered the tools the
way ``agent.planner.offer`` offers them (ids as enums; ``final_answer`` only once there is evidence), so
the hit rates are what the graph would see.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from langchain_core.messages import AIMessage, HumanMessage
from langchain_core.tools import BaseTool

from agent.context import AgentContext
from agent.llm import make_chat_model
from agent.llm.embedded import EmbeddedChatModel
from agent.planner.offer import offered_tools
from agent.planner.prompt import build_prompt
from tools.base import ImageArgs, make_tool
from tools.evidence import Evidence
from tools.image import ImageRef
from tools.store import ImageStore
from tools.vision.basic import basic_tools

IMG_CXR = "img-3e9a1c04b7d2"
IMG_CT = "img-a71f0c5e3b98"


def _unused(args: ImageArgs) -> Evidence:  # pragma: no cover - the bench never runs tools
    raise NotImplementedError


def planner_tools() -> list[BaseTool]:
    """The default tools (``tools.vision.basic``) plus three a fuller tool set would have."""
    extra = [
        ("segment_lungs", "Segment both lungs on a chest radiograph; lung areas in mm2."),
        ("read_text", "Read text burned into the image pixels (OCR): names, dates, markers."),
        ("similar_cases", "Find the most similar indexed cases and their reports."),
    ]
    store = ImageStore(Path(tempfile.mkdtemp(prefix="medloop-bench-")))
    return [*basic_tools(store),
            *(make_tool(_unused, name=n, description=d, args_schema=ImageArgs) for n, d in extra)]


@dataclass
class Case:
    """A planner prompt and what a right reply is."""

    question: str
    images: list[tuple[str, str]]
    evidence: list[tuple[str, str]] = field(default_factory=list)  # (tool, summary)
    # Acceptable tools when there is no evidence (any image tool when empty).
    expect: tuple[str, ...] = ()

    def state(self) -> dict[str, Any]:
        """A graph state as *think* sees it on this round."""
        refs = [ImageRef(id=i, summary=s) for i, s in self.images]
        ev = [Evidence(id=f"E{k + 1}", tool=t, summary=s, image_id=self.images[0][0])
              for k, (t, s) in enumerate(self.evidence)]
        return {"image_refs": refs, "evidence": ev, "round": 1 if ev else 0,
                "messages": [HumanMessage(content=self.question)]}

    def messages(self) -> list[Any]:
        """The messages *think* sends (the agent's own ``build_prompt``)."""
        return list(build_prompt(self.state(), CONTEXT))  # type: ignore[arg-type]

    def tools(self) -> list[dict[str, Any]]:
        """The tools as *think* offers them: ids as enums, final_answer after evidence."""
        st = self.state()
        return offered_tools(TOOLS, st["image_refs"], st["evidence"])

    def evidence_ids(self) -> set[str]:
        """The ids the answer may cite."""
        return {f"E{k + 1}" for k in range(len(self.evidence))}


CONTEXT = AgentContext(llm="embedded", checkpoint=None)
TOOLS = planner_tools()
CXR = (IMG_CXR, "CR chest radiograph, PA, 1841x1955 px, 0.171 mm/px")
CT = (IMG_CT, "CT head, axial, 512x512 px, 0.49 mm/px")
CASES = [
    Case("Describe this image", [CXR], expect=("describe_image",)),
    Case("What modality and body part is this?", [CT], expect=("describe_image",)),
    Case("How large are the lungs?", [CXR], expect=("segment_lungs",)),
    Case("Is there any patient name written on the image?", [CXR], expect=("read_text",)),
    Case("Find similar cases to this scan.", [CT], expect=("similar_cases",)),
    Case("Compare these two images.", [CXR, CT], expect=("describe_image",)),
    Case("Describe this image", [CXR],
         [("describe_image", "CR chest radiograph, PA view, 0.171 mm pixels, 315 x 334 mm")]),
    Case("How large are the lungs?", [CXR],
         [("segment_lungs", "left lung 14210 mm2, right lung 16032 mm2, IoU estimate 0.90")]),
    Case("Is there burned-in text?", [CXR], [("read_text", "text found: 'PORTABLE', 'L'")]),
    Case("What does this head CT show?", [CT],
         [("describe_image", "axial head CT, 512x512, mean 32 HU"),
          ("similar_cases", "3 similar cases; their reports mention no acute findings")]),
    Case("Is the heart enlarged?", [CXR],
         [("describe_image", "frontal chest radiograph"),
          ("measure_distance", "distance 132 mm (heart width); thorax 300 mm")]),
    Case("Compare these two images.", [CXR, CT],
         [("describe_image", CXR[1]), ("describe_image", CT[1])]),
]


MR = ("img-77c0d2e4a1f9", "MR brain, axial T1, 256x256 px, 0.9 mm/px")
US = ("img-5b2e8f10c3d4", "US abdomen, 640x480 px")
HELD_OUT = [
    Case("what's this?", [MR], expect=("describe_image",)),
    Case("Please tell me the pixel spacing of the ultrasound.", [US], expect=("describe_image",)),
    Case("Measure the distance between the two ventricles.", [MR], expect=("measure_distance",)),
    Case("Which of these three images is the CT?", [CXR, CT, MR], expect=("describe_image",)),
    Case("what's this?", [MR],
         [("describe_image", "MR brain, axial T1, 0.9 mm pixels, 230 x 230 mm field of view")]),
    Case("Please tell me the pixel spacing of the ultrasound.", [US],
         [("describe_image", "US, 640x480 px; pixel spacing unknown (sizes in px only)")]),
    Case("Measure the distance between the two ventricles.", [MR],
         [("measure_distance", "distance 41.2 mm between (100, 120) and (145, 122)")]),
    Case("Which of these three images is the CT?", [CXR, CT, MR],
         [("describe_image", CXR[1]), ("describe_image", CT[1]), ("describe_image", MR[1])]),
]


def judge(case: Case, ai: AIMessage) -> tuple[bool, bool, str]:
    """(valid call of the right kind, exactly the expected tool, short description)."""
    if not ai.tool_calls:
        return False, False, f"no call: {ai.invalid_tool_calls or ai.content!r}"
    call = ai.tool_calls[0]
    name, args = call["name"], call["args"]
    if case.evidence:
        ids = case.evidence_ids()
        cited = [i for c in args.get("claims", []) for i in c.get("evidence_ids", [])]
        ok = name == "final_answer" and bool(cited) and set(cited) <= ids
        return ok, ok, f"{name} cites {cited} answer={str(args.get('answer'))[:60]!r}"
    ok = name != "final_answer" and args.get("image_id") in {i for i, _ in case.images}
    exact = ok and (not case.expect or name in case.expect)
    return ok, exact, f"{name}({args})"


def quality(model: EmbeddedChatModel, name: str, cases: list[Case]) -> None:
    """Print each case's reply and the hit rates."""
    print(f"{name}:")
    rows = []
    for case in cases:
        t = time.perf_counter()
        ai = model.bind_tools(case.tools()).invoke(case.messages())
        dt = time.perf_counter() - t
        assert isinstance(ai, AIMessage)
        ok, exact, what = judge(case, ai)
        rows.append((case, ok, exact))
        tag = "final" if case.evidence else "look "
        print(f"  [{'ok' if ok else '--'}|{'=' if exact else ' '}] {tag} {dt:4.1f}s "
              f"{case.question[:36]:36s} -> {what[:100]}")
    for label, sel in (("no evidence: image tool with a valid id", False),
                       ("evidence listed: final_answer citing it", True)):
        sub = [r for r in rows if bool(r[0].evidence) == sel]
        print(f"  {label:45s} {sum(r[1] for r in sub)}/{len(sub)}")
    look = [r for r in rows if not r[0].evidence]
    print(f"  {'no evidence: the expected tool':45s} {sum(r[2] for r in look)}/{len(look)}")


def timings(model: EmbeddedChatModel, repeats: int) -> None:
    """Load, prompt tokens/s, generation tokens/s and time to the first tool call."""
    t0 = time.perf_counter()
    llm = model.llama()
    load_s = time.perf_counter() - t0
    text = " ".join(["The chest radiograph shows clear lungs and a normal heart size."] * 40)
    tokens = llm.tokenize(text.encode(), add_bos=False)
    prompt_rates, gen_rates = [], []
    with model.generation_lock():
        for _ in range(repeats):
            llm.reset()
            t = time.perf_counter()
            llm.eval(tokens)
            prompt_rates.append(len(tokens) / (time.perf_counter() - t))
            llm.reset()
            out = llm.create_completion("Once upon a time", max_tokens=128, temperature=0.0,
                                        seed=0)
            llm.reset()
            t = time.perf_counter()
            out = llm.create_completion("Once upon a time", max_tokens=128, temperature=0.0,
                                        seed=0)
            dt = time.perf_counter() - t
            gen_rates.append(out["usage"]["completion_tokens"] / dt)  # type: ignore[index]
        llm.reset()
    case = CASES[0]
    first_call = []
    for i in range(repeats):
        if i:
            with model.generation_lock():
                llm.reset()  # measure a cold prompt, as on a new question
        t = time.perf_counter()
        ai = model.bind_tools(case.tools()).invoke(case.messages())
        first_call.append(time.perf_counter() - t)
    assert isinstance(ai, AIMessage)
    meta = ai.response_metadata
    print(f"{'model':34s} {Path(model.resolved_path()).name}")
    print(f"{'threads':34s} {llm.context_params.n_threads}")
    print(f"{'load (s)':34s} {load_s:8.3f}")
    print(f"{'peak RSS (MB)':34s} {max_rss_mb():8.0f}")
    print(f"{'prompt eval (tokens/s)':34s} {statistics.median(prompt_rates):8.1f}"
          f"   ({len(tokens)}-token prompt)")
    print(f"{'generation (tokens/s)':34s} {statistics.median(gen_rates):8.1f}   (128 tokens)")
    print(f"{'first tool call, cold prompt (s)':34s} {statistics.median(first_call):8.3f}"
          f"   ({meta.get('prompt_tokens')} prompt + {meta.get('completion_tokens')} tokens, "
          f"{ai.tool_calls[0]['name'] if ai.tool_calls else 'no call'})")
    t = time.perf_counter()
    model.bind_tools(case.tools()).invoke(case.messages())
    print(f"{'same call, prompt cached (s)':34s} {time.perf_counter() - t:8.3f}")
    # A long constrained reply on a cached prompt: the grammar's cost per token shows here.
    answer = CASES[9]
    model.bind_tools(answer.tools()).invoke(answer.messages())
    ai = model.bind_tools(answer.tools()).invoke(answer.messages())
    assert isinstance(ai, AIMessage)
    n, dt = ai.response_metadata["completion_tokens"], ai.response_metadata["elapsed_s"]
    print(f"{'constrained generation (tokens/s)':34s} {n / dt:8.1f}   ({n}-token final_answer)")


def max_rss_mb() -> float:
    """Peak resident memory of this process so far, in MB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def alternating(model: EmbeddedChatModel, n_images: int = 4) -> None:
    """Planner rounds as the graph makes them: look, then answer, for one image after another.

    The two rounds' prompts differ at the tool list (``final_answer`` is offered only once
    there is evidence), so llama.cpp's reuse of the previous prompt alone re-evaluates the
    tools and worked examples on every call. Baseline: no saved states (capacity 0), in the
    same run, on the same prompts.
    """
    from agent.llm.embedded.runtime import PrefixStates

    ids = [f"img-{k:012x}" for k in range(1, n_images + 1)]
    rounds = []
    for i in ids:
        look = Case("Is there a nodule, and how big is it?", [(i, CT[1])])
        answer = Case(look.question, [(i, CT[1])],
                      [("describe_image", "CT head, axial, 0.49 mm pixels, 250 x 250 mm")])
        rounds += [look, answer]
    loaded = model._loaded()[0]
    results = {}
    for label, capacity in (("no saved states (baseline)", 0), ("saved prompt states", 6)):
        loaded.states = PrefixStates(capacity=capacity)
        with model.generation_lock():
            model.llama().reset()
        times, tokens = [], []
        for case in rounds:
            t = time.perf_counter()
            ai = model.bind_tools(case.tools()).invoke(case.messages())
            times.append(time.perf_counter() - t)
            tokens.append(ai.response_metadata["prompt_tokens"])
        results[label] = times[2:]  # the first image warms both the same way
        print(f"{label:34s} {statistics.mean(times[2:]):8.3f} s per planner call "
              f"(mean of {len(times) - 2}; prompts ~{statistics.median(tokens):.0f} tokens)")
    base, new = (statistics.mean(v) for v in results.values())
    print(f"{'ratio (saved / baseline)':34s} {new / base:8.2f}")
    loaded.states = PrefixStates()


def caps(model: EmbeddedChatModel) -> None:
    """What capping the answer's length buys: tokens and seconds of the answer rounds.

    The answer rounds (evidence listed, ``final_answer`` offered) of ``CASES`` under each cap on
    free-text strings and on claims (``max_string_chars``, ``max_array_items``), each call made
    twice so the second reads a cached prompt and times generation; baseline: the current caps.
    """
    answers = [c for c in CASES if c.evidence]
    rows = []
    for chars, items in ((model.max_string_chars, model.max_array_items), (120, 2), (80, 2)):
        capped = model.model_copy(update={"max_string_chars": chars, "max_array_items": items})
        toks, secs, cited = [], [], 0
        for case in answers:
            capped.bind_tools(case.tools()).invoke(case.messages())  # cache the prompt
            ai = capped.bind_tools(case.tools()).invoke(case.messages())
            assert isinstance(ai, AIMessage)
            toks.append(ai.response_metadata["completion_tokens"])
            secs.append(ai.response_metadata["elapsed_s"])
            cited += judge(case, ai)[0]
        rows.append((chars, items, statistics.mean(toks), statistics.mean(secs), cited))
    base = rows[0][3]
    print(f"{'caps (chars, claims)':22s} {'tokens':>7s} {'s/answer':>9s} {'ratio':>6s} cites")
    for chars, items, tok, sec, cited in rows:
        print(f"{chars:4d} chars, {items} claims  {tok:7.1f} {sec:9.2f} {sec / base:6.2f} "
              f"{cited}/{len(answers)}")


def prompt_lookup(model: EmbeddedChatModel, n_pred: int = 10) -> None:
    """llama-cpp-python's prompt-lookup decoding against plain decoding, same prompts.

    Speculative drafts from the prompt suit answers that quote the evidence. Both models are
    built here with the same file, context and threads; the drafting one needs logits for
    every position (``logits_all``), which also makes its saved states far larger.
    """
    import llama_cpp.llama_cpp as low
    from llama_cpp import Llama, LlamaGrammar
    from llama_cpp.llama_speculative import LlamaPromptLookupDecoding

    from agent.llm.embedded.grammar import tool_call_grammar, tool_call_schema
    from agent.llm.embedded.prompt import fit_tool_prompt, to_chatml

    path, threads = model.resolved_path(), model.llama().context_params.n_threads
    template = model._loaded()[0].template
    answers = [c for c in CASES if c.evidence]
    for label, draft in (("plain decoding (baseline)", None),
                         (f"prompt lookup ({n_pred} tokens)", LlamaPromptLookupDecoding(
                             num_pred_tokens=n_pred))):
        rss0 = max_rss_mb()
        # llama-cpp-python 0.3.36 sizes its logits buffer by the ``logits_all`` it is given,
        # not the one a draft model forces: without it, a prompt past n_batch tokens fails
        # ("could not broadcast ... into shape (0,)"). So the drafting model asks for it.
        llm = Llama(model_path=path, n_ctx=model.n_ctx, n_threads=threads,
                    n_threads_batch=threads, draft_model=draft, logits_all=draft is not None,
                    verbose=False)
        toks, secs, outs = [], [], []
        for case in answers:
            tools = case.tools()
            grammar = tool_call_grammar(tool_call_schema(tools, max_chars=model.max_string_chars,
                                                         max_items=model.max_array_items))
            def count(turns: list[dict[str, str]], llm: Llama = llm) -> int:
                return len(template.tokens(llm, turns))

            chat = fit_tool_prompt(count, to_chatml(case.messages()), tools, 3500, True,
                                   examples_version=model.examples_version)
            for _ in range(2):  # the second call reads a cached prompt
                t = time.perf_counter()
                out = llm.create_chat_completion(
                    messages=chat, temperature=0.0, max_tokens=model.max_tokens, seed=0,
                    grammar=LlamaGrammar.from_string(grammar, verbose=False),
                    repeat_penalty=1.0)  # type: ignore[arg-type]
                dt = time.perf_counter() - t
            toks.append(out["usage"]["completion_tokens"])  # type: ignore[index]
            secs.append(dt)
            outs.append(out["choices"][0]["message"]["content"])  # type: ignore[index]
        state_mb = low.llama_state_get_size(llm._ctx.ctx) / 1e6
        print(f"{label:34s} {statistics.mean(secs):6.2f} s/answer, {sum(toks) / sum(secs):6.1f} "
              f"tokens/s, saved state {state_mb:7.1f} MB, RSS +{max_rss_mb() - rss0:.0f} MB")
        if draft is None:
            plain = outs
        else:
            print(f"{'same answers as plain decoding':34s} "
                  f"{sum(a == b for a, b in zip(outs, plain, strict=True))}/{len(outs)}")
        llm.close()


def stable_prompt(model: EmbeddedChatModel) -> None:
    """Planner calls across images and rounds: what keeping the prompt's start the same buys.

    Six rounds as the graph makes them with the default tools (look, then answer, on a CT
    phantom, the chest radiograph and an ultrasound): each offer differs (domains, evidence,
    ``final_answer``). Three prompts, same run, same model, a fresh cache each:

    - baseline: only the offered tools described, the domain note naming the image id (as
      before issue 15's fixes);
    - the note without the id;
    - the agent's whole catalogue described (``tool_catalogue``), the offer in the last turn.
    """
    import copy

    from pydicom.data import get_testdata_file

    from agent.evaluation.phantoms import make_phantom
    from agent.llm.embedded.runtime import PrefixStates
    from agent.planner.offer import tool_catalogue
    from agent.planner.toolset import default_tools
    from tools.ingest import ingest_path

    store = ImageStore(Path(tempfile.mkdtemp(prefix="medloop-bench-")))
    tools = default_tools(CONTEXT, store)
    catalogue = tool_catalogue(tools)
    refs = [store.put(make_phantom(101, kind="ct", n_lesions=1).image),
            ingest_path(store, str(get_testdata_file("RG1_UNCI.dcm")))[1][0],
            ingest_path(store, str(get_testdata_file("US1_UNCI.dcm")))[1][0]]
    rounds: list[tuple[dict[str, Any], Any]] = []
    for ref, question, seen in ((refs[0], "Is there a lesion?", ("detect_lesions",
                                 "1 focal lesion found: L1 in the lower right, 8.6 mm.")),
                                (refs[1], "Is the heart enlarged?", ("measure_lungs",
                                 "cardiothoracic ratio 0.47")),
                                (refs[2], "What text is on the image?", ("read_text",
                                 "'GE', 'MSCSKEL', [redacted: id-like]"))):
        ev = Evidence(id="E1", tool=seen[0], summary=seen[1], image_id=ref.id,
                      args={"image_id": ref.id})
        for evidence in ([], [ev]):
            rounds.append(({"image_refs": [ref], "evidence": evidence,
                            "round": len(evidence),
                            "messages": [HumanMessage(content=question)]}, ref))
    results = {}
    variants = (("offer only, note names the image (baseline)", "ids"),
                ("offer only, note without ids", "plain"),
                ("whole catalogue, offer in the last turn", "catalogue"))
    for label, how in variants:
        with model.generation_lock():
            model.llama().reset()
        model._loaded()[0].states = PrefixStates()
        times, tokens = [], []
        for st, ref in rounds:
            offer = offered_tools(tools, st["image_refs"], st["evidence"])
            if how == "ids":
                offer = copy.deepcopy(offer)
                for spec in offer:
                    fn = spec["function"]
                    fn["description"] = str(fn.get("description", "")).replace(
                        "Not validated for this image", f"Not validated for {ref.id}")
            extra: dict[str, Any] = {"tool_catalogue": catalogue} if how == "catalogue" else {}
            t = time.perf_counter()
            ai = model.bind_tools(offer, **extra).invoke(
                list(build_prompt(st, CONTEXT)))  # type: ignore[arg-type]
            times.append(time.perf_counter() - t)
            tokens.append(ai.response_metadata["prompt_tokens"])
        results[label] = statistics.mean(times[1:])
        print(f"{label:44s} {results[label]:7.2f} s per call after the first "
              f"(first {times[0]:.1f} s; prompts ~{statistics.median(tokens):.0f} tokens)")
    base = next(iter(results.values()))
    for label, value in list(results.items())[1:]:
        print(f"{'  ratio to baseline: ' + label:44s} {value / base:7.2f}")


def main() -> None:
    """Parse arguments and print the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--llm", default="embedded",
                    help="embedded, embedded:NAME or gguf:PATH (default: embedded)")
    ap.add_argument("--model-path", default=None, help="a GGUF file (same as --llm gguf:PATH)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-quality", action="store_true", help="timings only")
    ap.add_argument("--no-alternating", action="store_true", help="skip the saved-state bench")
    ap.add_argument("--caps", action="store_true", help="bench the answer-length caps")
    ap.add_argument("--stable-prompt", action="store_true",
                    help="bench calls across images and rounds: offer-only vs catalogue prompts")
    ap.add_argument("--lookup", action="store_true", help="bench prompt-lookup decoding")
    ap.add_argument("--native", choices=("on", "off"), default=None,
                    help="the chat template's own tool-call format, or medloop's protocol")
    ap.add_argument("--examples", type=int, default=None, help="embedded_examples version")
    args = ap.parse_args()
    spec = f"gguf:{args.model_path}" if args.model_path else args.llm
    home = AgentContext.from_env(checkpoint=None).home  # MEDLOOP_HOME: where parts assemble
    model = make_chat_model(spec, threads=args.threads, home=home)
    assert isinstance(model, EmbeddedChatModel), f"{spec} is not an embedded planner"
    update: dict[str, Any] = {}
    if args.native:
        update["native_tools"] = args.native == "on"
    if args.examples:
        update["examples_version"] = args.examples
    model = model.model_copy(update=update)
    if args.caps or args.lookup or args.stable_prompt:
        if args.stable_prompt:
            stable_prompt(model)
        if args.caps:
            caps(model)
        if args.lookup:
            prompt_lookup(model)
        print(f"\n{'peak RSS (MB)':34s} {max_rss_mb():8.0f}")
        return
    timings(model, args.repeats)
    if not args.no_alternating:
        print()
        alternating(model)
    if not args.no_quality:
        print()
        quality(model, "planner prompts (the worked examples were tuned on these)", CASES)
        print()
        quality(model, "held-out prompts (written after the examples were fixed)", HELD_OUT)
    print(f"\n{'peak RSS (MB)':34s} {max_rss_mb():8.0f}")


if __name__ == "__main__":
    main()
