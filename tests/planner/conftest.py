"""Test doubles for the planner tests (each stands in for hardware or a trained model we do not have).

Imported as ``tests.planner.conftest`` (the project runs ``python -m pytest`` from the repository
root); tests/emu_ros uses ``make_tiny_model_dir`` too."""

from __future__ import annotations

from emu_guide.types import ActionGoal, Frame, StepResult
from planner.executor import SimExecutor


class FailingExecutorForTest:
    """Stands in for a robot whose first ``failures`` skill executions fail without moving anything."""

    name = "failing-for-test"

    def __init__(self, inner: SimExecutor, failures: int) -> None:
        self.inner = inner
        self.failures = failures
        self.calls = 0

    def execute(self, goal: ActionGoal) -> StepResult:
        self.calls += 1
        if self.calls <= self.failures:
            return StepResult(goal.step_index, False, reason="gripper slipped (test)")
        return self.inner.execute(goal)

    def check(self, goal: ActionGoal) -> bool | None:
        return self.inner.check(goal)

    def observe(self) -> Frame:
        return self.inner.observe()

    def task_done(self) -> bool | None:
        return self.inner.task_done()


def make_tiny_verifier_dir(path, corpus: list[str], seed: int = 0):
    """A real but untrained step verifier directory (model_runtime.step_verifier) whose vocabulary is
    the words of ``corpus``: it runs the verifier's path end to end; its probabilities are noise."""
    import torch

    from model_runtime.step_verifier import StepVerifier, StepVerifierConfig, StepVerifierNet, sentence_words

    torch.manual_seed(seed)
    cfg = StepVerifierConfig(vocab=sorted({w for t in corpus for w in sentence_words(t)}), image_size=32, width=8, text_dim=8)
    StepVerifier(StepVerifierNet(cfg)).save(path)
    return path


def make_tiny_model_dir(path, corpus: list[str], image_size: int = 32, seed: int = 0, verifier: bool = False):
    """A real but untrained model directory (random Qwen3 + random FSQ + word tokenizer over ``corpus``):
    it runs the torch backend end to end; its answers are noise. ``verifier``: it also holds an
    untrained step verifier (``make_tiny_verifier_dir``), so ``check_step`` answers."""
    from model_runtime.backends.torch_backend import save_model_dir
    from model_runtime.layout import compact
    from model_runtime.lm import LMConfig, build_lm
    from model_runtime.text_tokenizer import WordTokenizer
    from model_runtime.tokenizers.fsq import FSQConfig, FSQTokenizer

    text = WordTokenizer.build(corpus)
    vision = FSQTokenizer.from_config(
        FSQConfig(image_size=image_size, levels=(4, 4), channels=(8, 8, 8), res_blocks=0, out_channels=8), seed=seed)
    layout = compact(text.vocab_size, vision.num_codes)
    cfg = LMConfig(vocab_size=layout.vocab_size, hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1,
                   head_dim=16, intermediate_size=64)
    step_verifier = make_tiny_verifier_dir(path.parent / f"{path.name}.verifier", corpus, seed) if verifier else None
    return save_model_dir(path, build_lm(cfg, seed=seed), vision, text, layout, lm_config=cfg, step_verifier=step_verifier)
