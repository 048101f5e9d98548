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


def make_tiny_model_dir(path, corpus: list[str], image_size: int = 32, seed: int = 0, checks: bool = False):
    """A real but untrained model directory (random Qwen3 + random FSQ + word tokenizer over ``corpus``):
    it runs the torch backend end to end; its answers are noise. ``checks``: its guidance.json says it
    answers step checks (the words of model_runtime.prompt.check_texts() join the vocabulary)."""
    from model_runtime.backends.torch_backend import save_model_dir
    from model_runtime.layout import compact
    from model_runtime.lm import LMConfig, build_lm
    from model_runtime.prompt import check_texts
    from model_runtime.text_tokenizer import WordTokenizer
    from model_runtime.tokenizers.fsq import FSQConfig, FSQTokenizer

    text = WordTokenizer.build(corpus + (check_texts() if checks else []))
    vision = FSQTokenizer.from_config(
        FSQConfig(image_size=image_size, levels=(4, 4), channels=(8, 8, 8), res_blocks=0, out_channels=8), seed=seed)
    layout = compact(text.vocab_size, vision.num_codes)
    cfg = LMConfig(vocab_size=layout.vocab_size, hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1,
                   head_dim=16, intermediate_size=64)
    return save_model_dir(path, build_lm(cfg, seed=seed), vision, text, layout, lm_config=cfg, checks=checks)
