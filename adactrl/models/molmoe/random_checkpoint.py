"""Random MolmoE checkpoints in the released layout, for tests, checks and benchmarks.

`write_random_checkpoint` writes what a downloaded MolmoE-1B-0924 directory holds (config.json
with the release's field names, sharded safetensors with an index, tokenizer files,
preprocessor_config.json) at any size, with random weights and a small BPE tokenizer that
has the image tokens. `MOLMOE_1B` holds the released sizes.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from adactrl.models.molmoe.weights import INDEX_FILE

IMAGE_SPECIAL_TOKENS = ("<im_start>", "<im_end>", "<im_patch>", "<im_col>", "<|image|>")
EOS = "<|endoftext|>"
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

MOLMOE_1B: dict = {
    "model_type": "molmo", "architectures": ["OLMoForCausalLM"], "block_type": "moe", "activation_type": "swiglu",
    "d_model": 2048, "n_heads": 16, "n_kv_heads": None, "n_layers": 16, "head_dim": None,
    "mlp_ratio": 1, "mlp_hidden_size": None, "moe_num_experts": 64, "moe_top_k": 8, "moe_shared_expert": False,
    "vocab_size": 50280, "embedding_size": 50304, "additional_vocab_size": 128,
    "layer_norm_type": "rms", "layer_norm_eps": 1e-5, "attention_layer_norm": True, "norm_after": False,
    "rope": True, "rope_impl": "llama", "rope_theta": 10000.0, "clip_qkv": None,
    "include_bias": False, "qkv_bias": False, "weight_tying": False, "normalize_input_embeds": False,
    "scale_logits": False, "final_logit_softcapping": None,
    "max_sequence_length": 4096, "max_position_embeddings": 32768, "pad_token_id": 1,
    "vit_layers": [-2, -9], "image_pooling_h": 2, "image_pooling_w": 2, "image_pooling_2d": "attention-meanq",
    "image_projector": "mlp", "image_padding_embed": "pad_and_partial_pad", "use_cls_feature": False,
    "max_crops": 12, "overlap_margins": [4, 4], "crop_mode": "overlap-and-resize-c2",
    "vision_backbone": {
        "image_default_input_size": [336, 336], "image_emb_dim": 1024, "image_head_dim": 64,
        "image_mlp_activations": "quick_gelu", "image_mlp_dim": 4096, "image_model_type": "openai",
        "image_norm_eps": 1e-5, "image_num_heads": 16, "image_num_key_value_heads": 16,
        "image_num_layers": 23, "image_num_pos": 577, "image_patch_size": 14, "image_pos_patch_size": 14,
    },
}
"""The released MolmoE-1B-0924 config.json values this implementation reads (plus a few it checks)."""

TINY: dict = {
    "d_model": 32, "n_heads": 4, "n_layers": 4, "moe_num_experts": 8, "moe_top_k": 4,
    "additional_vocab_size": 8,
    "vision_backbone": {
        "image_default_input_size": [48, 48], "image_emb_dim": 16, "image_head_dim": 8, "image_mlp_dim": 32,
        "image_num_heads": 2, "image_num_key_value_heads": 2, "image_num_layers": 9, "image_num_pos": 145,
        "image_patch_size": 4, "image_pos_patch_size": 4,
    },
}
"""Sizes of the test fixture: 48 px crops of 4 px patches (12x12 patches, 6x6 pooled tokens),
a 9-block ViT (layer -9 exists), 4 LM blocks of 8 experts at top-4."""

CORPUS = (
    "User: what color is the circle? Assistant: red. User: how many squares are there? Assistant: three. "
    "What is written on the sign? The sign says stop. Describe the image in one sentence. "
    "A blue triangle sits left of a green square on a white background. Is there a dog? Yes, no, maybe."
)


def build_tokenizer(vocab_size: int = 300) -> Tokenizer:
    """A byte-level BPE tokenizer (as OLMo's) with EOS, pad and Molmo's image tokens added."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[EOS, "<|pad|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tokenizer.train_from_iterator([CORPUS] * 4, trainer)
    tokenizer.add_special_tokens(list(IMAGE_SPECIAL_TOKENS))
    return tokenizer


def merged(base: dict, overrides: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in overrides.items():
        out[key] = merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def random_tensors(config: dict, seed: int = 0, std: float = 0.1) -> dict[str, torch.Tensor]:
    """Random weights under the checkpoint's own names (see `weights.py` for the map)."""
    g = torch.Generator().manual_seed(seed)
    d, vb = config["d_model"], config["vision_backbone"]
    hidden = (config.get("mlp_hidden_size") or config["mlp_ratio"] * d) // 2
    width, patch = vb["image_emb_dim"], vb["image_patch_size"]
    features = width * len(config["vit_layers"])
    heads = vb["image_num_heads"] * vb["image_head_dim"]

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * std

    def norm(size: int) -> torch.Tensor:
        return 1.0 + rand(size)

    t = {
        "model.transformer.wte.embedding": rand(config["embedding_size"], d),
        "model.transformer.wte.new_embedding": rand(config["additional_vocab_size"], d),
        "model.transformer.ln_f.weight": norm(d),
        "lm_head.weight": rand(config["embedding_size"], d),
    }
    for i in range(config["n_layers"]):
        b = f"model.transformer.blocks.{i}."
        t |= {b + "attn.att_proj.weight": rand(3 * d, d), b + "attn.attn_out.weight": rand(d, d),
              b + "attn.attn_norm.weight": norm(d), b + "attn.q_norm.weight": norm(d), b + "attn.k_norm.weight": norm(d),
              b + "mlp.ff_norm.weight": norm(d), b + "mlp.gate.weight": rand(config["moe_num_experts"], d)}
        for e in range(config["moe_num_experts"]):
            t |= {b + f"mlp.experts.{e}.gate_proj.weight": rand(hidden, d), b + f"mlp.experts.{e}.up_proj.weight": rand(hidden, d),
                  b + f"mlp.experts.{e}.down_proj.weight": rand(d, hidden)}
    v = "model.vision_backbone."
    t |= {v + "image_vit.class_embedding": rand(width), v + "image_vit.positional_embedding": rand(vb["image_num_pos"], width),
          v + "image_vit.patch_embedding.weight": rand(width, patch * patch * 3),
          v + "image_vit.pre_ln.weight": norm(width), v + "image_vit.pre_ln.bias": rand(width),
          v + "pad_embed": rand(2, features)}
    for i in range(vb["image_num_layers"]):
        b = f"{v}image_vit.transformer.resblocks.{i}."
        for name, (out, inp) in {"attention.wq": (heads, width), "attention.wk": (heads, width), "attention.wv": (heads, width),
                                 "attention.wo": (width, heads), "feed_forward.w1": (vb["image_mlp_dim"], width),
                                 "feed_forward.w2": (width, vb["image_mlp_dim"])}.items():
            t |= {b + name + ".weight": rand(out, inp), b + name + ".bias": rand(out)}
        for name in ("attention_norm", "ffn_norm"):
            t |= {b + name + ".weight": norm(width), b + name + ".bias": rand(width)}
    for name, (out, inp) in {"wq": (heads, features), "wk": (heads, features), "wv": (heads, features), "wo": (width, heads)}.items():
        t |= {f"{v}image_pooling_2d.{name}.weight": rand(out, inp), f"{v}image_pooling_2d.{name}.bias": rand(out)}
    t |= {v + "image_projector.w1.weight": rand(hidden, width), v + "image_projector.w3.weight": rand(hidden, width),
          v + "image_projector.w2.weight": rand(d, hidden)}
    return t


def preprocessor_config(config: dict) -> dict:
    """preprocessor_config.json matching a config.json, with the released processor's fields."""
    size = config["vision_backbone"]["image_default_input_size"]
    patch = config["vision_backbone"]["image_patch_size"]
    return {
        "base_image_input_size": size, "do_normalize": True, "image_mean": list(CLIP_MEAN), "image_std": list(CLIP_STD),
        "image_padding_mask": True, "image_patch_size": patch, "image_processor_type": "MolmoImageProcessor",
        "image_token_length_h": (size[0] // patch + 1) // 2, "image_token_length_w": (size[1] // patch + 1) // 2,
        "max_crops": config["max_crops"], "overlap_margins": config["overlap_margins"],
    }


def write_random_checkpoint(
    directory: str | Path, overrides: dict | None = None, seed: int = 0, std: float = 0.1, dtype: torch.dtype = torch.float32
) -> Path:
    """A checkpoint directory in the released layout: two shards plus an index."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    vocab = tokenizer.get_vocab_size()
    config = merged(MOLMOE_1B, overrides if overrides is not None else TINY)
    config |= {"vocab_size": vocab - len(IMAGE_SPECIAL_TOKENS), "embedding_size": -(-vocab // 64) * 64}
    tensors = random_tensors(config, seed=seed, std=std)
    shards = {"model-00001-of-00002.safetensors": {}, "model-00002-of-00002.safetensors": {}}
    for name, tensor in tensors.items():
        shard = "model-00002-of-00002.safetensors" if "vision_backbone" in name else "model-00001-of-00002.safetensors"
        shards[shard][name] = tensor.to(dtype).contiguous()
    for file, part in shards.items():
        save_file(part, str(directory / file), metadata={"format": "pt"})
    weight_map = {name: file for file, part in shards.items() for name in part}
    (directory / INDEX_FILE).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}, indent=1))
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    tokenizer.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps({"eos_token": EOS, "bos_token": None, "pad_token": "<|pad|>"}))
    (directory / "generation_config.json").write_text(json.dumps({"eos_token_id": tokenizer.token_to_id(EOS), "pad_token_id": 1}))
    (directory / "preprocessor_config.json").write_text(json.dumps(preprocessor_config(config), indent=2))
    return directory
