"""Tiny checkpoints in the Emu3.5 release's on-disk formats, built here from the formats (no release code).

``make_release(root)`` writes what a GPU-host user downloads, at random tiny weights:

    root/weights/Emu3.5/                   config.json (model_type "Emu3", Emu3ForCausalLM, the release's
                                           fields), sharded safetensors + model.safetensors.index.json
    root/weights/Emu3.5-VisionTokenizer/   config.yaml + model.ckpt (IBQ, 131,072 codes)
    root/tokenizer_emu3_ibq/               tokenizer_config.json whose auto_map names tokenization_emu3.py
                                           (a tokenizer class of our own, written here), emu3.tiktoken
                                           (base64 token + rank per line), emu3_vision_tokens.txt

The tokenizer module follows the release's contract, not its code: ranked byte tokens from the
``.tiktoken`` file, specials from id 151643 (<|endoftext|>, <|im_start|>, <|im_end|>,
<|extra_0..204|>, then the special-tokens file's lines: image token/start/end and 131,072
visual tokens), length 282,926. It encodes by greedy longest match (enough for tests).
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

SPECIAL_START = 151_643
NUM_VISUAL = 131_072
VOCAB = 282_926

TOKENIZER_MODULE = '''
import base64
import os

from transformers import PreTrainedTokenizer

SPECIAL_START = 151643


class Emu3Tokenizer(PreTrainedTokenizer):
    """Test stand-in: ranked byte tokens (tiktoken file) + specials from id 151643."""

    vocab_files_names = {"vocab_file": "emu3.tiktoken"}
    model_input_names = ["input_ids", "attention_mask"]

    def __init__(self, vocab_file, special_tokens_file=None, **kwargs):
        ranks = {}
        with open(vocab_file, "rb") as f:
            for line in f.read().splitlines():
                if line:
                    tok, rank = line.split()
                    ranks[base64.b64decode(tok)] = int(rank)
        self.ranks = ranks
        self.by_id = {v: k for k, v in ranks.items()}
        self.max_len = max(len(t) for t in ranks)
        names = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] + [f"<|extra_{i}|>" for i in range(205)]
        if special_tokens_file is not None:
            with open(special_tokens_file) as f:
                names += [line.strip() for line in f if line.strip()]
        self.specials = {name: SPECIAL_START + i for i, name in enumerate(names)}
        self.special_by_id = {v: k for k, v in self.specials.items()}
        self.vocab_file = vocab_file
        super().__init__(**kwargs)

    def __len__(self):
        return SPECIAL_START + len(self.specials)

    @property
    def vocab_size(self):
        return len(self)

    def get_vocab(self):
        vocab = {t.decode("latin-1"): i for t, i in self.ranks.items()}
        vocab.update(self.specials)
        return vocab

    def _tokenize(self, text, **kwargs):
        data = text.encode("utf-8")
        out, i = [], 0
        while i < len(data):
            for n in range(min(self.max_len, len(data) - i), 0, -1):
                if data[i:i + n] in self.ranks:
                    out.append(data[i:i + n].decode("latin-1"))
                    i += n
                    break
            else:
                raise ValueError(f"byte {data[i]} not in the vocabulary")
        return out

    def _convert_token_to_id(self, token):
        if token in self.specials:
            return self.specials[token]
        return self.ranks[token.encode("latin-1")]

    def _convert_id_to_token(self, index):
        if index in self.special_by_id:
            return self.special_by_id[index]
        return self.by_id[index].decode("latin-1")

    def convert_tokens_to_string(self, tokens):
        return b"".join(t.encode("latin-1") if t not in self.specials else t.encode() for t in tokens).decode(
            "utf-8", errors="replace")

    def save_vocabulary(self, save_directory, filename_prefix=None):
        return (self.vocab_file,)
'''

TEXTS = [
    "You are a helpful assistant for vla task. USER: clear the table",
    "You are a helpful assistant. USER: ",
    " ASSISTANT: Completed steps: What is the next step? pick up the red cup and place it in the rack.",
    "Task complete.",
]


def write_tokenizer(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    tokens = [bytes([b]) for b in range(256)]
    for text in TEXTS:  # a few multi-byte tokens: whole words, with and without a leading space
        for word in text.split():
            for t in (word.encode(), b" " + word.encode()):
                if t not in tokens:
                    tokens.append(t)
    # Dense ranks up to the first special id, as in the release (filler tokens no text produces).
    tokens += [b"\x00\x00" + i.to_bytes(3, "big") for i in range(SPECIAL_START - len(tokens))]
    (path / "emu3.tiktoken").write_bytes(b"".join(base64.b64encode(t) + b" %d\n" % r for r, t in enumerate(tokens)))
    lines = ["<|image token|>", "<|image start|>", "<|image end|>"]
    lines += [f"<|visual token {c:06d}|>" for c in range(NUM_VISUAL)]
    (path / "emu3_vision_tokens.txt").write_text("\n".join(lines) + "\n")
    (path / "tokenization_emu3.py").write_text(TOKENIZER_MODULE)
    (path / "tokenizer_config.json").write_text(json.dumps({
        "model_max_length": 10**18, "tokenizer_class": "Emu3Tokenizer",
        "auto_map": {"AutoTokenizer": ["tokenization_emu3.Emu3Tokenizer", None]},
    }))  # fmt: skip
    return path


def release_config(hidden: int = 16, layers: int = 1, heads: int = 2, kv_heads: int = 1, head_dim: int = 8) -> dict:
    """config.json in the release's format (its Emu3Config fields), tiny sizes."""
    return {
        "architectures": ["Emu3ForCausalLM"],
        "auto_map": {"AutoConfig": "configuration_emu3.Emu3Config", "AutoModelForCausalLM": "modeling_emu3.Emu3ForCausalLM"},
        "model_type": "Emu3",
        "vocab_size": VOCAB, "hidden_size": hidden, "intermediate_size": 5 * hidden, "num_hidden_layers": layers,
        "num_attention_heads": heads, "num_key_value_heads": kv_heads, "head_dim": head_dim, "hidden_act": "silu",
        "max_position_embeddings": 2048, "initializer_range": 0.02, "rms_norm_eps": 1e-5, "use_cache": True,
        "pad_token_id": 151643, "bos_token_id": 151849, "eos_token_id": 151850, "img_token_id": 151851,
        "boi_token_id": 151852, "eoi_token_id": 151853, "eol_token_id": 151846, "eof_token_id": 151847,
        "image_area": 518400, "pretraining_tp": 1, "tie_word_embeddings": False, "rope_theta": 1000000.0,
        "rope_scaling": None, "attention_dropout": 0.1, "torch_dtype": "bfloat16", "transformers_version": "4.48.2",
    }  # fmt: skip


def write_lm(path: Path, seed: int = 0, initializer_range: float = 0.02, **sizes: int):
    """A random Qwen3ForCausalLM saved sharded under the release's config.json; returns the model (fp32)."""
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    cfg = release_config(**sizes)
    qcfg = Qwen3Config(**{k: cfg[k] for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                                              "num_attention_heads", "num_key_value_heads", "head_dim",
                                              "max_position_embeddings", "rms_norm_eps", "rope_theta",
                                              "tie_word_embeddings")}, initializer_range=initializer_range)  # fmt: skip
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(qcfg).eval()
    model.save_pretrained(path, max_shard_size="5MB")  # sharded, with model.safetensors.index.json
    (path / "config.json").write_text(json.dumps(cfg, indent=2))  # the release's config, not Qwen3's
    return model


def write_vision_tokenizer(path: Path) -> Path:
    from model_runtime.tokenizers.ibq import IBQConfig, IBQTokenizer

    ibq = IBQTokenizer.from_config(IBQConfig(ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(), z_channels=8,
                                             resolution=16, n_embed=NUM_VISUAL, embed_dim=4), seed=0)  # fmt: skip
    ibq.save(path)
    return path


def make_release(root: Path, seed: int = 0, initializer_range: float = 0.02, **sizes: int):
    """The three release directories under ``root``; returns (lm_dir, tokenizer_dir, reference Qwen3 model)."""
    lm_dir = root / "weights" / "Emu3.5"
    model = write_lm(lm_dir, seed=seed, initializer_range=initializer_range, **sizes)
    write_vision_tokenizer(root / "weights" / "Emu3.5-VisionTokenizer")
    tok_dir = write_tokenizer(root / "tokenizer_emu3_ibq")
    return lm_dir, tok_dir, model
