"""MolmoE's configuration, read from a checkpoint directory's own files.

`config.json` keeps the field names of the released checkpoint (`d_model`, `n_layers`,
`moe_num_experts`, `vision_backbone.image_emb_dim`, ...); `preprocessor_config.json` holds the crop
geometry. Values this implementation does not reproduce are refused with the field's name, so a
checkpoint of another Molmo variant fails at load time rather than producing wrong logits.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

CONFIG_FILE = "config.json"
PREPROCESSOR_FILE = "preprocessor_config.json"
MODEL_TYPE = "molmo"

# (field, the only value implemented): what the released MolmoE-1B-0924 uses.
_FIXED = (
    ("block_type", "moe"),
    ("activation_type", "swiglu"),
    ("layer_norm_type", "rms"),
    ("attention_layer_norm", True),
    ("norm_after", False),
    ("rope", True),
    ("rope_impl", "llama"),
    ("include_bias", False),
    ("qkv_bias", False),
    ("weight_tying", False),
    ("normalize_input_embeds", False),
    ("scale_logits", False),
    ("final_logit_softcapping", None),
    ("use_cls_feature", False),
    ("image_pooling_2d", "attention-meanq"),
    ("image_projector", "mlp"),
    ("image_padding_embed", "pad_and_partial_pad"),
    ("moe_shared_expert", False),
)


@dataclass(frozen=True)
class VisionConfig:
    """The CLIP vision tower (`config.json` -> `vision_backbone`)."""

    width: int
    """`image_emb_dim`: the ViT's hidden size."""
    layers: int
    """`image_num_layers`: ViT blocks stored in the checkpoint."""
    heads: int
    head_dim: int
    mlp_dim: int
    patch_size: int
    crop_size: int
    """`image_default_input_size`: the side of every crop in pixels."""
    norm_eps: float

    @property
    def patches_per_side(self) -> int:
        return self.crop_size // self.patch_size


@dataclass(frozen=True)
class CropGeometry:
    """How an image becomes crops (`preprocessor_config.json`, overridable by `config.json`)."""

    max_crops: int
    """High-resolution crops at most; the global crop comes on top."""
    margins: tuple[int, int]
    """`overlap_margins`: patches dropped from the left/top and right/bottom of inner crop edges."""
    image_mean: tuple[float, float, float]
    image_std: tuple[float, float, float]
    tokens_per_side: int
    """`image_token_length_h`: pooled tokens along one crop side."""


@dataclass(frozen=True)
class MolmoEConfig:
    """Everything the native MolmoE needs, parsed from the checkpoint's config files."""

    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    num_experts: int
    top_k: int
    expert_hidden: int
    """Width of each expert's SwiGLU (`mlp_hidden_size` or `mlp_ratio * d_model`, halved)."""
    projector_hidden: int
    """Width of the image projector's SwiGLU (the same rule as the experts)."""
    vocab_size: int
    """Tokens the tokenizer knows (`vocab_size`)."""
    embedding_size: int
    """Rows of the LM head and of the main embedding table (`embedding_size`)."""
    additional_vocab_size: int
    """Extra embedding rows after `embedding_size` (`additional_vocab_size`)."""
    layer_norm_eps: float
    rope_theta: float
    max_sequence_length: int
    clip_qkv: float | None
    vit_layers: tuple[int, ...]
    """ViT layers whose outputs are concatenated (MolmoE: -2 and -9)."""
    pool_size: tuple[int, int]
    """`image_pooling_h`, `image_pooling_w`."""
    vision: VisionConfig
    crops: CropGeometry

    def __post_init__(self) -> None:
        if self.top_k > self.num_experts:
            raise ValueError(f"moe_top_k {self.top_k} exceeds moe_num_experts {self.num_experts}")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model {self.d_model} is not divisible by n_heads {self.n_heads}")
        for layer in self.vit_layers:
            if not -self.vision.layers <= layer < self.vision.layers:
                raise ValueError(f"vit_layers {list(self.vit_layers)} reach past the {self.vision.layers} ViT layers")
        if self.crops.margins[0] % 2 or self.crops.margins[1] % 2:
            raise ValueError(f"overlap_margins {list(self.crops.margins)} must be even for 2x2 pooling")
        window = self.vision.patches_per_side - sum(self.crops.margins)
        if window <= 0 or window % 2:
            raise ValueError(
                f"a crop of {self.vision.patches_per_side} patches minus overlap_margins {list(self.crops.margins)} "
                "must leave a positive, even window"
            )
        if self.pool_size != (2, 2) or self.crops.tokens_per_side != -(-self.vision.patches_per_side // 2):
            raise ValueError(
                f"image_pooling {self.pool_size} with image_token_length {self.crops.tokens_per_side}: only 2x2 "
                f"pooling of {self.vision.patches_per_side} patches per side is implemented"
            )

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def num_embeddings(self) -> int:
        return self.embedding_size + self.additional_vocab_size

    @property
    def vision_feature_dim(self) -> int:
        """Width of the concatenated ViT features the connector reads."""
        return self.vision.width * len(self.vit_layers)

    @property
    def deepest_vit_layer(self) -> int:
        """ViT blocks that must run: the deepest layer the features read, counted from 1."""
        return max(layer % self.vision.layers for layer in self.vit_layers) + 1

    @property
    def is_molmoe_1b(self) -> bool:
        """The released MolmoE-1B's shape (where the seed's measured importance applies)."""
        return (self.d_model, self.n_layers, self.num_experts, self.top_k) == (2048, 16, 64, 8)


def read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} is missing; a MolmoE checkpoint directory needs it") from None
    except ValueError as err:
        raise ValueError(f"{path} is not valid JSON ({err}); re-download it") from err
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object")
    return data


def load_config(directory: str | Path) -> MolmoEConfig:
    """Parse `config.json` and `preprocessor_config.json` of a MolmoE checkpoint directory."""
    directory = Path(directory)
    path = directory / CONFIG_FILE
    raw = read_json(path)
    if raw.get("model_type") != MODEL_TYPE:
        raise ValueError(f"{path}: model_type is {raw.get('model_type')!r}, expected {MODEL_TYPE!r} (MolmoE)")
    for name, value in _FIXED:
        if name in raw and raw[name] != value:
            raise ValueError(
                f"{path}: {name} = {raw[name]!r} is not supported (MolmoE-1B uses {value!r}); "
                "this checkpoint is another Molmo variant"
            )
    try:
        return parse_config(raw, read_json(directory / PREPROCESSOR_FILE))
    except KeyError as err:
        raise ValueError(f"{path} or {directory / PREPROCESSOR_FILE} lacks the field {err}") from None


def parse_config(raw: dict, pre: dict) -> MolmoEConfig:
    """The two files' contents (config.json, preprocessor_config.json) -> MolmoEConfig."""
    vb = raw["vision_backbone"]
    mlp_hidden = raw.get("mlp_hidden_size") or raw.get("mlp_ratio", 4) * raw["d_model"]
    if raw.get("head_dim") not in (None, raw["d_model"] // raw["n_heads"]):
        raise ValueError(f"head_dim {raw['head_dim']} differs from d_model / n_heads; not supported")
    size = vb["image_default_input_size"]
    if size[0] != size[1]:
        raise ValueError(f"image_default_input_size {size}: only square crops are implemented")
    vision = VisionConfig(
        width=vb["image_emb_dim"],
        layers=vb["image_num_layers"],
        heads=vb["image_num_heads"],
        head_dim=vb["image_head_dim"],
        mlp_dim=vb["image_mlp_dim"],
        patch_size=vb["image_patch_size"],
        crop_size=size[0],
        norm_eps=vb.get("image_norm_eps", 1e-5),
    )
    if vb.get("image_num_key_value_heads", vision.heads) != vision.heads:
        raise ValueError("image_num_key_value_heads must equal image_num_heads (CLIP has no grouped attention)")
    if pre.get("image_patch_size", vision.patch_size) != vision.patch_size or list(
        pre.get("base_image_input_size", size)
    ) != list(size):
        raise ValueError("preprocessor_config.json and config.json disagree on the crop or patch size")
    crops = CropGeometry(
        max_crops=int(raw.get("max_crops", pre["max_crops"])),
        margins=tuple(raw.get("overlap_margins", pre["overlap_margins"])),
        image_mean=tuple(pre["image_mean"]),
        image_std=tuple(pre["image_std"]),
        tokens_per_side=int(pre["image_token_length_h"]),
    )
    return MolmoEConfig(
        d_model=raw["d_model"],
        n_layers=raw["n_layers"],
        n_heads=raw["n_heads"],
        n_kv_heads=raw.get("n_kv_heads") or raw["n_heads"],
        num_experts=raw["moe_num_experts"],
        top_k=raw["moe_top_k"],
        expert_hidden=mlp_hidden // 2,
        projector_hidden=mlp_hidden // 2,
        vocab_size=raw["vocab_size"],
        embedding_size=raw.get("embedding_size") or raw["vocab_size"],
        additional_vocab_size=raw.get("additional_vocab_size") or 0,
        layer_norm_eps=raw["layer_norm_eps"],
        rope_theta=float(raw["rope_theta"]),
        max_sequence_length=raw["max_sequence_length"],
        clip_qkv=raw.get("clip_qkv"),
        vit_layers=tuple(raw["vit_layers"]),
        pool_size=(raw["image_pooling_h"], raw["image_pooling_w"]),
        vision=vision,
        crops=crops,
    )
