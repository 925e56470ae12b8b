"""Streaming a MolmoE checkpoint's safetensors into the native modules.

Parameter-name map (checkpoint, under `model.` unless noted -> native module):

| checkpoint                                             | native                                               |
|--------------------------------------------------------|------------------------------------------------------|
| transformer.wte.embedding / .new_embedding             | lm.embed_tokens.weight rows [0, E) / [E, E + A)      |
| transformer.blocks.{i}.attn.att_proj.weight (fused)    | lm.layers.{i}.self_attn.{q,k,v}_proj.weight (row split d, kv, kv) |
| transformer.blocks.{i}.attn.attn_out.weight            | lm.layers.{i}.self_attn.o_proj.weight                |
| transformer.blocks.{i}.attn.{q,k}_norm.weight          | lm.layers.{i}.self_attn.{q,k}_norm.weight            |
| transformer.blocks.{i}.attn.attn_norm.weight           | lm.layers.{i}.input_layernorm.weight                 |
| transformer.blocks.{i}.mlp.ff_norm.weight              | lm.layers.{i}.post_attention_layernorm.weight        |
| transformer.blocks.{i}.mlp.gate.weight                 | lm.layers.{i}.mlp.gate.weight                        |
| transformer.blocks.{i}.mlp.experts.{e}.{gate,up}_proj  | lm.layers.{i}.mlp.experts.gate_up_proj[e] rows [0, I) / [I, 2I) |
| transformer.blocks.{i}.mlp.experts.{e}.down_proj       | lm.layers.{i}.mlp.experts.down_proj[e]               |
| transformer.ln_f.weight                                | lm.norm.weight                                       |
| lm_head.weight (top level)                             | lm_head.weight                                       |
| vision_backbone.image_vit.class_embedding              | vision.embeddings.class_embedding       |
| vision_backbone.image_vit.positional_embedding         | vision.embeddings.position_embedding.weight |
| vision_backbone.image_vit.patch_embedding.weight       | vision.embeddings.patch_embedding.weight, [o, p*p*3] -> conv [o, 3, p, p] |
| vision_backbone.image_vit.pre_ln                       | vision.pre_layrnorm                     |
| ...resblocks.{i}.attention.w{q,k,v,o}                  | ...encoder.layers.{i}.self_attn.{q,k,v,out}_proj     |
| ...resblocks.{i}.feed_forward.w{1,2}                   | ...encoder.layers.{i}.mlp.fc{1,2}                    |
| ...resblocks.{i}.attention_norm / ffn_norm             | ...encoder.layers.{i}.layer_norm{1,2}                |
| vision_backbone.{image_pooling_2d,image_projector,pad_embed} | connector.{same names}                         |

ViT blocks deeper than the deepest layer in `vit_layers` are never read by the model and are
skipped. Every native parameter must be written in full, and every checkpoint tensor must map
somewhere; otherwise loading stops with the tensor's name and its file.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from adactrl.models.molmoe.config import MolmoEConfig

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"


@dataclass(frozen=True)
class Copy:
    """Write a checkpoint tensor (after `transform`) into `target[index]`."""

    target: str
    index: tuple = ()
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None


_VIT_BLOCK = {
    "attention.wq": "self_attn.q_proj",
    "attention.wk": "self_attn.k_proj",
    "attention.wv": "self_attn.v_proj",
    "attention.wo": "self_attn.out_proj",
    "feed_forward.w1": "mlp.fc1",
    "feed_forward.w2": "mlp.fc2",
    "attention_norm": "layer_norm1",
    "ffn_norm": "layer_norm2",
}
_LM_BLOCK = {
    "attn.attn_out.weight": "self_attn.o_proj.weight",
    "attn.q_norm.weight": "self_attn.q_norm.weight",
    "attn.k_norm.weight": "self_attn.k_norm.weight",
    "attn.attn_norm.weight": "input_layernorm.weight",
    "mlp.ff_norm.weight": "post_attention_layernorm.weight",
    "mlp.gate.weight": "mlp.gate.weight",
}


def copies_for(name: str, config: MolmoEConfig) -> list[Copy] | None:
    """Where a checkpoint tensor goes: [] to skip it on purpose, None if it is unknown."""
    d, kv, inner = config.d_model, config.n_kv_heads * config.head_dim, config.expert_hidden
    vit = "vision."
    fixed = {
        "model.transformer.wte.embedding": [Copy("lm.embed_tokens.weight", (slice(0, config.embedding_size),))],
        "model.transformer.wte.new_embedding": [
            Copy("lm.embed_tokens.weight", (slice(config.embedding_size, config.num_embeddings),))
        ],
        "model.transformer.ln_f.weight": [Copy("lm.norm.weight")],
        "lm_head.weight": [Copy("lm_head.weight")],
        "model.vision_backbone.image_vit.class_embedding": [Copy(vit + "embeddings.class_embedding")],
        "model.vision_backbone.image_vit.positional_embedding": [Copy(vit + "embeddings.position_embedding.weight")],
        "model.vision_backbone.image_vit.patch_embedding.weight": [
            Copy(vit + "embeddings.patch_embedding.weight", transform=_patch_linear_to_conv(config.vision.patch_size))
        ],
        "model.vision_backbone.image_vit.pre_ln.weight": [Copy(vit + "pre_layrnorm.weight")],
        "model.vision_backbone.image_vit.pre_ln.bias": [Copy(vit + "pre_layrnorm.bias")],
        "model.vision_backbone.pad_embed": [Copy("connector.pad_embed")],
    }
    if name in fixed:
        return fixed[name]
    if m := re.fullmatch(r"model\.vision_backbone\.(image_pooling_2d|image_projector)\.(\w+\.\w+)", name):
        return [Copy(f"connector.{m[1]}.{m[2]}")]
    if m := re.fullmatch(r"model\.vision_backbone\.image_vit\.transformer\.resblocks\.(\d+)\.(\w+\.?\w*)\.(weight|bias)", name):
        block, part, kind = int(m[1]), m[2], m[3]
        if part not in _VIT_BLOCK:
            return None
        return [] if block >= config.deepest_vit_layer else [Copy(f"{vit}encoder.layers.{block}.{_VIT_BLOCK[part]}.{kind}")]
    if m := re.fullmatch(r"model\.transformer\.blocks\.(\d+)\.(.+)", name):
        prefix, rest = f"lm.layers.{m[1]}.", m[2]
        if rest == "attn.att_proj.weight":
            return [
                Copy(prefix + "self_attn.q_proj.weight", transform=lambda t: t[:d]),
                Copy(prefix + "self_attn.k_proj.weight", transform=lambda t: t[d : d + kv]),
                Copy(prefix + "self_attn.v_proj.weight", transform=lambda t: t[d + kv :]),
            ]
        if rest in _LM_BLOCK:
            return [Copy(prefix + _LM_BLOCK[rest])]
        if e := re.fullmatch(r"mlp\.experts\.(\d+)\.(gate|up|down)_proj\.weight", rest):
            expert, which = int(e[1]), e[2]
            if which == "down":
                return [Copy(prefix + "mlp.experts.down_proj", (expert,))]
            rows = slice(0, inner) if which == "gate" else slice(inner, 2 * inner)
            return [Copy(prefix + "mlp.experts.gate_up_proj", (expert, rows))]
    return None


def _patch_linear_to_conv(patch: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """The checkpoint embeds a patch flattened as (row, col, channel); CLIP's conv wants [o, c, row, col]."""
    return lambda t: t.reshape(t.shape[0], patch, patch, 3).permute(0, 3, 1, 2)


def shard_files(directory: Path) -> list[Path]:
    """The safetensors files of a checkpoint, checked to exist before anything is read."""
    index = directory / INDEX_FILE
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (ValueError, KeyError, TypeError) as err:
            raise ValueError(f"{index} is not a safetensors index with a 'weight_map' ({err}); re-download it") from err
        files = [directory / f for f in sorted(set(weight_map.values()))]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise FileNotFoundError(
                f"{index} lists shards that are not in {directory}: {missing}; finish the download"
            )
        return files
    if (directory / SINGLE_FILE).is_file():
        return [directory / SINGLE_FILE]
    raise FileNotFoundError(f"{directory} has neither {INDEX_FILE} nor {SINGLE_FILE}; it holds no MolmoE weights")


_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64}


def iter_tensors(files: list[Path]) -> Iterator[tuple[Path, str, torch.Tensor]]:
    """(file, name, tensor) one tensor at a time, read with plain file reads.

    Not memory-mapped on purpose: the pages of a mapped shard count towards the process's
    resident memory until it is closed, so mapping a 5 GB shard would add 5 GB to the peak.
    Reading each tensor into its own buffer keeps the peak at the weights plus one tensor.
    """
    for path in files:
        size = path.stat().st_size
        with path.open("rb") as handle:
            header, start = _read_header(path, handle, size)
            for name, entry in header.items():
                if name == "__metadata__":
                    continue
                begin, end = entry["data_offsets"]
                if entry.get("dtype") not in _DTYPES:
                    raise ValueError(f"{path}: tensor {name!r} has dtype {entry.get('dtype')}; expected F32, F16 or BF16")
                if start + end > size:
                    raise ValueError(
                        f"{path} is truncated or corrupt (tensor {name!r} ends at byte {start + end}, the file has "
                        f"{size}); re-download this file"
                    )
                handle.seek(start + begin)
                buffer = bytearray(handle.read(end - begin))
                tensor = torch.frombuffer(buffer, dtype=_DTYPES[entry["dtype"]]) if buffer else torch.empty(0)
                yield path, name, tensor.reshape(entry["shape"])


def _read_header(path: Path, handle, size: int) -> tuple[dict, int]:
    """The safetensors header (8-byte little-endian length, then JSON) and where data begins."""
    try:
        length = int.from_bytes(handle.read(8), "little")
        if size < 8 or 8 + length > size:
            raise ValueError(f"the header claims {length} bytes but the file has {size}")
        header = json.loads(handle.read(length))
        if not isinstance(header, dict):
            raise ValueError("the header is not a JSON object")
    except ValueError as err:
        raise ValueError(f"{path} is truncated or corrupt ({err}); re-download this file") from err
    return header, 8 + length


@torch.no_grad()
def load_weights(module: nn.Module, directory: Path, config: MolmoEConfig) -> None:
    """Copy every checkpoint tensor into `module`'s (already allocated) parameters."""
    params = dict(module.named_parameters())
    written = {name: 0 for name in params}
    # Thousands of small memory-bound copies: with several intra-op threads on a busy machine
    # each copy waits for the thread pool (30x slower measured here); one thread is enough.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _copy_all(params, written, directory, config)
    finally:
        torch.set_num_threads(threads)
    unwritten = [n for n, count in written.items() if count != params[n].numel() and not n.startswith(_UNUSED)]
    if unwritten:
        raise ValueError(f"{directory}: the checkpoint does not provide {unwritten[:8]} ({len(unwritten)} in all)")


def _copy_all(params: dict[str, nn.Parameter], written: dict[str, int], directory: Path, config: MolmoEConfig) -> None:
    for path, name, tensor in iter_tensors(shard_files(directory)):
        copies = copies_for(name, config)
        if copies is None:
            raise ValueError(f"{path}: tensor {name!r} is not part of a MolmoE checkpoint this loader knows")
        for copy in copies:
            source = copy.transform(tensor) if copy.transform else tensor
            target = params[copy.target][copy.index] if copy.index else params[copy.target]
            if target.shape != source.shape:
                raise ValueError(
                    f"{path}: tensor {name!r} has shape {tuple(tensor.shape)}, which does not fit "
                    f"{copy.target} {tuple(target.shape)} under config.json's sizes"
                )
            target.copy_(source)
            written[copy.target] += source.numel()


_UNUSED = ("vision.post_layernorm",)
"""Native parameters the model never uses (CLIP's pooled-output norm) and the checkpoint lacks."""
