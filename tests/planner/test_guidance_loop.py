"""The one step loop's policies (planner/loop.py), each pinned on a scripted model and a small
executor whose answers the test sets: status semantics, the final "done" against the executor's
task check, retries vs re-plans, what a confirmed step changes, callback order, plan-ahead."""

from __future__ import annotations

import numpy as np
import pytest

from emu_guide.types import Frame, GoalStatus, PlanStatus, PlanStep, StepResult
from model_runtime.backends.base import BackendError
from model_runtime.backends.oracle import OracleBackend
from planner.envs import make_env
from planner.executor import ExecutorError, PlanAheadExecutor, SimExecutor
from planner.grounded import ObjectsInView
from planner.loop import GuidanceLoop, LoopConfig
from planner.monitor import MonitorConfig
from sim_envs.seeds import HELDOUT_SEEDS

DONE = "done"


class ScriptBackendForTest:
    """A model whose answers the test scripts ("done" = the final step); the last answer repeats."""

    name = "script-for-test"
    model_id = "script"
    image_size = None

    def __init__(self, answers: list[str], log: list | None = None, fail_at: int | None = None) -> None:
        self.answers, self.log, self.fail_at = list(answers), log, fail_at
        self.calls: list[tuple[tuple[str, ...], object]] = []  # (history texts, options) per call

    def next_step(self, frame, instruction, history, options=None) -> PlanStep:
        if self.fail_at is not None and len(self.calls) == self.fail_at:
            raise BackendError("model crashed (test)")
        text = self.answers[min(len(self.calls), len(self.answers) - 1)]
        self.calls.append((tuple(h.text for h in history), options))
        return PlanStep(index=len(history), text=text, is_final=text == DONE)

    def close(self) -> None:
        pass


class ExecutorForTest:
    """An executor with scripted results: ``results`` per execute (default success), ``verdicts`` per
    task_done call (the last repeats). ``check`` says done for a goal whose last execution succeeded."""

    name = "for-test"

    def __init__(self, results=(), verdicts=(None,), log: list | None = None, observe_fails_at: int | None = None,
                 on_observe=None) -> None:
        self.results, self.verdicts = list(results), list(verdicts)
        self.log = log if log is not None else []
        self.done: set[str] = set()
        self.stamp = 0.0
        self.observe_fails_at, self.on_observe = observe_fails_at, on_observe
        self.executed: list[tuple[str, str, str | None, int]] = []
        self.task_done_calls = 0

    def execute(self, goal) -> StepResult:
        ok = self.results.pop(0) if self.results else True
        self.executed.append((goal.verb, goal.object, goal.target, goal.step_index))
        self.log.append(f"execute:{goal.verb} {goal.object}")
        if ok:
            self.done.add(goal.goal_id)
        return StepResult(goal.step_index, ok, reason="" if ok else "slipped (test)")

    def check(self, goal) -> bool | None:
        return goal.goal_id in self.done

    def observe(self) -> Frame:
        self.stamp += 1.0
        if self.on_observe is not None:
            self.on_observe()
        if self.observe_fails_at is not None and self.stamp >= self.observe_fails_at:
            raise ExecutorError("no camera frame (test)")
        return Frame(np.full((8, 8, 3), int(self.stamp) % 255, np.uint8), stamp=self.stamp)

    def task_done(self) -> bool | None:
        self.log.append("task_done")
        v = self.verdicts[min(self.task_done_calls, len(self.verdicts) - 1)]
        self.task_done_calls += 1
        return v


def _run(answers, executor=None, monitor=None, **kw):
    backend = ScriptBackendForTest(answers)
    executor = executor or ExecutorForTest()
    loop = GuidanceLoop(backend, "clear the table", executor,
                        LoopConfig(monitor=monitor or MonitorConfig(), keep_images=False, **kw.pop("config", {})), **kw)
    return loop, loop.run(), backend, executor


PICK_PLACE = ["pick up the red cup", "place it in the rack", DONE]


@pytest.mark.parametrize("verdict, why", [(True, "the model says done and the executor agrees"),
                                          (None, "the model says done (the executor has no task check)")])
def test_succeeds_when_the_model_says_done_and_the_executor_does_not_disagree(verdict, why):
    loop, res, backend, ex = _run(PICK_PLACE, ExecutorForTest(verdicts=[verdict]))
    assert res.status == PlanStatus.SUCCEEDED and res.stop_reason == "task complete" and res.plan.error == ""
    assert res.plan.status == PlanStatus.SUCCEEDED
    assert [r.outcome for r in res.records] == ["done", "done", "final"] and res.records[-1].reason == why
    assert [r.index for r in res.records] == [0, 1, 2] and [r.call for r in res.records] == [1, 2, 3]
    assert (res.planning_calls, res.attempts, res.replans, res.retries) == (3, 2, 0, 0)
    assert [s.text for s in res.plan.steps] == PICK_PLACE and res.plan.steps[-1].goal is None
    # "it" is the object picked by the confirmed step before
    assert ex.executed == [("pick", "red cup", None, 0), ("place", "red cup", "rack", 1)]
    assert backend.calls[2][0] == ("pick up the red cup", "place it in the rack")  # both joined the history
    assert loop.context.held_object is None and loop.context.last_object == "red cup"
    assert ex.task_done_calls == 1 and res.final_frame.stamp == 3.0
    kinds = [e["kind"] for e in res.events]
    assert kinds[0] == "start" and kinds[-1] == "final" and "replan" not in kinds


def test_a_final_done_the_executor_rejects_is_replanned_up_to_max_replans():
    loop, res, backend, ex = _run([DONE], ExecutorForTest(verdicts=[False]), MonitorConfig(max_replans=2))
    assert res.status == PlanStatus.FAILED
    assert res.stop_reason == "gave up: the model says done but the executor's task check disagrees (3 re-plans)"
    assert res.plan.error == res.stop_reason and res.plan.status == PlanStatus.FAILED
    assert [r.outcome for r in res.records] == ["final_rejected"] * 3 and res.replans == 3
    assert res.planning_calls == 3 and res.attempts == 0 and ex.task_done_calls == 3
    # each later call is asked to avoid the rejected final answer
    assert [c[1].avoid_final for c in backend.calls] == [False, True, True]
    # ... and a model that then does the step and says done again succeeds (one re-plan allowed)
    loop, res, _, ex = _run([DONE, "pick up the red cup", DONE], ExecutorForTest(verdicts=[False, True]),
                            MonitorConfig(max_replans=1))
    assert res.status == PlanStatus.SUCCEEDED and [r.outcome for r in res.records] == ["final_rejected", "done", "final"]
    assert res.replans == 1 and ex.executed == [("pick", "red cup", None, 0)]


def test_failed_attempts_are_retried_then_replanned_and_the_count_restarts_per_step():
    # max_retries=1: two attempts per proposal. Step 0 fails twice (one re-plan), then works; step 1
    # likewise: with max_replans=1 both steps may each use their one re-plan.
    ex = ExecutorForTest(results=[False, False, True, False, False, True])
    loop, res, backend, _ = _run(["pick up the red cup", "pick up the red cup", "place it in the rack",
                                  "place it in the rack", DONE], ex, MonitorConfig(max_retries=1, max_replans=1))
    assert res.status == PlanStatus.SUCCEEDED, res.stop_reason
    assert [(r.outcome, r.attempts, r.index) for r in res.records] == [
        ("failed", 2, 0), ("done", 1, 0), ("failed", 2, 1), ("done", 1, 1), ("final", 0, 2)]
    assert (res.replans, res.retries, res.attempts, res.planning_calls) == (2, 2, 6, 5)
    kinds = [e["kind"] for e in res.events]
    assert kinds.count("retry") == 2 and kinds.count("replan") == 2
    assert backend.calls[1][1].avoid_texts == ("pick up the red cup",)  # the re-plan rejects the failed answer


def test_a_step_that_keeps_failing_gives_up_after_max_replans():
    ex = ExecutorForTest(results=[False] * 100)
    loop, res, _, _ = _run(["pick up the red cup"], ex, MonitorConfig(max_retries=0, max_replans=2))
    assert res.status == PlanStatus.FAILED and res.replans == 3 and res.attempts == 3 and res.retries == 0
    assert res.stop_reason.startswith("gave up on step 0: not done after 1 attempt(s)")
    assert res.stop_reason.endswith("(3 re-plans)")
    assert res.events[-1]["kind"] == "limit" and res.events[-1]["why"] == res.stop_reason
    assert loop.context.held_object is None and loop.session.history == []


def test_a_pick_that_failed_is_not_confirmed_so_it_has_no_referent():
    ex = ExecutorForTest(results=[False])
    _, res, _, ex = _run(["pick up the red cup", "place it in the rack", "pick up the red cup", DONE], ex,
                         MonitorConfig(max_retries=0, max_replans=3))
    # the place step's "it" cannot resolve: never executed (0 attempts), re-planned
    assert [(r.outcome, r.attempts) for r in res.records][:2] == [("failed", 1), ("failed", 0)]
    assert res.records[1].goal["status"] == GoalStatus.UNKNOWN.value
    assert ex.executed == [("pick", "red cup", None, 0), ("pick", "red cup", None, 0)]
    assert res.status == PlanStatus.SUCCEEDED


def test_the_word_done_without_the_final_mark_is_never_executed():
    backend = ScriptBackendForTest(["done"])
    backend.next_step = lambda frame, instruction, history, options=None: PlanStep(index=len(history), text="done")
    ex = ExecutorForTest()
    res = GuidanceLoop(backend, "clear the table", ex, LoopConfig(monitor=MonitorConfig(max_replans=0))).run()
    assert res.status == PlanStatus.FAILED and ex.executed == [] and ex.task_done_calls == 0
    assert res.records[0].goal["reason"] == "the sentence says done but the model did not mark the step final"


@pytest.mark.parametrize(
    "monitor, answers, reason, calls, attempts",
    [
        (MonitorConfig(max_planning_calls=2), ["pick up the red cup", "place it in the rack", "pick up the bowl"],
         "planning limit: 2 backend calls (max_planning_calls=2)", 2, 2),
        (MonitorConfig(max_attempts=2), ["pick up the red cup", "place it in the rack", "pick up the bowl"],
         "step limit: 2 goals executed (max_attempts=2)", 2, 2),
        (MonitorConfig(time_limit_s=1e-9), ["pick up the red cup"], "time limit:", 0, 0),
    ],
)
def test_each_budget_fails_the_run_exactly_when_spent(monitor, answers, reason, calls, attempts):
    _, res, _, _ = _run(answers, ExecutorForTest(), monitor)
    assert res.status == PlanStatus.FAILED and res.stop_reason.startswith(reason) and res.plan.error == res.stop_reason
    assert (res.planning_calls, res.attempts) == (calls, attempts)
    assert res.events[-1]["kind"] == "limit"


def test_the_step_limit_inside_a_step_stops_the_run():
    ex = ExecutorForTest(results=[False, False])
    _, res, _, _ = _run(["pick up the red cup"], ex, MonitorConfig(max_attempts=1, max_retries=1))
    assert res.status == PlanStatus.FAILED and res.stop_reason == "step limit: 1 goals executed (max_attempts=1)"
    assert res.records[-1].outcome == "limit" and res.attempts == 1 and res.replans == 0


def test_cancel_and_errors():
    stop = {"now": False}
    ex = ExecutorForTest(on_observe=lambda: None)
    loop = GuidanceLoop(ScriptBackendForTest(["pick up the red cup", "place it in the rack"]), "clear the table", ex,
                        LoopConfig(), on_step=lambda rec: stop.update(now=True), should_stop=lambda: stop["now"])
    res = loop.run()
    assert res.status == PlanStatus.CANCELED and res.stop_reason == "stopped (canceled or preempted)"
    assert res.plan.error == res.stop_reason and res.planning_calls == 1 and len(ex.executed) == 1
    # the executor fails: FAILED naming it, or CANCELED when a stop was asked meanwhile
    ex = ExecutorForTest(observe_fails_at=2)
    res = GuidanceLoop(ScriptBackendForTest(["pick up the red cup"]), "clear the table", ex).run()
    assert res.status == PlanStatus.FAILED and res.stop_reason == "executor: no camera frame (test)"
    assert res.events[-1]["kind"] == "error"
    stop = {"now": False}
    ex = ExecutorForTest(observe_fails_at=2, on_observe=lambda: stop.update(now=ex.stamp >= 2))
    res = GuidanceLoop(ScriptBackendForTest(["pick up the red cup"]), "clear the table", ex,
                       should_stop=lambda: stop["now"]).run()
    assert res.status == PlanStatus.CANCELED
    # the model fails
    res = GuidanceLoop(ScriptBackendForTest(["pick up the red cup", DONE], fail_at=1), "clear the table",
                       ExecutorForTest()).run()
    assert res.status == PlanStatus.FAILED and res.stop_reason == "BackendError: model crashed (test)"
    assert res.events[-1]["kind"] == "error" and res.records[0].outcome == "done"


def test_on_plan_comes_before_execution_and_on_step_after_the_outcome():
    log: list[str] = []
    ex = ExecutorForTest(results=[False], verdicts=[True], log=log)
    GuidanceLoop(ScriptBackendForTest(["pick up the red cup", "pick up the red cup", DONE]), "clear the table", ex,
                 LoopConfig(monitor=MonitorConfig(max_retries=0)),
                 on_plan=lambda step, plan: log.append(f"plan:{step.text}:{len(plan.steps)}"),
                 on_step=lambda rec: log.append(f"step:{rec.outcome}")).run()
    assert log == ["plan:pick up the red cup:1", "execute:pick red cup", "step:failed",
                   "plan:pick up the red cup:2", "execute:pick red cup", "step:done",
                   "plan:done:3", "task_done", "step:final"]


class StreamingScriptBackendForTest(ScriptBackendForTest):
    """The scripted model, streaming each step's sentence first as the torch backend does."""

    def next_step(self, frame, instruction, history, options=None) -> PlanStep:
        step = super().next_step(frame, instruction, history, options)
        if not step.is_final and options is not None and options.on_text is not None:
            options.on_text(PlanStep(index=step.index, text=step.text))
        return step


def test_a_streamed_sentence_comes_before_its_step_with_the_frame_it_was_planned_from():
    log: list[str] = []
    ex = ExecutorForTest(verdicts=[True], log=log)
    GuidanceLoop(StreamingScriptBackendForTest(["pick up the red cup", DONE]), "clear the table", ex,
                 on_text=lambda step, plan, frame: log.append(f"text:{step.text}:{len(plan.steps)}:{frame.stamp:.0f}"),
                 on_plan=lambda step, plan: log.append(f"plan:{step.text}:{len(plan.steps)}:{plan.stamp:.0f}")).run()
    assert log == ["text:pick up the red cup:0:1", "plan:pick up the red cup:1:1", "execute:pick red cup",
                   "plan:done:2:2", "task_done"]


@pytest.mark.parametrize("horizon", [1, 2])
def test_plan_ahead_stops_at_the_horizon(horizon):
    frame = Frame(np.zeros((8, 8, 3), np.uint8), stamp=5.0)
    plans: list[int] = []
    backend = ScriptBackendForTest(["pick up the red cup", "place it in the rack", "pick up the bowl"])
    res = GuidanceLoop(backend, "clear the table", PlanAheadExecutor(frame), LoopConfig(horizon=horizon),
                       on_plan=lambda step, plan: plans.append(len(plan.steps))).run(frame)
    assert res.status == PlanStatus.SUCCEEDED
    assert res.stop_reason == f"planned {horizon} steps ahead (the horizon)" and res.plan.error == ""
    assert plans == list(range(1, horizon + 1)) and res.planning_calls == horizon and len(res.plan.steps) == horizon
    assert [s.goal.step_index for s in res.plan.steps] == list(range(horizon))


def test_plan_ahead_ends_early_on_done_and_the_horizon_is_validated():
    frame = Frame(np.zeros((8, 8, 3), np.uint8), stamp=5.0)
    res = GuidanceLoop(ScriptBackendForTest(["pick up the red cup", DONE]), "clear the table", PlanAheadExecutor(frame),
                       LoopConfig(horizon=5)).run(frame)
    assert res.status == PlanStatus.SUCCEEDED and res.stop_reason == "task complete" and len(res.plan.steps) == 2
    with pytest.raises(ValueError, match="horizon must be >= 1 or None, got 0"):
        LoopConfig(horizon=0)
    assert LoopConfig(horizon=1).horizon == 1


class ObjectsForTest:
    """A detector that always sees the same names."""

    def __init__(self, names) -> None:
        self.names = tuple(names)

    def objects_for(self, frame):
        return ObjectsInView(frame.stamp, known=("red cup", "blue bowl", "rack"), names=self.names)


def test_confirmed_steps_update_name_grounding():
    backend = ScriptBackendForTest(["pick up the red cup", "place it in the rack", "pick up the blue bowl", DONE])
    loop = GuidanceLoop(backend, "clear the table", ExecutorForTest(),
                        LoopConfig(grounded_decoding=True), objects=ObjectsForTest(["red cup", "blue bowl"]))
    res = loop.run()
    assert res.status == PlanStatus.SUCCEEDED
    # put away once placed; held while in the gripper
    assert [r.allowed_names for r in res.records] == [["red cup", "blue bowl"], ["red cup", "blue bowl"], ["blue bowl"],
                                                     ["blue bowl"]]
    assert loop.naming.held == "blue bowl" and loop.naming.put_away == {"red cup"}
    assert loop.context.held_object == "blue bowl"
    assert backend.calls[0][1].known_names == ("red cup", "blue bowl", "rack")
    assert all("detect" in r.latency_ms for r in res.records)
    # without the switch: free decoding, the detector is not asked
    res = GuidanceLoop(ScriptBackendForTest(["pick up the red cup", DONE]), "clear the table", ExecutorForTest(),
                       objects=ObjectsForTest(["red cup"])).run()
    assert [r.allowed_names for r in res.records] == [None, None]


def test_a_pick_of_an_object_a_confirmed_step_put_away_is_not_executed():
    from planner.parse import Vocabulary

    # a tower's block stays nameable as a target (the vocabulary's targets), but taking it again undoes the stack
    vocab = Vocabulary(("red block", "blue block"), ("red block", "blue block"))
    backend = ScriptBackendForTest(["pick up the blue block", "stack the blue block on the red block",
                                    "pick up the blue block", DONE])
    executor = ExecutorForTest()

    class BlocksForTest:
        def objects_for(self, frame):
            return ObjectsInView(frame.stamp, known=("red block", "blue block"), names=("red block", "blue block"))

    res = GuidanceLoop(backend, "stack the blocks", executor, LoopConfig(grounded_decoding=True), vocabulary=vocab,
                       objects=BlocksForTest()).run()
    assert [r.outcome for r in res.records] == ["done", "done", "failed", "final"]
    assert "the blue block was put away by a confirmed step" in res.records[2].reason and res.records[2].attempts == 0
    assert [e[0] for e in executor.executed] == ["pick", "stack"]
    assert res.records[3].allowed_names is not None and "blue block" in res.records[3].allowed_names  # still a target


class MisreadObjectsForTest:
    """A detector that also reports a green fork the scene does not have (a misread object)."""

    def objects_for(self, frame):
        return ObjectsInView(frame.stamp, known=("red cup", "blue bowl", "green fork"), names=("green fork", "red cup"))


def test_a_name_no_goal_could_be_formed_from_is_not_offered_again_until_a_step_is_confirmed():
    from planner.parse import Vocabulary

    backend = ScriptBackendForTest(["pick up the green fork", "pick up the red cup", "place it in the rack",
                                    "pick up the green fork", DONE])
    loop = GuidanceLoop(backend, "clear the table", ExecutorForTest(), LoopConfig(grounded_decoding=True),
                        vocabulary=Vocabulary(("red cup", "blue bowl"), ("rack",)), objects=MisreadObjectsForTest())
    res = loop.run()
    assert [r.outcome for r in res.records[:3]] == ["failed", "done", "done"]
    assert "no object matching 'green fork'" in res.records[0].reason and res.records[0].attempts == 0
    # the re-plan is offered the other names only; once a step is confirmed the fork is offered again
    assert [r.allowed_names for r in res.records[:4]] == [["green fork", "red cup"], ["red cup"], ["green fork", "red cup"],
                                                         ["green fork"]]
    refused = [e["data"]["refused"] for e in res.events if e["kind"] == "ground" and "refused" in e["data"]]
    assert refused[0] == ["green fork"]
    # a wrong destination is no unknown object: the held cup stays on offer for its place
    res = GuidanceLoop(ScriptBackendForTest(["pick up the red cup", "put the red cup in the middle bin", "place it in the rack",
                                             DONE]), "clear the table", ExecutorForTest(), LoopConfig(grounded_decoding=True),
                       vocabulary=Vocabulary(("red cup", "blue bowl"), ("rack",)), objects=MisreadObjectsForTest()).run()
    assert "no target matching 'middle bin'" in res.records[1].reason
    assert res.records[2].allowed_names == ["green fork", "red cup"] and res.records[2].outcome == "done"
    # a step that ran and failed is re-planned as before: its names stay on offer
    loop = GuidanceLoop(ScriptBackendForTest(["pick up the red cup", DONE]), "clear the table",
                        ExecutorForTest(results=[False, False]), LoopConfig(grounded_decoding=True),
                        vocabulary=Vocabulary(("red cup", "blue bowl"), ("rack",)), objects=MisreadObjectsForTest())
    res = loop.run()
    assert res.records[0].attempts == 2 and res.records[1].allowed_names == ["green fork", "red cup"]


class MisreadingPerceiverBackendForTest(ScriptBackendForTest):
    """A scripted model with a scene perceiver that reads the green fork as a green spoon, a knife and
    a fork its cell's next likeliest names."""

    perceives = True
    perceived_names = ("red cup", "green spoon", "green knife", "green fork")

    def perceive(self, frame, instruction, history, options=None):
        from model_runtime.backends.base import Perceived
        from model_runtime.prompt import format_perception, parse_perception

        text = format_perception([{"name": "green spoon", "cell": "left back"}, {"name": "red cup", "cell": "right front"}], None)
        others = {"green spoon": [["green knife", 0.2], ["green fork", 0.1]], "red cup": [["green cup", 0.01]]}
        return Perceived(text=text, perception={**parse_perception(text), "other_names": others})


def test_a_refused_reading_is_offered_under_the_objects_next_likeliest_name():
    from planner.parse import Vocabulary

    backend = MisreadingPerceiverBackendForTest(["pick up the green spoon", "pick up the green knife",
                                                 "pick up the green fork", DONE])
    res = GuidanceLoop(backend, "clear the table", ExecutorForTest(), LoopConfig(),
                       vocabulary=Vocabulary(("red cup", "green fork"), ("rack",))).run()
    assert [r.outcome for r in res.records[:3]] == ["failed", "failed", "done"]
    # each name that named nothing gives way to the next reading of its object ("green cup" is no known name)
    assert [r.allowed_names for r in res.records[:3]] == [["green spoon", "red cup"], ["red cup", "green knife"],
                                                         ["red cup", "green fork"]]
    instead = [e["data"].get("read_otherwise") for e in res.events if e["kind"] == "ground" and "seen" in e["data"]]
    assert instead[:3] == [None, ["green knife"], ["green fork"]]
    assert res.records[2].goal["object"] == "green fork"


def test_with_the_oracle_over_the_sim_a_premature_done_is_rejected_by_the_checker():
    env = make_env("table_clear")
    env.reset(seed=HELDOUT_SEEDS[3])
    oracle = OracleBackend(env)

    class EarlyDoneBackendForTest:
        """Says done at once, then plans like the oracle."""

        name, model_id = "early-done-for-test", "early"
        image_size = oracle.image_size

        def __init__(self) -> None:
            self.first = True

        def next_step(self, frame, instruction, history, options=None):
            if self.first:
                self.first = False
                return PlanStep(index=len(history), text="done", is_final=True)
            return oracle.next_step(frame, instruction, history, options)

        def close(self) -> None:
            pass

    steps: list[str] = []
    res = GuidanceLoop(EarlyDoneBackendForTest(), env.unwrapped.instruction, SimExecutor(env),
                       LoopConfig(keep_images=False), on_step=lambda rec: steps.append(rec.outcome)).run()
    env.close()
    assert res.status == PlanStatus.SUCCEEDED, res.stop_reason
    assert steps[0] == "final_rejected" and steps[-1] == "final" and set(steps[1:-1]) == {"done"}
    assert res.replans == 1 and res.attempts == len(steps) - 2


def test_resize_frame_and_the_model_input_size():
    from planner.loop import resize_frame

    frame = Frame(np.arange(8 * 8 * 3, dtype=np.uint8).reshape(8, 8, 3), stamp=2.5, frame_id="cam")
    assert resize_frame(frame, (8, 8)) is frame
    small = resize_frame(frame, (4, 6))
    assert small.image.shape == (4, 6, 3) and small.stamp == 2.5 and small.frame_id == "cam"
    assert resize_frame(frame, (1, 1)).image.shape == (1, 1, 3)
    for size in [(0, 4), (4, 0), (-1, 4)]:
        with pytest.raises(ValueError, match=rf"image size must be positive, got {size[0]}x{size[1]}"):
            resize_frame(frame, size)
    # the backend gets frames at its image_size (h, w); LoopConfig.frame_size overrides it
    shapes: list[tuple] = []

    class SizedBackendForTest(ScriptBackendForTest):
        image_size = (4, 6)

        def next_step(self, frame, instruction, history, options=None):
            shapes.append(frame.image.shape)
            return super().next_step(frame, instruction, history, options)

    GuidanceLoop(SizedBackendForTest(["pick up the red cup", DONE]), "clear the table", ExecutorForTest()).run()
    GuidanceLoop(SizedBackendForTest([DONE]), "clear the table", ExecutorForTest(), LoopConfig(frame_size=(2, 3))).run()
    assert shapes == [(4, 6, 3), (4, 6, 3), (2, 3, 3)]


def test_goals_carry_their_step_index_frame_stamp_and_an_id():
    _, res, _, _ = _run(PICK_PLACE)
    goals = [s.goal for s in res.plan.steps[:2]]
    assert [(g.step_index, g.stamp) for g in goals] == [(0, 1.0), (1, 2.0)]
    assert all(len(g.goal_id) == 32 for g in goals) and goals[0].goal_id != goals[1].goal_id
    assert res.records[-1].latency_ms["planner"] == 0.0  # a final step is not parsed
    assert all(0.0 <= r.latency_ms["planner"] < 60_000 for r in res.records[:2])
    # the sentence "done" without the final mark: an UNKNOWN goal stamped like any other
    backend = ScriptBackendForTest(["x"])
    backend.next_step = lambda frame, instruction, history, options=None: PlanStep(index=len(history), text="done")
    res = GuidanceLoop(backend, "clear the table", ExecutorForTest(), LoopConfig(monitor=MonitorConfig(max_replans=0))).run()
    g = res.plan.steps[0].goal
    assert (g.verb, g.status, g.step_index, g.stamp) == ("done", GoalStatus.UNKNOWN, 0, 1.0) and g.goal_id


class GroundTruthForTest:
    """The simulator's plan for evaluation: step k done after k confirmed executions."""

    camera = None

    def __init__(self, texts: list[str], images: list[np.ndarray], executor: ExecutorForTest) -> None:
        from planner.parse import parse

        self.texts, self.images, self.executor = texts, images, executor
        self.goals = [parse(t).to_goal() for t in texts]

    def steps_done(self) -> int:
        return len(self.executor.done)

    def step(self, k: int):
        if k >= len(self.texts):
            return None
        return PlanStep(index=k, text=self.texts[k], goal=self.goals[k])

    def image(self, k: int):
        return self.images[k] if k < len(self.images) else None

    def grounding_error_m(self, name, info):
        return None


def _square(x: int) -> np.ndarray:
    img = np.full((32, 32, 3), 200, np.uint8)
    img[10:16, x:x + 6] = (220, 30, 30)
    return img


class ImageBackendForTest(ScriptBackendForTest):
    """The scripted backend, with a subgoal image (a red square at x=4) on every step."""

    def next_step(self, frame, instruction, history, options=None):
        step = super().next_step(frame, instruction, history, options)
        if not step.is_final:
            step.subgoal_image = _square(4)
        return step


def test_evaluation_against_the_ground_truth_never_decides():
    ex = ExecutorForTest()
    gt = GroundTruthForTest(["pick up the red cup", "place the red cup in the bin"], [_square(4), _square(10)], ex)
    backend = ImageBackendForTest(["pick up the red cup", "place it in the rack", DONE])
    res = GuidanceLoop(backend, "clear the table", ex, LoopConfig(keep_images=False), ground_truth=gt).run()
    assert res.status == PlanStatus.SUCCEEDED
    r0, r1, r2 = res.records
    assert [r.gt_index for r in res.records] == [0, 1, 2]
    assert (r0.text_exact, r0.goal_correct, r0.gt_text) == (True, True, "pick up the red cup")
    assert r0.gt_goal["verb"] == "pick" and r0.subgoal_psnr == 100.0 and r0.subgoal_pos_error_px == 0.0
    assert (r1.text_exact, r1.goal_correct) == (False, False)  # rack, not the bin: wrong, and still executed
    assert r1.subgoal_psnr < 100.0 and r1.subgoal_pos_error_px == pytest.approx(6.0, abs=0.5)
    assert r1.subgoal_pos_error_m is None  # no camera model
    assert (r2.text_exact, r2.goal_correct, r2.gt_text) == (True, True, None)  # done when the plan is over
    # a final step before the plan is over is a wrong final; without ground truth nothing is judged
    ex = ExecutorForTest()
    gt = GroundTruthForTest(["pick up the red cup"], [], ex)
    res = GuidanceLoop(ScriptBackendForTest([DONE]), "clear the table", ex, ground_truth=gt).run()
    assert (res.records[0].text_exact, res.records[0].goal_correct) == (False, False)
    _, res, _, _ = _run(PICK_PLACE)
    assert all(r.text_exact is None and r.goal_correct is None and r.gt_index is None for r in res.records)


class CountingObjectsForTest:
    """A detector whose class list grows after the first frame; counts its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def objects_for(self, frame):
        self.calls += 1
        known = ("red cup", "blue bowl", "rack") if self.calls == 1 else ("red cup", "blue bowl", "rack", "green block")
        return ObjectsInView(frame.stamp, known=known, names=("red cup", "blue bowl"))


@pytest.mark.parametrize("grounded", [True, False])
def test_the_gate_reuses_the_detection_of_the_planned_frame(grounded):
    from planner.safety import SafetyConfig, SafetyGate

    objects = CountingObjectsForTest()
    backend = ScriptBackendForTest(["pick up the red cup", "place it in the rack", DONE])
    res = GuidanceLoop(backend, "clear the table", ExecutorForTest(),
                       LoopConfig(grounded_decoding=grounded), objects=objects,
                       gate=SafetyGate(SafetyConfig(vocabulary=("rack",)))).run()
    assert res.status == PlanStatus.SUCCEEDED
    assert objects.calls == (3 if grounded else 2)  # once per planned frame (the final step is not gated)
    if grounded:  # a detector whose class list changes: the new names become known
        assert backend.calls[0][1].known_names == ("red cup", "blue bowl", "rack")
        assert backend.calls[1][1].known_names == ("red cup", "blue bowl", "rack", "green block")


def test_events_name_each_decision():
    _, res, _, _ = _run([DONE, "pick up the red cup", DONE], ExecutorForTest(verdicts=[False, True]),
                        MonitorConfig(max_replans=1))
    ev = [(e["kind"], e["why"]) for e in res.events]
    assert ("replan", "the model says done but the executor's task check disagrees") in ev
    assert ("parse", "parsed") in ev
    assert ev[-1] == ("final", "the model says done and the executor agrees")
    assert [k for k, _ in ev if k in ("plan", "final", "replan")] == ["plan", "replan", "plan", "plan", "final"]


class SlowObjectsForTest:
    """A detector that takes 0.2 s (of a test clock) on its first frame."""

    def __init__(self, clock: list[float]) -> None:
        self.calls, self.clock = 0, clock

    def objects_for(self, frame):
        self.calls += 1
        if self.calls == 1:
            self.clock[0] += 0.2
        return ObjectsInView(frame.stamp, known=("red cup", "rack"), names=("red cup",))


def test_detection_time_is_part_of_the_planning_latency(monkeypatch):
    import planner.loop

    clock = [1000.0]  # the loop's perf_counter only moves while the detector runs
    monkeypatch.setattr(planner.loop.time, "perf_counter", lambda: clock[0])
    res = GuidanceLoop(ScriptBackendForTest(["pick up the red cup", DONE]), "clear the table", ExecutorForTest(),
                       LoopConfig(grounded_decoding=True), objects=SlowObjectsForTest(clock)).run()
    first = res.records[0].latency_ms
    assert first["detect"] == pytest.approx(200.0)  # milliseconds
    assert first["total"] == first["detect"]  # the scripted model reports no time of its own
    assert res.records[1].latency_ms["detect"] == 0.0
    assert all(r.latency_ms["total"] >= r.latency_ms["detect"] for r in res.records)


class GrounderForTest:
    """Locates every object at one pixel and leaves the goal as parsed."""

    class InfoForTest:
        def to_dict(self):
            return {"object_pixel": [3.0, 4.0]}

    def __init__(self) -> None:
        self.calls = 0

    def ground(self, parsed, goal, frame, subgoal_image):
        self.calls += 1
        return goal, self.InfoForTest()


def test_grounding_is_recorded_and_counts_as_perception_for_the_gate():
    from planner.safety import SafetyConfig, SafetyGate

    grounder = GrounderForTest()
    # the detector sees nothing; the grounder located the cup; the rack is configured
    gate = SafetyGate(SafetyConfig(vocabulary=("rack",)))
    ex = ExecutorForTest()
    res = GuidanceLoop(ScriptBackendForTest(["pick up the red cup", "place it in the rack", DONE]), "clear the table",
                       ex, grounder=grounder, gate=gate).run()
    assert res.status == PlanStatus.SUCCEEDED, res.stop_reason
    assert [r.grounding for r in res.records] == [{"object_pixel": [3.0, 4.0]}] * 2 + [{}]
    assert grounder.calls == 2 and [e[0] for e in ex.executed] == ["pick", "place"]
    assert gate.stats()["passed"] == 2


def test_gate_hold_time_is_the_gate_latency():
    from planner.safety import SafetyConfig, SafetyGate

    gate = SafetyGate(SafetyConfig(vocabulary=("red cup", "rack"), max_goal_rate_hz=5.0))  # 0.2 s apart
    res = GuidanceLoop(ScriptBackendForTest(["pick up the red cup", "place it in the rack", DONE]), "clear the table",
                       ExecutorForTest(), gate=gate).run()
    assert res.status == PlanStatus.SUCCEEDED
    assert res.records[0].latency_ms["gate"] < 100.0
    assert 100.0 < res.records[1].latency_ms["gate"] < 5000.0  # held for the rate limit, in milliseconds


def test_no_subgoal_metric_without_a_ground_truth_image():
    ex = ExecutorForTest()
    gt = GroundTruthForTest(["pick up the red cup"], [], ex)
    res = GuidanceLoop(ImageBackendForTest(["pick up the red cup", DONE]), "clear the table", ex, ground_truth=gt).run()
    assert res.status == PlanStatus.SUCCEEDED and res.records[0].goal_correct is True
    assert res.records[0].subgoal_psnr is None and res.records[0].subgoal_pos_error_px is None


class GripperHidesItObjectsForTest:
    """Sees the red cup on the first frame only: once picked, the gripper hides it."""

    def objects_for(self, frame):
        names = ("red cup",) if frame.stamp <= 1.0 else ()
        return ObjectsInView(frame.stamp, known=("red cup", "blue bowl"), names=names)


def test_the_gate_counts_the_held_object_as_perceived():
    from planner.safety import SafetyConfig, SafetyGate

    gate = SafetyGate(SafetyConfig(vocabulary=("rack",)))
    ex = ExecutorForTest()
    res = GuidanceLoop(ScriptBackendForTest(["pick up the red cup", "place it in the rack", DONE]), "clear the table",
                       ex, LoopConfig(monitor=MonitorConfig(max_replans=0)), objects=GripperHidesItObjectsForTest(),
                       gate=gate).run()
    assert res.status == PlanStatus.SUCCEEDED, res.stop_reason
    assert ex.executed == [("pick", "red cup", None, 0), ("place", "red cup", "rack", 1)]
    assert gate.stats()["passed"] == 2 and gate.stats()["rejected"] == 0
    # a name neither seen, located, configured nor held is still rejected
    ex = ExecutorForTest()
    res = GuidanceLoop(ScriptBackendForTest(["pick up the red cup", "pick up the blue bowl"]), "clear the table",
                       ex, LoopConfig(monitor=MonitorConfig(max_replans=0)), objects=GripperHidesItObjectsForTest(),
                       gate=SafetyGate(SafetyConfig(vocabulary=("rack",)))).run()
    assert res.status == PlanStatus.FAILED and [e[1] for e in ex.executed] == ["red cup"]
    assert res.records[1].reason.startswith("goal unknown: safety gate: object 'blue bowl' is not grounded")
    gates = [e for e in res.events if e["kind"] == "gate"]
    assert gates[-1]["data"]["check"] == "object" and "blue bowl" in gates[-1]["why"]
