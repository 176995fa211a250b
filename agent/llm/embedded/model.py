"""``EmbeddedChatModel``: the embedded planner as a LangChain chat model.

One call: pick the tools the grammar allows (``grammar.select_tools``), build the grammar and
the prompt fitted to the context (``grammar``, ``prompt``) in the model's own chat template
(``template``), restore the saved state that shares most of the prompt
(``runtime.PrefixStates``), generate under the model's lock, and read the constrained reply
back as an ``AIMessage`` carrying its tool call (``grammar.parse_tool_call``). Which tool it
picks is still a small model's guess: the graph validates every choice.
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from pydantic import Field, PrivateAttr, model_validator

from agent.llm.embedded import catalog, runtime, weights
from agent.llm.embedded.grammar import (
    check_grammar,
    parse_tool_call,
    select_tools,
    tool_call_grammar,
    tool_call_schema,
)
from agent.llm.embedded.native import Dialect, call_grammar, dialect_of, prompt_tools, read_call
from agent.llm.embedded.prompt import CTX_MARGIN, fit, fit_tool_prompt, to_chatml
from agent.llm.embedded.runtime import EmbeddedModelError, Loaded
from agent.llm.text_protocol import TextToolCalling

if TYPE_CHECKING:
    import threading
    from collections.abc import Sequence

    from langchain_core.callbacks import CallbackManagerForLLMRun
    from llama_cpp import Llama

__all__ = ["EmbeddedChatModel"]


class EmbeddedChatModel(TextToolCalling, BaseChatModel):
    """A GGUF chat model on llama.cpp, tool calls by grammar: a packaged one or any file.

    Construction is free: the weights are found (or assembled from their part packages,
    ``weights``) and loaded on the first generation, and shared by every instance with the
    same file, ``n_ctx`` and ``n_threads``. A ``tool_choice`` naming one tool
    (``bind_tools(tools, tool_choice="final_answer")``) narrows the grammar.
    """

    model: str = catalog.DEFAULT
    """The packaged planner to run, by its ``catalog`` name; ignored when ``model_path`` is set."""
    model_path: str | None = None
    """A GGUF file to run instead of a packaged planner (``--llm gguf:PATH``)."""
    home: str | None = None
    """Medloop's data folder: parted weights are assembled under ``<home>/models``. None for
    ``tools.store.default_home()``."""
    n_ctx: int = 4096
    """Context window in tokens (prompt plus reply). SmolLM2 and Qwen2.5 were trained to 8192
    and 32768."""
    state_on_disk: bool = True
    """Keep the planner prompt's evaluated start under ``<home>/cache/planner`` (one file per
    model, ~35-70 MB), so a new process's first call does not evaluate it again
    (``runtime.StateFile``)."""
    n_threads: int | None = Field(default=None, ge=1)
    """CPU threads; None for the CPUs this process may use, at most 8 (``default_threads``)."""
    max_tokens: int = 384
    """Longest reply in tokens; a tool call cut here comes back as an invalid tool call."""
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    """0 (the default) is greedy: the planner is reproducible. Above 0 it samples, which
    self-consistency needs (``AgentContext.llm_temperature`` sets it)."""
    seed: int = 0
    """Sampling seed. When sampling, call n of this instance uses ``seed + n``: repeats of a
    question then differ, and a run in the same order is the same run again."""
    max_string_chars: int = Field(default=160, ge=1)
    """Cap on every free-text string argument, so a call always ends within max_tokens."""
    max_array_items: int = Field(default=3, ge=1)
    """Cap on array arguments without their own maxItems (e.g. the claims of final_answer)."""
    examples: bool = True
    """Show the worked examples (prompts/embedded_examples) before a tool call."""
    examples_version: int | None = None
    """Which ``embedded_examples.vN`` to show; None for the catalogue's choice for ``model``
    (the version it was tuned with), or the newest for a ``model_path``."""
    native_tools: bool | None = None
    """Prompt and read tool calls in the chat template's own format when it has one
    (``native``: Qwen2.5's ``<tool_call>``, Llama 3's): the template renders the tools and the
    grammar allows exactly one call in that format. False: medloop's text protocol for every
    model. None: the catalogue's choice for ``model``; for a ``model_path``, native whenever
    its template has tool calls. True for a template without them is an error."""
    prefers_tool_routing: bool | None = None
    """A 135M model picks tools by the nearest worked example, not by the question: the agent
    routes for it (``agent.planner.route``) unless ``AgentContext.route_tools`` says otherwise.
    Left unset, it is the catalogue's word for ``model`` (true for SmolLM2 and the 0.5B), and
    false for a ``model_path`` (a GGUF the user brings is taken to read tool descriptions)."""
    honours_tool_choice: ClassVar[bool] = True
    reads_tool_catalogue: ClassVar[bool] = True
    """``bind_tools(offer, tool_catalogue=every_tool)``: the prompt describes the catalogue and
    the grammar allows the offer (see ``_generate``)."""

    _calls: itertools.count[int] = PrivateAttr(default_factory=itertools.count)

    @model_validator(mode="after")
    def _routing_default(self) -> EmbeddedChatModel:
        """Fill ``prefers_tool_routing`` from the catalogue when it was not given.

        Also checks that ``model`` names a packaged planner (ValueError listing them).
        """
        entry = catalog.lookup(self.model)
        if self.prefers_tool_routing is None:
            self.prefers_tool_routing = False if self.model_path else entry.prefers_tool_routing
        if not self.model_path:
            if self.examples_version is None:
                self.examples_version = entry.examples_version
            if self.native_tools is None:
                self.native_tools = entry.native_tools
        return self

    def dialect(self, loaded: Loaded) -> Dialect | None:
        """The native tool-call format this instance prompts ``loaded`` in, or None.

        Raises EmbeddedModelError when ``native_tools`` is true and the template has none.
        """
        if self.native_tools is False:
            return None
        found = dialect_of(loaded.template.source)
        if found is None and self.native_tools:
            raise EmbeddedModelError("native_tools is on, but the model's chat template has no "
                                     "tool calling (no <tool_call> or Llama 3 tool format)")
        return found

    @property
    def _llm_type(self) -> str:
        return "medloop-embedded"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model": self.model_path or self.model, "n_ctx": self.n_ctx,
                "max_tokens": self.max_tokens, "temperature": self.temperature,
                "seed": self.seed}

    def resolved_path(self) -> str:
        """The model file this instance uses.

        A parted packaged model is assembled on the first call (``weights.model_file``).
        Raises EmbeddedModelError (``WeightsError``) saying what to install when its package
        or a part is missing.
        """
        if self.model_path:
            return str(self.model_path)
        return str(weights.model_file(catalog.lookup(self.model), self._home()))

    def _home(self) -> str:
        if self.home is not None:
            return self.home
        from tools.store import default_home

        return str(default_home())

    def _loaded(self) -> tuple[Loaded, bool]:
        threads = self.n_threads or runtime.default_threads()
        path = self.resolved_path()
        loaded, just_loaded = runtime.load_model(path, self.n_ctx, threads)
        if just_loaded and self.state_on_disk:
            loaded.states.attach(runtime.StateFile.for_model(
                Path(self._home()) / "cache" / "planner", path, self.n_ctx))
        return loaded, just_loaded

    def llama(self) -> Llama:
        """The shared ``llama_cpp.Llama``, loaded on first use.

        Use it only while holding ``generation_lock()``: llama.cpp contexts are not thread-safe.
        """
        return self._loaded()[0].llm

    def generation_lock(self) -> threading.Lock:
        """The lock every generation on this model's shared ``Llama`` holds."""
        return self._loaded()[0].lock

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        tools: Sequence[dict[str, Any]] | None = None,
        tool_choice: str | dict[str, Any] | None = None,
        tool_catalogue: Sequence[dict[str, Any]] | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        """One reply: a constrained tool call when tools are bound, else plain text.

        ``tool_catalogue`` (every tool the agent has, the same each round) is what the prompt
        describes when given; the grammar still allows only the bound tools. Then the
        prompt's long start (tools, worked examples) is the same from round to round and image
        to image, and its saved state serves every call: a planner call evaluates only the
        last turn. Bound tools alone change that start whenever the offer changes (another
        image's modality, ``final_answer`` after evidence, a tool withheld once it answered,
        the router's choice), and the 1.5B then spent 90-185 s re-reading ~2,500 tokens on a
        busy machine instead of 10-20 s. The offer is not named in the prompt: listed in the
        last turn ("Tools you can call now: ..."), it turned the 1.5B's right choice into
        ``describe_image`` on 5 of 6 tool-choice items; the grammar alone holds the reply to
        the offer, and the think prompt says which tools have already answered.

        ``stop`` applies to plain text only: a stop string inside constrained JSON would cut the
        call in half. A ``temperature`` keyword (``llm.invoke(msgs, temperature=0.7)``)
        overrides the instance's for this call: the agent samples extra answers that way.
        """
        temperature = float(kwargs.get("temperature", self.temperature))
        if not 0.0 <= temperature <= 2.0:
            raise EmbeddedModelError(f"temperature must be from 0 to 2, got {temperature:g}")
        bound = list(tools or [])
        offered = select_tools(bound, tool_choice)
        # A tool_choice naming one tool narrows the grammar, not the prompt: the model reads
        # every bound tool as before, so the prompt (and its saved state) is the one it had.
        shown = (list(tool_catalogue) if tool_catalogue else bound) if offered else offered
        loaded_path = self.resolved_path()
        loaded, just_loaded = self._loaded()
        llm = loaded.llm
        dialect = self.dialect(loaded) if offered else None
        chat = to_chatml(messages, dialect)
        grammar_text: str | None = None
        # The tools the template renders itself (native calling); None: described in the text.
        rendered = prompt_tools(shown) if dialect is not None else None
        if offered:
            schema = tool_call_schema(
                offered, max_chars=self.max_string_chars, max_items=self.max_array_items
            )
            grammar_text = (tool_call_grammar(schema) if dialect is None
                            else call_grammar(schema, dialect))
        budget = self.n_ctx - self.max_tokens - CTX_MARGIN

        with loaded.lock:
            t0 = time.perf_counter()
            def count(turns: list[dict[str, str]]) -> int:
                return len(loaded.template.tokens(llm, turns, rendered))

            if grammar_text is not None:
                check_grammar(llm, grammar_text)
                prompt = fit_tool_prompt(count, chat, shown, budget, self.examples,
                                         dialect=dialect, examples_version=self.examples_version)
            else:
                prompt = fit(count, chat, budget)
            tokens = loaded.template.tokens(llm, prompt, rendered)
            n_prompt = len(tokens)
            if n_prompt > self.n_ctx - 8:
                raise EmbeddedModelError(
                    f"prompt of ~{n_prompt} tokens does not fit the {self.n_ctx}-token context"
                )
            max_tokens = min(self.max_tokens, self.n_ctx - n_prompt - 8)
            reused = loaded.states.restore(llm, tokens)
            if dialect is not None:  # the prompt as the template rendered it, tools included
                response = self._complete_tokens(llm, tokens, grammar_text, max_tokens,
                                                 temperature)
            else:
                response = self._complete(llm, prompt, grammar_text, stop, max_tokens,
                                          temperature)
            loaded.states.save(llm)
            elapsed = time.perf_counter() - t0

        choice = response["choices"][0]
        raw = (choice["message"].get("content") if "message" in choice else choice.get("text")
               ) or ""
        finish = choice.get("finish_reason")
        if dialect is not None:
            raw = read_call(raw, dialect)
        ai = parse_tool_call(raw, offered, finish) if offered else AIMessage(content=raw)
        usage = response.get("usage") or {}
        p_tok, c_tok = int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0))
        meta: dict[str, Any] = {
            "model": Path(loaded_path).stem,
            "model_provider": "llama.cpp",
            "prompt_tokens": p_tok,
            "reused_tokens": reused,
            "completion_tokens": c_tok,
            "elapsed_s": round(elapsed, 4),
            "finish_reason": finish,
        }
        if dialect is not None:
            meta["tool_format"] = dialect.name
        if just_loaded:
            meta["load_s"] = round(loaded.load_s, 4)
        ai.response_metadata = meta
        ai.usage_metadata = {"input_tokens": p_tok, "output_tokens": c_tok,
                             "total_tokens": p_tok + c_tok}
        return ChatResult(generations=[ChatGeneration(message=ai,
                                                      generation_info={"finish_reason": finish})])

    def _complete_tokens(
        self, llm: Llama, tokens: list[int], grammar_text: str | None, max_tokens: int,
        temperature: float,
    ) -> dict[str, Any]:
        """One completion of prompt ``tokens`` (already rendered by the template)."""
        from llama_cpp import LlamaGrammar

        extra: dict[str, Any] = {}
        if grammar_text is not None:
            extra["grammar"] = LlamaGrammar.from_string(grammar_text, verbose=False)
            extra["repeat_penalty"] = 1.0
        result = llm.create_completion(
            prompt=tokens,
            temperature=temperature,
            max_tokens=max_tokens,
            seed=self.seed if temperature <= 0 else self.seed + next(self._calls),
            **extra,
        )
        return dict(result)  # type: ignore[arg-type]

    def _complete(
        self,
        llm: Llama,
        chat: list[dict[str, str]],
        grammar_text: str | None,
        stop: list[str] | None,
        max_tokens: int,
        temperature: float,
    ) -> dict[str, Any]:
        """One llama.cpp chat completion (the caller holds the generation lock)."""
        from llama_cpp import LlamaGrammar

        extra: dict[str, Any] = {}
        if grammar_text is not None:
            extra["grammar"] = LlamaGrammar.from_string(grammar_text, verbose=False)
            # JSON legitimately repeats tokens (quotes, ids); a repeat penalty bends it.
            extra["repeat_penalty"] = 1.0
        elif stop:
            extra["stop"] = stop
        # No llm.reset(): llama-cpp-python reuses the KV cache of the longest common prefix
        # (system prompt, tools, examples), which is most of the prompt from round to round.
        result = llm.create_chat_completion(
            messages=chat,  # type: ignore[arg-type]
            temperature=temperature,
            max_tokens=max_tokens,
            seed=self.seed if temperature <= 0 else self.seed + next(self._calls),
            **extra,
        )
        return dict(result)  # type: ignore[arg-type]
