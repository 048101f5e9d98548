"""Frame verification (planner/verify.py, the monitor's decision): did the step happen, judged from
perceptions of the frames before and after real sim steps, including the expert's injected
mistakes (a wrong item picked, the item dropped on the way: steps that did not happen)."""

from __future__ import annotations

import numpy as np
import pytest

from emu_guide.types import ActionGoal, Frame, PlanStep, StepResult
from model_runtime.backends.base import Perceived, StepCheck
from model_runtime.prompt import format_perception, perception_in_reading_order
from planner.envs import make_env
from planner.monitor import ExecutionMonitor, MonitorConfig
from planner.verify import (
    FrameVerdict,
    FrameVerifier,
    decide_by_both,
    held_probability,
    judge_perception,
    perception_match,
)
from sim_envs.perception import visible_objects
from sim_envs.seeds import HELDOUT_SEEDS


def _truth(sim) -> dict:
    """What the frame shows now, as a perfect "perceive" model would say it (ground truth)."""
    seen = visible_objects(sim)
    return perception_in_reading_order(seen["objects"], seen["holding"], sim.camera.width, sim.camera.height)


@pytest.mark.parametrize("task, seeds", [("table_clear", HELDOUT_SEEDS[:2]), ("sort_blocks", HELDOUT_SEEDS[:3]),
                                         ("fold_cloth", HELDOUT_SEEDS[:2])])
def test_decisions_on_recorded_steps_with_injected_mistakes(task, seeds):
    from bench.verify_frames import segment_cases

    counts = {"done_ok": 0, "not_done_ok": 0, "false_done": [], "missed_done": []}
    for seed in seeds:
        # The expert with a mistake before every plan step: a plan segment with its goal ran that step
        # (the checker says whether it worked); a mistake, or the expert's drop on the way, is the
        # intended plan step NOT happening.
        ep = segment_cases(task, seed, mistake_rate=1.0)
        for c in ep["cases"]:
            before, after = ep["frames"][c["before"]]["truth"], ep["frames"][c["after"]]["truth"]
            done, why = judge_perception(c["goal"], after, before, c["text"])
            assert done is not None and isinstance(why, str) and why, (c["text"], why)
            if done == c["happened"]:
                counts["done_ok" if done else "not_done_ok"] += 1
            else:
                counts["false_done" if done else "missed_done"].append((seed, c["kind"], c["text"], why))
    assert counts["false_done"] == [] and counts["missed_done"] == []
    assert counts["done_ok"] >= 8 and counts["not_done_ok"] >= 2  # mistakes were injected and caught


def test_the_bench_perceives_a_post_step_frame_without_the_step_in_its_history():
    """As the loop's verifier asks: the step under test is not yet confirmed when its outcome is seen."""
    from bench.verify_frames import perceptions_as_the_loop_asks, segment_cases

    ep = segment_cases("table_clear", HELDOUT_SEEDS[0], mistake_rate=1.0)
    asked: list[tuple[int, tuple[str, ...]]] = []

    def perceive(image, history):
        asked.append((next(i for i, f in enumerate(ep["frames"]) if f["image"] is image), tuple(history)))
        return asked[-1]

    seen, pairs = perceptions_as_the_loop_asks(ep, perceive)
    assert [frame for frame, _ in seen] == list(range(len(ep["frames"])))
    assert any(c["happened"] for c in ep["cases"]) and any(not c["happened"] for c in ep["cases"])
    for c, (before, after) in zip(ep["cases"], pairs):
        assert before == (c["before"], tuple(ep["frames"][c["before"]]["history"]))
        assert after == (c["after"], tuple(ep["frames"][c["before"]]["history"]))
        if c["happened"]:  # the step is in the post-step frame's own history, not in the one it was asked with
            assert c["text"] in ep["frames"][c["after"]]["history"] and c["text"] not in after[1]


def test_the_bench_asks_step_checks_about_the_step_the_loop_planned():
    """A mistake is the plan step it displaced NOT happening: the check names that plan step."""
    from bench.verify_frames import segment_cases

    ep = segment_cases("table_clear", HELDOUT_SEEDS[0], mistake_rate=1.0)
    mistakes = [c for c in ep["cases"] if c["kind"] == "mistake"]
    assert mistakes and all(c["plan_text"] != c["text"] and not c["happened"] for c in mistakes)
    assert all(c["plan_text"] == c["text"] for c in ep["cases"] if c["kind"] == "plan")


def test_reasons_name_what_was_seen():
    cup, bin_ = "red cup", "bin"
    on_table = {"objects": [{"name": cup, "cell": "left back"}], "holding": None}
    held = {"objects": [], "holding": cup}
    gone = {"objects": [], "holding": None}
    pick, place = ActionGoal("pick", cup), ActionGoal("place", cup, target=bin_)
    assert judge_perception(pick, held, on_table) == (True, "sees it holds the red cup")
    done, why = judge_perception(pick, on_table, on_table)
    assert done is False and why == "holds nothing, not the red cup; the red cup is still on the table at left back"
    assert judge_perception(place, gone, held)[0] is True
    done, why = judge_perception(place, on_table, held)
    assert done is False and "on the table at left back, not in the bin" in why
    assert judge_perception(place, held, held) == (False, "still holds the red cup")
    # Stacking on an object the model sees: the block must be seen in that object's cell.
    base = {"name": "blue block", "cell": "middle front"}
    stack = ActionGoal("stack", "red block", target="blue block")
    on = {"objects": [base, {"name": "red block", "cell": "middle front"}], "holding": None}
    beside = {"objects": [base, {"name": "red block", "cell": "left front"}], "holding": None}
    higher = {"objects": [base, {"name": "red block", "cell": "middle back"}], "holding": None}
    assert judge_perception(stack, on)[0] is True and judge_perception(stack, higher)[0] is True
    assert judge_perception(stack, beside) == (False, "the red block is at left front, the blue block at middle front: not on it")
    # The model's own longer name for the scene's object (the sentence says it): the same object.
    small = {"objects": [], "holding": "small orange block"}
    assert judge_perception(ActionGoal("pick", "orange block"), small, None, "pick up the small orange block")[0] is True
    assert judge_perception(ActionGoal("pick", "orange block"), small, None, "pick up the orange block")[0] is None
    # Folds: the perception lists the cloth's parts still to fold.
    fold = ActionGoal("fold", "left sleeve", target="centre")
    sleeves = {"objects": [{"name": "left sleeve", "cell": "left back"}, {"name": "right sleeve", "cell": "right back"}],
               "holding": None}
    one_left = {"objects": [{"name": "right sleeve", "cell": "right back"}], "holding": None}
    assert judge_perception(fold, one_left, sleeves) == (True, "the left sleeve is no longer seen unfolded")
    assert judge_perception(fold, sleeves, sleeves) == (False, "the left sleeve is still seen unfolded at left back")
    assert judge_perception(fold, {**one_left, "holding": "cloth"}, sleeves) == (False, "still holds the cloth")
    # What perception cannot tell.
    assert judge_perception(fold, gone)[0] is None  # never saw the sleeve unfolded
    assert judge_perception(ActionGoal("push", "red cup"), on_table, on_table)[0] is None
    assert judge_perception(pick, {"objects": [], "holding": None})[0] is None  # never perceived the cup
    assert judge_perception(pick, None)[0] is None


def test_perception_match_against_truth():
    truth = {"objects": [{"name": "red cup", "cell": "left back"}, {"name": "teal fork", "cell": "middle front"}],
             "holding": None}
    said = {"objects": [{"name": "red cup", "cell": "left front"}, {"name": "blue bowl", "cell": "right back"}],
            "holding": None}
    assert perception_match(said, truth) == {"missed": ["teal fork"], "extra": ["blue bowl"], "wrong_cell": ["red cup"],
                                             "holding_ok": True, "exact": False}
    assert perception_match(truth, truth)["exact"] is True
    assert perception_match(None, truth) is None


def _perceiver(perception: dict | None, held_candidates: list | None = None):
    """A perception as the backend gives it; ``held_candidates`` as a scene perceiver adds them."""
    text = format_perception(perception["objects"], perception["holding"]) if perception else "see see ."
    if perception is not None and held_candidates is not None:
        perception = {**perception, "held_candidates": held_candidates}
    return lambda frame: Perceived(text, perception, "" if perception else "malformed", {"total": 1.0})


def test_a_fold_is_judged_by_the_parts_seen_and_falls_back_to_pixels_when_none_are():
    env = make_env("fold_cloth", resolution=64)
    env.reset(seed=HELDOUT_SEEDS[0])
    sim = env.unwrapped
    step = sim.ground_truth_plan()[0]
    subgoal = sim.subgoal_images()[0]
    before, seen_before = Frame(sim.render()), _truth(sim)
    sim.execute_skill(step.goal)
    after, seen_after = Frame(sim.render()), _truth(sim)
    assert len(seen_before["objects"]) == 7 and len(seen_after["objects"]) == 6  # the sleeve's flap is closed
    verdict = FrameVerifier(_perceiver(seen_after))(
        PlanStep(0, step.text, subgoal_image=subgoal, perception=seen_before), step.goal, before, after)
    assert verdict.by == "perception" and verdict.done is True
    assert verdict.reason == f"the {step.goal.object} is no longer seen unfolded"
    # With a step verifier that misses the fold, the perception's "done" decides (a fold: either judge)
    missed = FrameVerifier(_perceiver(seen_after), check=lambda b, a, text: StepCheck(text, 0.2, 1.0))(
        PlanStep(0, step.text, perception=seen_before), step.goal, before, after)
    assert missed.by == "check" and missed.done is True and missed.reason.endswith("(the perception overrules)")
    still = FrameVerifier(_perceiver(seen_before), check=lambda b, a, text: StepCheck(text, 0.2, 1.0))(
        PlanStep(0, step.text, perception=seen_before), step.goal, before, after)
    assert still.done is False  # both say no
    # A model that lists no cloth parts: perception cannot tell, the pixels decide.
    nothing = {"objects": [], "holding": None}
    verdict = FrameVerifier(_perceiver(nothing))(PlanStep(0, step.text, subgoal_image=subgoal, perception=nothing),
                                                 step.goal, before, after)
    assert verdict.by == "subgoal" and verdict.done is True and verdict.progress > 0.5
    assert verdict.reason.startswith("perception cannot tell: the model perceives no")
    assert "frame vs predicted subgoal" in verdict.reason and verdict.perception == nothing
    unparsed = FrameVerifier(_perceiver(None))(PlanStep(0, step.text, subgoal_image=subgoal), step.goal, before, after)
    assert unparsed.by == "subgoal" and "does not parse (malformed)" in unparsed.reason
    plain = FrameVerifier(None)(PlanStep(0, step.text, subgoal_image=None), step.goal, before, after)
    assert plain.done is None and plain.by == "none" and "does not perceive" in plain.reason
    env.close()


def test_the_step_verifier_decides_and_the_perception_is_its_second_reading():
    env = make_env("table_clear", resolution=64)
    env.reset(seed=HELDOUT_SEEDS[0])
    sim = env.unwrapped
    step = sim.ground_truth_plan()[0]  # a pick
    before, seen_before = Frame(sim.render()), _truth(sim)
    sim.execute_skill(step.goal)
    after, seen_after = Frame(sim.render()), _truth(sim)
    asked = []

    def check(p_happened):
        def judge(frame_before, frame_after, text):
            asked.append((frame_before, frame_after, text))
            return StepCheck(text, p_happened, 3.0, unknown_words=["juggle"] if "juggle" in text else [])
        return judge

    planned = PlanStep(0, step.text, perception=seen_before)
    verdict = FrameVerifier(_perceiver(seen_after), check=check(0.9))(planned, step.goal, before, after)
    assert asked == [(before, after, step.text)]  # the step's two frames and its own sentence
    assert verdict.by == "check" and verdict.done is True and verdict.p_happened == 0.9 and verdict.check_ms == 3.0
    assert verdict.reason.startswith("the step verifier: the step happened (p 0.90)")
    assert "its perception reads done" in verdict.reason and verdict.perception == seen_after
    # the check decides even where the perception disagrees; without a perception it decides alone
    verdict = FrameVerifier(_perceiver(seen_after), check=check(0.2))(planned, step.goal, before, after)
    assert verdict.done is False and "did not happen (p 0.20)" in verdict.reason and "reads done" in verdict.reason
    verdict = FrameVerifier(None, check=check(0.5))(PlanStep(0, step.text), step.goal, before, after)
    assert verdict.done is True and verdict.perception is None and "perception" not in verdict.reason
    # a sentence with words the verifier never saw still gets its judgement, and the reason says so
    verdict = FrameVerifier(None, check=check(0.7))(PlanStep(0, "juggle the cup"), step.goal, before, after)
    assert verdict.done is True and "words it never saw in training: juggle" in verdict.reason
    env.close()


def test_the_perception_overrules_the_verifier_only_on_a_pick_it_is_sure_of():
    env = make_env("table_clear", resolution=64)
    env.reset(seed=HELDOUT_SEEDS[0])
    sim = env.unwrapped
    pick, place = sim.ground_truth_plan()[:2]
    before, seen_before = Frame(sim.render()), _truth(sim)
    wrong = next(n for n in sim.object_names() if n != pick.goal.object)
    sim.execute_skill(ActionGoal("pick", wrong))  # a wrong pick: another object in the gripper
    after, seen_after = Frame(sim.render()), _truth(sim)
    assert seen_after["holding"] == wrong

    def check(p_happened):
        return lambda frame_before, frame_after, text: StepCheck(text, p_happened, 1.0)

    planned = PlanStep(0, pick.text, perception=seen_before)
    # the verifier is fooled ("the step happened"); the perceiver is sure the gripper holds another object
    verdict = FrameVerifier(_perceiver(seen_after, [[wrong, 0.97], [pick.goal.object, 0.002]]), check=check(0.9))(
        planned, pick.goal, before, after)
    assert verdict.by == "check" and verdict.done is False and verdict.p_happened == 0.9
    assert f"(the perception overrules: P(the {pick.goal.object} is held) 0.002)" in verdict.reason
    # not sure either way (the asked object at 0.2): the verifier decides
    verdict = FrameVerifier(_perceiver(seen_after, [[wrong, 0.7], [pick.goal.object, 0.2]]), check=check(0.9))(
        planned, pick.goal, before, after)
    assert verdict.done is True and "overrules" not in verdict.reason
    # sure the asked object is held: done although the verifier said no
    verdict = FrameVerifier(_perceiver(seen_after, [[pick.goal.object, 0.8]]), check=check(0.1))(
        planned, pick.goal, before, after)
    assert verdict.done is True and "(the perception overrules: P(the " in verdict.reason
    # a perception without probabilities (an LM's text) never overrules
    verdict = FrameVerifier(_perceiver(seen_after), check=check(0.9))(planned, pick.goal, before, after)
    assert verdict.done is True and "overrules" not in verdict.reason
    # a place the perception reads not done (its object still on the table): the verifier decides
    for p_happened, done in ((0.9, True), (0.1, False)):
        verdict = FrameVerifier(_perceiver(seen_after, [[wrong, 0.97]]), check=check(p_happened))(
            PlanStep(1, place.text, perception=seen_before), place.goal, before, after)
        assert verdict.done is done and "overrules" not in verdict.reason
    assert decide_by_both(True, "pick", 0.005) is False and decide_by_both(False, "pick", 0.6) is True
    assert decide_by_both(True, "pick", 0.3) is True and decide_by_both(False, "pick", 0.3) is False
    assert decide_by_both(True, "pick", None) is True  # no probabilities: the verifier decides
    assert decide_by_both(True, "fold", 0.0) is True and decide_by_both(False, "place", 1.0) is False
    # a fold, a stack or a place the perception reads done is done; else the verifier decides
    assert decide_by_both(False, "fold", None, True) is True and decide_by_both(False, "stack", None, True) is True
    assert decide_by_both(False, "fold", None, False) is False and decide_by_both(True, "fold", None, False) is True
    assert decide_by_both(False, "place", None, True) is True and decide_by_both(False, "place", None, False) is False
    assert decide_by_both(False, "pick", None, True) is False  # a pick: by the held probabilities only
    assert held_probability({"held_candidates": [["Red  cup", 0.4], ["blue fork", 0.5]]}, "red cup") == 0.4
    assert held_probability({"held_candidates": [["blue fork", 0.5]]}, "red cup") == 0.0
    assert held_probability({"objects": [], "holding": "red cup"}, "red cup") is None and held_probability(None, "x") is None
    env.close()


class _Executor:
    """A robot or sim double: every execution 'succeeds'; ``check`` is what its checker says."""

    name = "double"

    def __init__(self, check: bool | None, authoritative: bool = False) -> None:
        self._check = check
        self.authoritative_check = authoritative
        self.executed = 0

    def execute(self, goal):
        self.executed += 1
        return StepResult(goal.step_index, True, reason="ran")

    def check(self, goal):
        return None if self.executed == 0 else self._check  # nothing done before the first run

    def observe(self):
        return Frame(np.zeros((8, 8, 3), np.uint8))

    def task_done(self):
        return None


GOAL = ActionGoal("pick", "red cup")
STEP = PlanStep(0, "pick up the red cup", goal=GOAL)


@pytest.mark.parametrize("check, authoritative, frames_by, frames_done, done, decided_by", [
    (None, False, "perception", True, True, "perception"),  # no checker: the frames decide
    (None, False, "perception", False, False, "perception"),
    (None, False, "none", None, False, "none"),  # nothing can tell: not confirmed
    (True, True, "perception", False, True, "checker"),  # the simulator's checker decides alone
    (False, True, "perception", True, False, "checker"),
    (True, False, "perception", False, False, "perception+executor"),  # robot says success, frames say no
    (False, False, "perception", True, False, "perception+executor"),  # robot says failure: retry
    (True, False, "perception", True, True, "perception+executor"),
    (True, False, "check", False, False, "check+executor"),  # the model's step check, as its perception
    (True, False, "check", True, True, "check+executor"),
    (None, False, "check", False, False, "check"),
    (True, False, "subgoal", False, True, "executor"),  # perception cannot tell: the robot's report decides
])
def test_monitor_combines_frames_and_checkers(check, authoritative, frames_by, frames_done, done, decided_by):
    verdict = FrameVerdict(frames_done, frames_by, "because (test)")
    mon = ExecutionMonitor(_Executor(check, authoritative), MonitorConfig(max_retries=0),
                           verifier=lambda step, goal, before, after: verdict)
    out = mon.run_step(STEP, GOAL, Frame(np.zeros((8, 8, 3), np.uint8)))
    assert (out.status == "done") is done and out.decided_by == decided_by and out.verdict is verdict
    assert "because (test)" in out.reason
    check_event = next(e for e in mon.events_json() if e["kind"] == "check")
    assert check_event["data"]["decided_by"] == decided_by and check_event["data"]["frames"] == frames_by


class PerceivingOracleForTest:
    """Stands in for a well-trained "perceive" model: the oracle's steps, and perceptions read from the
    simulator (ground truth). Counts what it perceived and which answers started from a given one."""

    name = "perceiving-oracle-for-test"
    answer_format = "perceive"

    def __init__(self, env) -> None:
        from model_runtime.backends.oracle import OracleBackend

        self.inner = OracleBackend(env)
        self.sim = env.unwrapped
        self.model_id, self.image_size = self.inner.model_id, self.inner.image_size
        self.perceived: list[str] = []
        self.given: list[str | None] = []

    def reset(self) -> None:
        self.inner.reset()

    def _now(self) -> str:
        p = _truth(self.sim)
        return format_perception(p["objects"], p["holding"])

    def perceive(self, frame, instruction, history, options=None) -> Perceived:
        from model_runtime.prompt import parse_perception

        self.perceived.append(self._now())
        return Perceived(self.perceived[-1], parse_perception(self.perceived[-1]), timings_ms={"total": 0.5})

    def next_step(self, frame, instruction, history, options=None) -> PlanStep:
        from model_runtime.prompt import parse_perception

        step = self.inner.next_step(frame, instruction, history, options)
        self.given.append(options.perception if options is not None else None)
        step.perception = parse_perception(self.given[-1] or self._now())
        return step

    def close(self) -> None:
        self.inner.close()


def test_the_loop_verifies_by_perception_reuses_it_and_the_report_shows_it(tmp_path):
    from planner.executor import SimExecutor
    from planner.report import write_report
    from planner.runner import RunnerConfig, run_episode
    from tests.planner.conftest import FailingExecutorForTest

    env = make_env("table_clear")
    backend = PerceivingOracleForTest(env)
    env.reset(seed=HELDOUT_SEEDS[0])
    executor = FailingExecutorForTest(SimExecutor(env, use_checker=False), failures=1)  # frames only, as on a robot
    result = run_episode(env, backend, HELDOUT_SEEDS[0], RunnerConfig(use_checker=False), executor=executor)
    assert result.success and result.retries == 1
    acted = [r for r in result.steps if r.verification is not None]
    assert acted and all(r.verification["decided_by"] == "perception" for r in acted)
    first = acted[0].verification  # the injected failure: the gripper slipped, nothing moved
    assert first["frames"]["done"] is True and result.steps[0].attempts == 2
    checks = [e for e in result.events if e["kind"] == "check"]
    assert checks[0]["data"]["frames_done"] is False and "holds nothing, not the" in checks[0]["why"]
    assert all(r.verification["after_match"]["exact"] for r in acted)  # the double perceives perfectly
    # the executor's own report rides along (the slip's retry succeeded): the frames agree with it everywhere
    assert all(r.verification["executor_success"] is True for r in acted)
    # Each post-step perception was decoded once: the next answer started from it.
    assert len(backend.perceived) == len(checks)
    assert backend.given[0] is None and all(g is not None for g in backend.given[1:])
    assert all(r.perception_reused for r in result.steps[1:]) and not result.steps[0].perception_reused
    assert all(r.perception_match["exact"] for r in result.steps)
    assert all("verify" in r.latency_ms for r in acted)

    paths = write_report(tmp_path, [result])
    plan = paths["plan"].read_text()
    assert "sees: " in plan and "(reused from the last check)" in plan and "truth: " in plan and "[right]" in plan
    assert "verify: done (decided by perception): frames (perception): done: sees it holds the" in plan
    assert "after: " in plan and "after truth: " in plan
    from PIL import Image

    sheet = Image.open(next(p for k, p in paths.items() if k.startswith("sheet:")))
    assert sheet.height > 64 + len(result.steps) * 198  # rows grew to show perceptions and verification
    env.close()


def test_the_bench_measures_a_models_step_verifier(tmp_path):
    """bench/verify_frames.py's ``check`` rows: every case asked, the plan step's sentence, a cost each;
    a sentence with words the verifier never saw is still judged, and the row names those words."""
    import json

    from bench.verify_frames import main
    from tests.planner.conftest import make_tiny_model_dir

    env = make_env("table_clear", resolution=32)
    env.reset(seed=HELDOUT_SEEDS[0])
    texts = [s.text for s in env.unwrapped.ground_truth_plan()]
    env.close()
    for name, corpus, knows in (("knows", texts, True), ("new words", texts[:1], False)):
        model = make_tiny_model_dir(tmp_path / name, ["clear the table", *corpus], verifier=True)
        assert main(["--model-path", str(model), "--tasks", "table_clear", "--episodes", "1",
                     "--out", str(tmp_path / f"{name}.json")]) == 0
        out = json.loads((tmp_path / f"{name}.json").read_text())
        rows = [c for c in out["cases"] if c["source"] == "check"]
        assert rows and len(rows) == out["table"]["table_clear"]["check"]["cases"]
        assert all(0.0 < r["p_happened"] < 1.0 for r in rows) and out["costs_ms"]["check"]["n"] == len(rows)
        assert out["table"]["table_clear"]["check"]["cannot_tell"] == 0.0
        assert any(r["unknown_words"] for r in rows) != knows  # the later steps' words are new to "new words"
        assert (tmp_path / f"{name}.png").stat().st_size > 0  # the picture of its probabilities
