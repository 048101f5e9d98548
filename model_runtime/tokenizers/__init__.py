"""Vision tokenizers: frames <-> discrete code grids, behind one interface (``VisionTokenizer``).

- ``fsq``: the default small FSQ autoencoder for 96x96 sim frames (1000 codes, 12x12 grid).
- ``emu3_vq``: Emu3's VQ-VAE through transformers' ``Emu3VQVAE`` (32,768 codes, downsample 8).
- ``ibq``: Emu3.5's IBQ tokenizer, our implementation of the published checkpoint layout
  (config.yaml + model.ckpt; 131,072 codes, downsample 16).

``load_vision_tokenizer(directory)`` picks the right one from the files present. Heavy pieces
(transformers, yaml) are imported only by the tokenizer that needs them.
"""

from __future__ import annotations

from model_runtime.tokenizers.base import VisionTokenizer, VisionTokenizerError, resize_image
from model_runtime.tokenizers.registry import load_vision_tokenizer

__all__ = ["VisionTokenizer", "VisionTokenizerError", "load_vision_tokenizer", "resize_image"]
