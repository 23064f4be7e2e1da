"""Tiny random-weight checkpoints as users have them on disk: a model saved with ``save_pretrained``, a
byte-level BPE tokenizer trained offline with ChatML and the family's special tokens, and a chat
template. Shared by the tests that load models by path (lmms-eval runs, the README's model snippet)."""

from __future__ import annotations

import transformers

CHATML = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
QWEN_SPECIAL = [*CHATML, "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
LLAVA_SPECIAL = [*CHATML, "<image>", "<video>"]
LLAVA_SIDE = 8  # SigLIP input side of the tiny LLaVAs: 4x4 patches of 2, pooled to 2x2 per frame


def chat_template(image: str, video: str) -> str:
    """A ChatML template that writes each image/video item as the model's placeholder."""
    return (
        "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
        "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
        "{% for item in message['content'] %}"
        f"{{% if item['type'] == 'image' %}}{image}{{% elif item['type'] == 'video' %}}{video}"
        "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}{% endfor %}{% endif %}"
        "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )


def train_tokenizer(special: list[str]) -> transformers.PreTrainedTokenizerFast:
    """A small byte-level BPE tokenizer trained from scratch, with ChatML and the model's special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=special, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(["What happens in the video? Answer with the option letter. A B C D"] * 4,
                                  trainer)
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|im_end|>",
                                                pad_token="<|endoftext|>", extra_special_tokens=special[1:])


def _text_config(fast: transformers.PreTrainedTokenizerFast, num_layers: int = 2, **extra: object) -> dict:
    return {"vocab_size": len(fast), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": num_layers,
            "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 1024,
            "bos_token_id": fast.pad_token_id, "eos_token_id": fast.eos_token_id,
            "pad_token_id": fast.pad_token_id, **extra}


def _mrope(**extra: object) -> dict:
    return {"rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 1, 1], **extra}}


def _qwen_ids(fast: transformers.PreTrainedTokenizerFast) -> dict:
    ids = {token: fast.convert_tokens_to_ids(token) for token in QWEN_SPECIAL}
    return {"image_token_id": ids["<|image_pad|>"], "video_token_id": ids["<|video_pad|>"],
            "vision_start_token_id": ids["<|vision_start|>"], "vision_end_token_id": ids["<|vision_end|>"]}


_QWEN_VISION = {"patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2, "in_channels": 3}


def qwen2_vl_config(fast: transformers.PreTrainedTokenizerFast, num_layers: int = 2) -> transformers.PretrainedConfig:
    return transformers.Qwen2VLConfig(
        text_config=_text_config(fast, num_layers, **_mrope()),
        vision_config={"depth": 1, "embed_dim": 32, "hidden_size": 32, "num_heads": 2, "mlp_ratio": 2, **_QWEN_VISION},
        **_qwen_ids(fast))


def qwen2_5_vl_config(fast: transformers.PreTrainedTokenizerFast) -> transformers.PretrainedConfig:
    return transformers.Qwen2_5_VLConfig(
        text_config=_text_config(fast, **_mrope()),
        vision_config={"depth": 2, "hidden_size": 16, "intermediate_size": 32, "num_heads": 2, "out_hidden_size": 32,
                       "window_size": 56, "fullatt_block_indexes": [1], **_QWEN_VISION},
        **_qwen_ids(fast))


def qwen3_vl_config(fast: transformers.PreTrainedTokenizerFast) -> transformers.PretrainedConfig:
    return transformers.Qwen3VLConfig(
        text_config=_text_config(fast, head_dim=8, **_mrope(mrope_interleaved=True)),
        vision_config={"depth": 2, "hidden_size": 16, "intermediate_size": 32, "num_heads": 2, "out_hidden_size": 32,
                       "num_position_embeddings": 64, "deepstack_visual_indexes": [0, 1], **_QWEN_VISION},
        **_qwen_ids(fast))


def _llava_ids(fast: transformers.PreTrainedTokenizerFast) -> dict:
    return {"image_token_index": fast.convert_tokens_to_ids("<image>"),
            "video_token_index": fast.convert_tokens_to_ids("<video>"),
            "vision_feature_select_strategy": "full", "vision_feature_layer": -1,
            "vision_config": {"model_type": "siglip_vision_model", "hidden_size": 16, "intermediate_size": 32,
                              "num_hidden_layers": 2, "num_attention_heads": 2, "image_size": LLAVA_SIDE,
                              "patch_size": 2, "num_channels": 3}}


def llava_onevision_config(fast: transformers.PreTrainedTokenizerFast) -> transformers.PretrainedConfig:
    return transformers.LlavaOnevisionConfig(text_config=_text_config(fast, model_type="qwen2"), **_llava_ids(fast))


def llava_next_video_config(fast: transformers.PreTrainedTokenizerFast) -> transformers.PretrainedConfig:
    return transformers.LlavaNextVideoConfig(text_config=_text_config(fast, model_type="llama"), spatial_pool_stride=2,
                                             **_llava_ids(fast))
