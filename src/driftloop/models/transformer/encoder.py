"""The network: the pretrained encoder, pooling to a normalised sentence embedding, a linear head.

Imports torch at module level; the modules that load without torch (the pickled model, the
family) import this one inside the functions that need it.
"""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812  PyTorch's own convention
from torch import nn


def pick_device(wanted: str) -> str:
    """``auto``: cuda when a GPU is available, else cpu; ``cpu`` and ``cuda`` as given."""
    if wanted == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return wanted


def autocast_dtype(device: str) -> torch.dtype | None:
    """The mixed-precision dtype for ``device``: bfloat16 (or float16 where the GPU lacks it) on
    cuda, none on cpu."""
    if device == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return None


def autocast(device: str, dtype: torch.dtype | None) -> contextlib.AbstractContextManager[Any]:
    """Autocast to ``dtype`` on ``device``; a no-op context when ``dtype`` is None."""
    return torch.autocast(device, dtype=dtype or torch.float32, enabled=dtype is not None)


def pool(hidden: torch.Tensor, mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """Sentence embeddings, L2-normalised (as all-MiniLM-L6-v2's own Normalize module does):
    the [CLS] token's state (``cls``) or the mean over the unmasked tokens (``mean``)."""
    if pooling == "cls":
        pooled = hidden[:, 0]
    else:
        m = mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
    return F.normalize(pooled.float(), dim=-1)


class IntentNet(nn.Module):
    """Encoder → pooled, normalised embedding → dropout → linear head: the fine-tuned network.

    Its state dict's keys (``encoder.*``, ``head.weight``, ``head.bias``) are what the
    checkpoints hold.
    """

    def __init__(self, encoder: Any, n_labels: int, dropout: float, pooling: str) -> None:
        super().__init__()
        self.encoder = encoder
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(encoder.config.hidden_size, n_labels)
        self.pooling = pooling

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Logits, shape (batch, labels)."""
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        out: torch.Tensor = self.head(self.dropout(pool(hidden, attention_mask, self.pooling)))
        return out

    def init_head(self, weight: np.ndarray, bias: np.ndarray) -> None:
        """Start the head from a linear probe's weights (a bias of -1e4 for labels the probe never
        saw is clipped to -30, which a gradient can still move)."""
        with torch.no_grad():
            self.head.weight.copy_(torch.from_numpy(np.asarray(weight)))
            self.head.bias.copy_(torch.from_numpy(np.clip(np.asarray(bias), -30, None)))

    def head_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """Copies of the head's weight and bias as numpy arrays (the model moved to cpu first)."""
        return self.head.weight.detach().numpy().copy(), self.head.bias.detach().numpy().copy()
