"""Projection heads the training recipes put on top of the encoders: SLIP's SimCLR MLP and the
DINO/iBOT prototype head used by the soft distillation loss."""
from collections import OrderedDict

import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import InputError


class SimCLRHead(nn.Sequential):
    """SLIP's ``image_mlp``: Linear-BN-ReLU-Linear-BN-ReLU-Linear, [B, in_dim] -> [B, out_dim].

    Layer names and order are SLIP's, so its checkpoints' ``image_mlp.*`` keys load as they are.
    The norms are ``nn.BatchNorm1d``; for DDP convert them with ``nn.SyncBatchNorm.convert_sync_batchnorm``
    (SLIP normalises over the global batch).
    """

    def __init__(self, in_dim: int, hidden_dim: int = 4096, out_dim: int = 256):
        super().__init__(OrderedDict([
            ("layer1", nn.Linear(in_dim, hidden_dim)),
            ("bn1", nn.BatchNorm1d(hidden_dim)),
            ("relu1", nn.ReLU(inplace=True)),
            ("layer2", nn.Linear(hidden_dim, hidden_dim)),
            ("bn2", nn.BatchNorm1d(hidden_dim)),
            ("relu2", nn.ReLU(inplace=True)),
            ("layer3", nn.Linear(hidden_dim, out_dim)),
        ]))


class PrototypeHead(nn.Module):
    """DINO/iBOT head: an MLP (GELU) to a bottleneck, L2-normalise, then cosine logits against K
    prototypes, [..., in_dim] -> [..., K].

    The last layer is DINO's weight-normalised linear with its gain fixed at 1 (``norm_last_layer=True``),
    written directly: each prototype row is L2-normalised in the forward, so no frozen gain parameter
    exists to be decayed, averaged into an EMA teacher or forgotten by an optimizer. ``last_layer.weight``
    is DINO's ``weight_v``, initialised the same way.
    """

    def __init__(self, in_dim: int, num_prototypes: int = 8192, hidden_dim: int = 2048,
                 bottleneck_dim: int = 256, layers: int = 3):
        super().__init__()
        if layers < 1:
            raise InputError(f"layers must be >= 1; got {layers}")
        if layers == 1:
            self.mlp = nn.Sequential(nn.Linear(in_dim, bottleneck_dim))
        else:
            blocks = [nn.Linear(in_dim, hidden_dim), nn.GELU()]
            for _ in range(layers - 2):
                blocks += [nn.Linear(hidden_dim, hidden_dim), nn.GELU()]
            self.mlp = nn.Sequential(*blocks, nn.Linear(hidden_dim, bottleneck_dim))
        for layer in self.mlp:
            if isinstance(layer, nn.Linear):
                nn.init.trunc_normal_(layer.weight, std=0.02)
                nn.init.zeros_(layer.bias)
        self.last_layer = nn.Linear(bottleneck_dim, num_prototypes, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        z = F.normalize(self.mlp(x), dim=-1)
        return F.linear(z, F.normalize(self.last_layer.weight, dim=-1))
