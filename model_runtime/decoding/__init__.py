"""Decoding for the guidance model: sampling, the constraint grammar, KV-cache bookkeeping,
text/image autoregressive decoding, DiDA parallel image decoding, and the DiDA training loss.

See docs/decoding.md. Heavy imports (transformers) happen inside functions.
"""

from model_runtime.decoding.cache import ForwardCounter, KVState, attention_mask_4d
from model_runtime.decoding.constraints import ConstraintError, DecodeConstraint, Phase
from model_runtime.decoding.dida import commit_counts, decode_image_dida, open_fraction
from model_runtime.decoding.generate import Answer, answer_grammar, generate_answer
from model_runtime.decoding.sampling import filter_logits, make_generator, sample

__all__ = [
    "Answer",
    "ConstraintError",
    "DecodeConstraint",
    "ForwardCounter",
    "KVState",
    "Phase",
    "answer_grammar",
    "attention_mask_4d",
    "commit_counts",
    "decode_image_dida",
    "filter_logits",
    "generate_answer",
    "make_generator",
    "open_fraction",
    "sample",
]
