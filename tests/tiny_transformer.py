"""A tiny, randomly initialised BERT in the shape of the shipped all-MiniLM-L6-v2 (its config with
2 layers of width 32, its real tokenizer and pooling config): trains in seconds, loads offline."""

from __future__ import annotations

import shutil
from pathlib import Path


def build_tiny_base(out: Path) -> Path:
    """Write the tiny model into ``out`` (a sentence-transformers-like folder) and return it."""
    import torch
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    from driftloop.models.transformer import BUNDLED_MINILM, resolve_base_model

    shipped = Path(resolve_base_model(BUNDLED_MINILM))
    config = AutoConfig.from_pretrained(shipped, local_files_only=True)
    config.update(
        {
            "num_hidden_layers": 2,
            "hidden_size": 32,
            "num_attention_heads": 2,
            "intermediate_size": 64,
            "max_position_embeddings": 128,
        }
    )
    torch.manual_seed(0)
    AutoModel.from_config(config).save_pretrained(out)
    AutoTokenizer.from_pretrained(shipped, local_files_only=True).save_pretrained(out)
    (out / "1_Pooling").mkdir(exist_ok=True)
    shutil.copy(shipped / "1_Pooling" / "config.json", out / "1_Pooling" / "config.json")
    return out
