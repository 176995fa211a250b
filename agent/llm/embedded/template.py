"""A GGUF's chat template, read from its metadata, and the check that a file is a GGUF.

Every embedded planner — the packaged ones and any ``gguf:PATH`` — is prompted in its own
chat format: the Jinja template in the file's ``tokenizer.chat_template`` metadata, rendered
the way llama.cpp's chat handler renders it (llama-cpp-python's ``Jinja2ChatFormatter``, with
the model's BOS/EOS token texts). The model is loaded with that template as its chat format
(``runtime.load_model``), and the same rendering gives the exact prompt tokens for counting
and for finding a saved prompt state (``runtime.PrefixStates``). A file without a template
falls back to ChatML, said in the log: most instruction-tuned GGUFs without one use it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.llm.embedded.errors import EmbeddedModelError

if TYPE_CHECKING:
    from llama_cpp import Llama

__all__ = ["GGUF_MAGIC", "TEMPLATE_KEY", "ChatTemplate", "check_gguf"]

log = logging.getLogger("medloop.llm")

GGUF_MAGIC = b"GGUF"
"""The first four bytes of every GGUF file (format spec, all versions)."""
TEMPLATE_KEY = "tokenizer.chat_template"
"""The metadata key holding the chat template (a Jinja string)."""
_CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def check_gguf(path: str | Path) -> Path:
    """``path`` as a Path if it is a readable GGUF file (by its magic bytes).

    Raises EmbeddedModelError saying what is wrong: no such file, a folder, unreadable, or
    not a GGUF (then also what it looks like, when it is a known weights format).
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise EmbeddedModelError(f"gguf:{path}: no such file")
    if not p.is_file():
        raise EmbeddedModelError(f"gguf:{path}: not a file")
    try:
        with p.open("rb") as f:
            head = f.read(8)
    except OSError as exc:
        raise EmbeddedModelError(f"gguf:{path}: cannot read it ({exc})") from exc
    if head[:4] != GGUF_MAGIC:
        hint = ""
        if head[:2] == b"PK":
            hint = " (it looks like a zip archive: a PyTorch checkpoint?)"
        elif head[:1] == b"{" or head[8:9] == b"{":
            hint = " (it looks like JSON or safetensors: convert it with llama.cpp's " \
                   "convert_hf_to_gguf.py)"
        raise EmbeddedModelError(
            f"gguf:{path}: not a GGUF file (it starts with {head[:4]!r}, not b'GGUF'){hint}"
        )
    return p


@dataclass(frozen=True)
class ChatTemplate:
    """A chat template and the token texts it may use.

    Attributes:
        source: the Jinja text.
        bos_token, eos_token: the model's BOS and EOS token texts ("" when it has none).
        from_file: False when the file had no template and ChatML stands in.
    """

    source: str
    bos_token: str = ""
    eos_token: str = ""
    from_file: bool = True
    _formatter: Any = field(default=None, init=False, repr=False, compare=False)

    @classmethod
    def from_metadata(
        cls, metadata: Mapping[str, Any], *, bos_token: str = "", eos_token: str = "",
        name: str = "the model",
    ) -> ChatTemplate:
        """The template in GGUF ``metadata`` (``tokenizer.chat_template``), else ChatML."""
        source = metadata.get(TEMPLATE_KEY)
        if isinstance(source, str) and source.strip():
            return cls(source=source, bos_token=bos_token, eos_token=eos_token)
        log.warning("%s has no %s in its metadata: prompting it in ChatML", name, TEMPLATE_KEY)
        return cls(source=_CHATML, bos_token=bos_token, eos_token=eos_token or "<|im_end|>",
                   from_file=False)

    @classmethod
    def of(cls, llm: Llama, name: str = "the model") -> ChatTemplate:
        """The template of a loaded model, with its BOS/EOS texts as llama-cpp-python gets them."""
        bos, eos = llm.token_bos(), llm.token_eos()
        return cls.from_metadata(
            llm.metadata,
            bos_token=llm._model.token_get_text(bos) if bos != -1 else "",
            eos_token=llm._model.token_get_text(eos) if eos != -1 else "",
            name=name,
        )

    def formatter(self) -> Any:
        """The llama-cpp-python ``Jinja2ChatFormatter`` for this template (built once)."""
        if self._formatter is None:
            from llama_cpp.llama_chat_format import Jinja2ChatFormatter

            object.__setattr__(self, "_formatter", Jinja2ChatFormatter(
                template=self.source, eos_token=self.eos_token, bos_token=self.bos_token))
        return self._formatter

    def render(self, chat: Sequence[Mapping[str, str]],
               tools: Sequence[Mapping[str, Any]] | None = None) -> str:
        """The prompt text for ``chat`` (``{"role", "content"}`` dicts), ready for the reply.

        ``tools`` (OpenAI format) go to the template's own ``tools`` variable, for a template
        with native tool calling (``native``); None renders none.
        Raises EmbeddedModelError when the template rejects the conversation (some
        templates raise on roles out of order).
        """
        try:
            return str(self.formatter()(messages=list(chat), tools=list(tools) if tools else None
                                        ).prompt)
        except Exception as exc:  # jinja2 errors and the template's raise_exception
            raise EmbeddedModelError(f"the model's chat template rejected the prompt: {exc}"
                                     ) from exc

    def tokens(self, llm: Llama, chat: Sequence[Mapping[str, str]],
               tools: Sequence[Mapping[str, Any]] | None = None) -> list[int]:
        """The tokens llama.cpp evaluates for ``chat`` (and ``tools``, see ``render``).

        The rendered text, special tokens parsed, no BOS added: the template writes its own,
        as in llama-cpp-python's chat handler.
        """
        text = self.render(chat, tools)
        return list(llm.tokenize(text.encode("utf-8"), add_bos=False, special=True))
