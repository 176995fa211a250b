"""agent.llm.embedded.template: the chat template from a GGUF's metadata; what is a GGUF."""

from __future__ import annotations

import logging
import zipfile
from pathlib import Path
from typing import Any

import pytest

from agent.llm.embedded import EmbeddedModelError
from agent.llm.embedded.template import TEMPLATE_KEY, ChatTemplate, check_gguf

gguf = pytest.importorskip("gguf", reason="the gguf package writes the test's tiny GGUF")

BRACKETS = ("{% for m in messages %}[{{ m['role'] }}]{{ m['content'] }}{{ eos_token }}"
            "{% endfor %}{% if add_generation_prompt %}[assistant]{% endif %}")


def tiny_gguf(path: Path, template: str | None = BRACKETS) -> Path:
    """A GGUF holding only metadata (no tensors): enough for the header and the template."""
    writer = gguf.GGUFWriter(str(path), arch="llama")
    writer.add_name("tiny-test")
    if template is not None:
        writer.add_chat_template(template)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def metadata_of(path: Path) -> dict[str, Any]:
    """String metadata as llama.cpp reports it (``Llama.metadata``), read with ``gguf``."""
    reader = gguf.GGUFReader(str(path))
    out: dict[str, Any] = {}
    for key, f in reader.fields.items():
        if f.types and f.types[0] == gguf.GGUFValueType.STRING:
            out[key] = bytes(f.parts[f.data[0]]).decode("utf-8")
    return out


def test_a_tiny_gguf_passes_the_check(tmp_path):
    path = tiny_gguf(tmp_path / "tiny.gguf")
    assert check_gguf(str(path)) == path


def test_the_template_in_the_metadata_renders_the_chat(tmp_path):
    meta = metadata_of(tiny_gguf(tmp_path / "tiny.gguf"))
    assert meta[TEMPLATE_KEY] == BRACKETS
    template = ChatTemplate.from_metadata(meta, eos_token="</s>")
    assert template.from_file
    chat = [{"role": "system", "content": "tools"}, {"role": "user", "content": "Question: q"}]
    assert template.render(chat) == "[system]tools</s>[user]Question: q</s>[assistant]"


def test_a_gguf_without_a_template_is_prompted_in_chatml_and_says_so(tmp_path, caplog):
    meta = metadata_of(tiny_gguf(tmp_path / "bare.gguf", template=None))
    with caplog.at_level(logging.WARNING, logger="medloop.llm"):
        template = ChatTemplate.from_metadata(meta, name="bare.gguf")
    assert not template.from_file
    assert "bare.gguf has no tokenizer.chat_template" in caplog.text
    assert template.render([{"role": "user", "content": "hi"}]) == \
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_a_template_that_rejects_the_chat_is_a_named_error():
    strict = ChatTemplate(source="{{ raise_exception('roles must alternate') }}")
    with pytest.raises(EmbeddedModelError, match="chat template rejected the prompt: roles must"):
        strict.render([{"role": "user", "content": "hi"}])


@pytest.mark.parametrize("make, message", [
    (lambda d: d / "absent.gguf", r"absent\.gguf: no such file"),
    (lambda d: d, r": not a file"),
    (lambda d: (d / "notes.txt").write_text("hello") and d / "notes.txt",
     r"not a GGUF file \(it starts with b'hell', not b'GGUF'\)"),
])
def test_bad_paths_are_clear_errors(tmp_path, make, message):
    with pytest.raises(EmbeddedModelError, match=message):
        check_gguf(make(tmp_path))


def test_a_pytorch_checkpoint_is_recognised_as_not_a_gguf(tmp_path):
    path = tmp_path / "model.pt"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", b"x")
    with pytest.raises(EmbeddedModelError, match=r"not a GGUF.*zip archive: a PyTorch"):
        check_gguf(path)
