"""The Molmo connector: ViT patch features -> LLM-width image features, one per 2x2 patch window.

Padding embeddings are added first (one learned vector for patches that are all padding, one for
patches that are partly padding), then each 2x2 window is pooled by one attention step whose
query is the window's mean, then a SwiGLU MLP projects to d_model. Parameter names follow the
checkpoint's (`pad_embed`, `image_pooling_2d.w{q,k,v,o}`, `image_projector.w{1,2,3}`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from adactrl.models.molmoe.config import MolmoEConfig


class MeanQueryPooling(nn.Module):
    """Attention from the mean of a window's patches to the patches themselves."""

    def __init__(self, in_dim: int, heads: int, head_dim: int, out_dim: int) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        self.wq = nn.Linear(in_dim, heads * head_dim)
        self.wk = nn.Linear(in_dim, heads * head_dim)
        self.wv = nn.Linear(in_dim, heads * head_dim)
        self.wo = nn.Linear(heads * head_dim, out_dim)

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        """[M, 4, F] -> [M, out_dim]."""
        count = windows.shape[0]
        query = self.wq(windows.mean(dim=1, keepdim=True))  # [M, 1, H*hd]

        def heads(x: torch.Tensor) -> torch.Tensor:  # [M, t, H*hd] -> [M, H, t, hd], float32 as released
            return x.reshape(count, -1, self.heads, self.head_dim).transpose(1, 2).float()

        out = F.scaled_dot_product_attention(heads(query), heads(self.wk(windows)), heads(self.wv(windows)))
        return self.wo(out.to(windows.dtype).transpose(1, 2).reshape(count, -1))  # [M, out_dim]


class SwiGLUProjector(nn.Module):
    def __init__(self, in_dim: int, hidden: int, out_dim: int) -> None:
        super().__init__()
        self.w1 = nn.Linear(in_dim, hidden, bias=False)
        self.w3 = nn.Linear(in_dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, out_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class MolmoConnector(nn.Module):
    def __init__(self, config: MolmoEConfig) -> None:
        super().__init__()
        vision = config.vision
        self.side = vision.patches_per_side
        self.pad_embed = nn.Parameter(torch.zeros(2, config.vision_feature_dim))
        self.image_pooling_2d = MeanQueryPooling(config.vision_feature_dim, vision.heads, vision.head_dim, vision.width)
        self.image_projector = SwiGLUProjector(vision.width, config.projector_hidden, config.d_model)

    def forward(self, features: torch.Tensor, patch_masks: torch.Tensor) -> torch.Tensor:
        """features [C, P, F] (P = side^2), patch_masks [C, P] -> [C, Q, d_model], Q = ceil(side/2)^2."""
        crops, _, width = features.shape
        all_pad = (patch_masks == 0).to(features.dtype)[..., None]  # [C, P, 1]
        partial = ((patch_masks < 1) & (patch_masks != 0)).to(features.dtype)[..., None]
        features = features + self.pad_embed[0] * all_pad + self.pad_embed[1] * partial
        grid = features.reshape(crops, self.side, self.side, width)
        if self.side % 2:  # pad the last row and column so 2x2 windows tile the grid
            grid = F.pad(grid, (0, 0, 0, 1, 0, 1))
        half = grid.shape[1] // 2
        windows = grid.reshape(crops, half, 2, half, 2, width).permute(0, 1, 3, 2, 4, 5)
        pooled = self.image_pooling_2d(windows.reshape(-1, 4, width))  # [C*Q, d_v]
        return self.image_projector(pooled.reshape(crops, half * half, -1))
