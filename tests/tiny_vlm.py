"""A tiny, randomly initialised LLaVA-architecture VLM, built and saved offline.

Used by the VLM tests (through the real ``AutoModelForImageTextToText`` / ``AutoProcessor``
loading path) and by ``bench/gpu_check.py``. Everything is constructed locally: a byte-level BPE
tokenizer trained on a few words with the ``tokenizers`` library (any text encodes, so no
unknown tokens), a CLIP image processor, a CLIP vision tower and a Llama language model from
small configs, and a chat template. Its answers are gibberish; its structure is LLaVA's.
"""

from __future__ import annotations

from pathlib import Path

try:  # bench/gpu_check.py imports the builder where pytest may not be installed
    import pytest
except ImportError:  # pragma: no cover
    pytest = None  # type: ignore[assignment]

# A chat template in the processors' message format (a list of typed parts per message).
_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'system' and not system_role %}"
    "{{ raise_exception('System role not supported') }}{% endif %}"
    "{{ m['role'] }}: "
    "{% if m['content'] is string %}{{ m['content'] }}"
    "{% else %}{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<image>{% else %}{{ c['text'] }}{% endif %}"
    "{% endfor %}{% endif %}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)
_WORDS = ("yes no the lungs are clear heart size normal pleural effusion findings impression "
          "no acute cardiopulmonary process left right angle blunted")


def build_tiny_llava(folder: Path, *, hidden: int = 32, layers: int = 2, image_size: int = 32,
                     patch: int = 8, vocab: int = 300, system_role: bool = True,
                     seed: int = 0) -> Path:
    """Save a tiny LLaVA (model, processor, tokenizer, chat template) to ``folder``.

    ``system_role=False`` gives a chat template that refuses system messages (as Gemma 2's
    does), for the fallback that folds the instructions into the user turn.
    """
    from tools.torch_compat import ensure_torchvision

    ensure_torchvision()
    import torch
    from tokenizers import ByteLevelBPETokenizer
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
        PreTrainedTokenizerFast,
    )

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator([_WORDS] * 4, vocab_size=vocab, min_frequency=1,
                            special_tokens=["<pad>", "<s>", "</s>", "<image>"])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe._tokenizer, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
        extra_special_tokens={"image_token": "<image>"})
    template = _TEMPLATE.replace("not system_role", "false" if system_role else "true")
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessor(
            size={"shortest_edge": image_size},
            crop_size={"height": image_size, "width": image_size}),
        tokenizer=tokenizer, patch_size=patch, vision_feature_select_strategy="default",
        num_additional_image_tokens=1, chat_template=template)
    heads = max(1, hidden // 16)
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(
            hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
            num_attention_heads=heads, image_size=image_size, patch_size=patch,
            projection_dim=hidden),
        text_config=LlamaConfig(
            vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
            num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
            max_position_embeddings=512, bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_select_strategy="default", vision_feature_layer=-1)
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config).eval()
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


if pytest is not None:

    @pytest.fixture(scope="session")
    def tiny_vlm(tmp_path_factory) -> Path:
        """A saved tiny LLaVA folder whose chat template has a system role."""
        return build_tiny_llava(tmp_path_factory.mktemp("tiny-vlm") / "llava")

    @pytest.fixture(scope="session")
    def tiny_vlm_no_system(tmp_path_factory) -> Path:
        """The same architecture, other weights, with a template that refuses system messages."""
        return build_tiny_llava(tmp_path_factory.mktemp("tiny-vlm") / "llava-nosys",
                                system_role=False, seed=1)
