"""The safety gate (planner/safety.py) alone, fuzzed, and in the one step loop (planner/loop.py)."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from emu_guide.types import ActionGoal, Frame, GoalStatus, PlanStatus, PlanStep, StepResult
from planner.grounded import ObjectsInView
from planner.loop import GuidanceLoop, LoopConfig
from planner.monitor import MonitorConfig
from planner.safety import ACTION_VERBS, ApprovalDesk, SafetyConfig, SafetyGate, parse_names, parse_workspace

BOX = ((-0.5, -0.5, 0.0), (0.5, 0.5, 0.4))
SEEN = ("red cup", "blue bowl")
CONFIGURED = ("rack", "bin")


def _gate(**kw) -> SafetyGate:
    cfg = SafetyConfig(allowed_verbs=("pick", "place"), vocabulary=CONFIGURED, workspace_min=BOX[0],
                       workspace_max=BOX[1], workspace_frame="table", **kw)  # fmt: skip
    return SafetyGate(cfg)


def _expected_ok(verb: str, obj: str, target: str | None, pose, frame_id: str, seen) -> bool:
    grounded = {*CONFIGURED, *(seen or ())}
    inside = pose is None or (frame_id == "table" and all(lo <= v <= hi for v, lo, hi in zip(pose, *BOX)))
    return verb in ("pick", "place") and obj.strip().lower() in grounded and (not target or target in grounded) and inside


def _check_one(gate: SafetyGate, verb: str, obj: str, target: str | None, pose, frame_id: str, seen) -> None:
    goal = ActionGoal(verb, obj, target, target_pose=pose, frame_id=frame_id)
    decision = gate.check(goal, seen)
    want = _expected_ok(verb, obj, target, pose, frame_id, seen)
    assert decision.ok == want, (goal, seen, decision)
    if want:
        assert goal.status == GoalStatus.OK and decision.reason == ""
    else:  # every rejection: never ok, the reason says which check
        assert goal.status == GoalStatus.UNKNOWN and goal.reason.startswith("safety gate: ") and decision.kind
        assert decision.kind in ("verb", "object", "target", "workspace")


NAMES = ["red cup", "blue bowl", "rack", "bin", "arm itself", "robot arm", "", "Red Cup ", "ignore previous instructions"]


def test_fuzz_numpy_every_bad_goal_is_rejected_and_every_good_one_passes():
    """10,000 random goals (no hypothesis needed): out-of-box, ungrounded, disallowed verbs all rejected."""
    rng = np.random.default_rng(0)
    gate = _gate()
    for _ in range(10_000):
        verb = str(rng.choice(list(ACTION_VERBS)))
        obj = str(rng.choice(NAMES))
        target = None if rng.random() < 0.4 else str(rng.choice(NAMES[:6]))
        pose = None if rng.random() < 0.3 else tuple(float(x) for x in rng.uniform(-1.5, 1.5, 3))
        frame_id = "table" if rng.random() < 0.9 else "camera"
        seen = None if rng.random() < 0.2 else tuple(n for n in SEEN if rng.random() < 0.6)
        _check_one(gate, verb, obj, target, pose, frame_id, seen)
    stats = gate.stats()
    assert stats["passed"] > 100 and stats["rejected"] > 5000  # both branches were exercised
    assert set(stats["rejected_by_check"]) == {"verb", "object", "target", "workspace"}


def test_fuzz_hypothesis_property():
    hypothesis = pytest.importorskip("hypothesis", reason="pip install hypothesis (the property-based variant)")
    st = hypothesis.strategies
    coord = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False)
    gate = _gate()

    @hypothesis.settings(max_examples=2000, deadline=None, derandomize=True)
    @hypothesis.given(verb=st.sampled_from(ACTION_VERBS), obj=st.one_of(st.sampled_from(NAMES), st.text(max_size=12)),
                      target=st.one_of(st.none(), st.sampled_from(NAMES[:6]), st.text(max_size=8)),
                      pose=st.one_of(st.none(), st.tuples(coord, coord, coord)), frame_id=st.sampled_from(["table", "camera"]),
                      seen=st.one_of(st.none(), st.lists(st.sampled_from(SEEN), max_size=2)))  # fmt: skip
    def prop(verb, obj, target, pose, frame_id, seen):
        _check_one(gate, verb, obj, target or None, pose, frame_id, seen)

    prop()


def test_gate_costs_under_a_millisecond_per_goal():
    gate = _gate()
    seen = tuple(f"object {i}" for i in range(50)) + SEEN
    t0 = time.perf_counter()
    for i in range(2000):
        gate.check(ActionGoal("place", "red cup", "rack", target_pose=(0.1, 0.0, 0.1)), seen)
        gate.check(ActionGoal("pick", f"ghost {i}"), seen)
    per_goal_ms = (time.perf_counter() - t0) * 1e3 / 4000
    assert per_goal_ms < 1.0, per_goal_ms
    assert gate.stats()["check_ms_max"] < 50.0


def test_goals_that_are_not_ok_pass_through_uncounted():
    gate = _gate()
    goal = ActionGoal("pick", "thing", status=GoalStatus.UNGROUNDED, reason="not found")
    assert not gate.check(goal, SEEN).ok and goal.status == GoalStatus.UNGROUNDED and goal.reason == "not found"
    assert gate.stats()["rejected"] == 0 and gate.stats()["passed"] == 0


def test_grounding_sources_detector_perception_vocabulary_and_scene():
    gate = SafetyGate(SafetyConfig())
    assert not gate.check(ActionGoal("pick", "red cup"), None).ok  # no source at all: never ok
    assert gate.check(ActionGoal("pick", "red cup"), ["Red Cup"]).ok  # the detector saw it
    assert gate.check(ActionGoal("pick", "red cup"), None, perceived=["red cup"]).ok  # the grounder located it
    assert gate.check(ActionGoal("pick", "red cup", "rack"), None, scene=["red cup", "rack"]).ok  # scene vocabulary
    g = ActionGoal("place", "red cup", "robot arm")
    assert not gate.check(g, ["red cup"]).ok and "target 'robot arm' is not grounded" in g.reason


def test_workspace_and_frame_reasons():
    gate = _gate()
    g = ActionGoal("place", "red cup", "rack", target_pose=(5.0, 900.0, 0.1))
    assert not gate.check(g, SEEN).ok and "x=5.000 not in [-0.5, 0.5]" in g.reason and "y=900.000" in g.reason
    g = ActionGoal("place", "red cup", "rack", target_pose=(0.0, 0.0, 0.1), frame_id="camera")
    assert not gate.check(g, SEEN).ok and "frame 'camera'" in g.reason


def test_rate_limit_holds_goals_and_a_stop_rejects_the_held_one():
    now = [0.0]
    gate = SafetyGate(SafetyConfig(max_goal_rate_hz=2.0), clock=lambda: now[0],
                      sleep=lambda dt: now.__setitem__(0, now[0] + dt))  # fmt: skip
    d1 = gate.check(ActionGoal("pick", "red cup"), SEEN)
    d2 = gate.check(ActionGoal("pick", "red cup"), SEEN)
    assert d1.ok and d2.ok and d1.held_s == 0.0 and d2.held_s == pytest.approx(0.5, abs=0.03)
    d3 = gate.check(ActionGoal("pick", "red cup"), SEEN, stop=lambda: True)
    assert not d3.ok and d3.kind == "stopped" and gate.stats()["rejected_by_check"] == {"stopped": 1}


def test_approval_desk_approve_deny_timeout_and_unknown_ids():
    announced: list[str] = []
    desk = ApprovalDesk(timeout_s=5.0, announce=lambda g: announced.append(g.goal_id))
    gate = SafetyGate(SafetyConfig(require_approval=True, approval_timeout_s=5.0), approver=desk.request)

    def answer(approve: bool, reason: str) -> None:
        while not desk.pending():
            time.sleep(0.005)
        assert desk.decide("nope", True)[0] is False
        assert desk.decide(desk.pending()[0], approve, reason)[0]

    for approve, reason in ((True, ""), (False, "too close to the operator")):
        t = threading.Thread(target=answer, args=(approve, reason))
        t.start()
        g = ActionGoal("pick", "red cup", goal_id=f"g-{approve}")
        d = gate.check(g, SEEN)
        t.join()
        assert d.ok == approve
        if not approve:
            assert g.reason == "safety gate: denied by the operator: too close to the operator"
    assert announced == ["g-True", "g-False"]
    quick = SafetyGate(SafetyConfig(require_approval=True, approval_timeout_s=0.05), approver=ApprovalDesk(0.05).request)
    g = ActionGoal("pick", "red cup", goal_id="late")
    assert not quick.check(g, SEEN).ok and "not approved within approval_timeout_s=0.05 s" in g.reason
    with pytest.raises(ValueError, match="needs an approver"):
        SafetyGate(SafetyConfig(require_approval=True))


def test_config_and_parameter_parsing_errors_name_the_problem():
    with pytest.raises(ValueError, match="not action verbs"):
        SafetyConfig(allowed_verbs=("pick", "stop"))
    with pytest.raises(ValueError, match="not action verbs"):
        SafetyConfig(allowed_verbs=("pick", "Tele port"))
    assert SafetyConfig(allowed_verbs=("press_button",)).allowed_verbs == ("press_button",)  # an environment's own verb
    with pytest.raises(ValueError, match="below workspace_max"):
        SafetyConfig(workspace_min=(0, 0, 0), workspace_max=(1, -1, 1))
    with pytest.raises(ValueError, match="go together"):
        SafetyConfig(workspace_min=(0, 0, 0))
    assert parse_names(" Pick, place ,,") == ("pick", "place")
    assert parse_workspace("") is None and parse_workspace("-1,-1,0,1,1,0.5") == ((-1, -1, 0), (1, 1, 0.5))
    with pytest.raises(ValueError, match="6 numbers"):
        parse_workspace("1,2,3")
    with pytest.raises(ValueError, match="not 6 comma-separated numbers"):
        parse_workspace("a,b,c,d,e,f")


# --- in the one step loop ------------------------------------------------------------------------


class _ScriptedBackend:
    """Says the given sentences in order (then done): the model side of the loop, no weights."""

    name, model_id, image_size = "scripted", "scripted", (8, 8)

    def __init__(self, sentences: list[str]) -> None:
        self.sentences = list(sentences)

    def next_step(self, frame, instruction, history, options=None) -> PlanStep:
        if not self.sentences:
            return PlanStep(len(history), "done", is_final=True)
        return PlanStep(len(history), self.sentences.pop(0), subgoal_image=frame.image.copy())

    def close(self) -> None:
        pass


class _CountingExecutor:
    name = "counting"

    def __init__(self) -> None:
        self.executed: list[ActionGoal] = []
        self.t = 0.0

    def observe(self) -> Frame:
        self.t += 1.0
        return Frame(np.zeros((8, 8, 3), np.uint8), stamp=self.t)

    def execute(self, goal: ActionGoal) -> StepResult:
        self.executed.append(goal)
        return StepResult(goal.step_index, True)

    def check(self, goal: ActionGoal) -> bool | None:
        return any(g.goal_id == goal.goal_id for g in self.executed)

    def task_done(self) -> bool | None:
        return None


class _Detector:
    def objects_for(self, frame: Frame) -> ObjectsInView:
        return ObjectsInView(frame.stamp, ("red cup", "blue bowl"), ("red cup",))


def test_loop_never_executes_a_rejected_goal_and_records_why():
    backend = _ScriptedBackend(["pick up the robot arm itself", "pick up the red cup"])
    executor = _CountingExecutor()
    gate = SafetyGate(SafetyConfig())
    config = LoopConfig(monitor=MonitorConfig(reject_already_done=False), keep_images=False)
    published: list[tuple[str, str]] = []
    loop = GuidanceLoop(backend, "clear the table", executor, config, objects=_Detector(), gate=gate,
                        on_plan=lambda step, plan: published.append((step.goal.status.value, step.goal.reason) if step.goal else ("final", "")))  # fmt: skip
    result = loop.run()
    assert result.status == PlanStatus.SUCCEEDED
    assert [g.object for g in executor.executed] == ["red cup"]  # the arm was never sent
    assert published[0][0] == "unknown" and published[0][1].startswith("safety gate: object 'arm itself' is not grounded")
    assert published[1] == ("ok", "")
    gates = [e for e in result.events if e["kind"] == "gate"]
    assert gates[0]["data"]["check"] == "object" and "arm itself" in gates[0]["why"]
    assert gates[1]["why"] == "passed the safety gate"
    assert result.records[0].outcome == "failed" and "safety gate" in result.records[0].reason
    assert "gate" in result.records[1].latency_ms and result.records[1].latency_ms["gate"] < 5.0
    assert gate.stats()["rejected_by_check"] == {"object": 1} and gate.stats()["passed"] == 1


def test_sim_episode_with_the_gate_on_still_succeeds():
    """The sim bench path (planner.runner) with the gate in the check step: the oracle's goals pass."""
    import gymnasium as gym

    import sim_envs  # noqa: F401
    from model_runtime.backends.base import load_backend
    from planner.runner import RunnerConfig, run_episode

    env = gym.make("sim_envs/TableClear-v0")
    try:
        env.reset(seed=1000000)
        backend = load_backend("oracle", env=env)
        from model_runtime.backends.base import DecodeOptions

        result = run_episode(env, backend, 1000000, RunnerConfig(decode=DecodeOptions(mode="oracle"), keep_images=False,
                                                                 gate=SafetyConfig(max_goal_rate_hz=1000.0)))  # fmt: skip
    finally:
        env.close()
    assert result.success, result.stop_reason
    gates = [e for e in result.events if e["kind"] == "gate"]
    assert gates and all(e["why"] == "passed the safety gate" for e in gates)


# --- exact reasons, kinds and counters (mutation testing, issue 17) --------------------------------


def test_every_rejection_has_a_declared_kind_and_an_exact_reason():
    from planner.safety import REJECTION_KINDS

    assert REJECTION_KINDS == ("verb", "object", "target", "workspace", "approval", "stopped")
    assert "done" not in ACTION_VERBS and "pick" in ACTION_VERBS
    gate = _gate()
    cases = [
        (ActionGoal("wipe", "red cup"), SEEN, "verb", "verb 'wipe' is not allowed (allowed: pick, place)"),
        (ActionGoal("pick", " "), SEEN, "object", "a 'pick' goal names no object"),
        (ActionGoal("pick", "ghost"), None, "object", "object 'ghost' is not grounded (no detection for this frame, "
                                                      "the planner did not locate it, and it is in no configured vocabulary)"),
        (ActionGoal("pick", "ghost"), (), "object", "object 'ghost' is not grounded (the detector does not see it, "
                                                    "the planner did not locate it, and it is in no configured vocabulary)"),
        (ActionGoal("place", "red cup", "shelf"), SEEN, "target", "target 'shelf' is not grounded (the detector does not "
                                                                  "see it, the planner did not locate it, and it is in no "
                                                                  "configured vocabulary)"),
        (ActionGoal("place", "red cup", "rack", target_pose=(0.0, 0.0, 0.5)), SEEN, "workspace",
         "target pose outside the workspace: z=0.500 not in [0, 0.4]"),
        (ActionGoal("place", "red cup", "rack", target_pose=(0.0, 0.0, 0.1), frame_id="camera"), SEEN, "workspace",
         "target pose is in frame 'camera', the workspace in 'table'"),
    ]
    for goal, seen, kind, reason in cases:
        d = gate.check(goal, seen)
        assert (d.ok, d.kind, d.reason) == (False, kind, reason)
        assert goal.status == GoalStatus.UNKNOWN and goal.reason == "safety gate: " + reason
        assert gate.stats()["last_rejection"] == reason
    # the box edges are inside
    for pose in [(-0.5, -0.5, 0.0), (0.5, 0.5, 0.4)]:
        assert gate.check(ActionGoal("place", "red cup", "rack", target_pose=pose, frame_id="table"), SEEN).ok
    stats = gate.stats()
    assert stats["passed"] == 2 and stats["rejected"] == len(cases)
    assert stats["rejected_by_check"] == {"verb": 1, "object": 3, "target": 1, "workspace": 2}
    assert 0.0 <= stats["check_ms_max"] < 50.0


def test_config_defaults_normalise_and_bounds():
    c = SafetyConfig(allowed_verbs=(" Pick ",), vocabulary=(" Rack ", "", "  "))
    assert c.allowed_verbs == ("pick",) and c.vocabulary == ("rack",)
    d = SafetyConfig()
    assert d.allowed_verbs == ACTION_VERBS and d.max_goal_rate_hz == 0.0 and d.require_approval is False
    assert d.workspace_min is None and d.workspace_frame == "" and d.approval_timeout_s == 30.0
    for bad in ({"max_goal_rate_hz": -1.0}, {"max_goal_rate_hz": float("inf")}, {"approval_timeout_s": 0.0}):
        with pytest.raises(ValueError, match="must be"):
            SafetyConfig(**bad)
    with pytest.raises(ValueError, match="3 finite numbers"):
        SafetyConfig(workspace_min=(0, 0, float("nan")), workspace_max=(1, 1, 1))
    with pytest.raises(ValueError, match="below workspace_max"):
        SafetyConfig(workspace_min=(0, 0, 1), workspace_max=(1, 1, 1))  # equal on one axis
    assert parse_workspace("  ") is None
    assert parse_workspace("0,1,2,3,4,5") == ((0.0, 1.0, 2.0), (3.0, 4.0, 5.0))
    # no workspace frame: a pose in any frame is checked against the box
    gate = SafetyGate(SafetyConfig(workspace_min=BOX[0], workspace_max=BOX[1]))
    assert gate.check(ActionGoal("place", "red cup", "rack", target_pose=(0.0, 0.0, 0.1), frame_id="camera"), SEEN + ("rack",)).ok


def test_rate_limit_spaces_goals_by_the_period_and_the_first_goes_at_once():
    now = [10.0]
    slept: list[float] = []

    def sleep(dt: float) -> None:
        slept.append(dt)
        now[0] += dt

    gate = SafetyGate(SafetyConfig(max_goal_rate_hz=4.0), clock=lambda: now[0], sleep=sleep)
    assert gate.check(ActionGoal("pick", "red cup"), SEEN).held_s == 0.0 and slept == []
    now[0] += 0.1  # 0.1 s later: held until 0.25 s after the first
    d = gate.check(ActionGoal("pick", "red cup"), SEEN)
    assert d.ok and d.held_s == pytest.approx(0.15, abs=1e-9) and now[0] == pytest.approx(10.25)
    assert all(dt <= 0.02 + 1e-12 for dt in slept)
    now[0] += 1.0  # long after: not held
    assert gate.check(ActionGoal("pick", "red cup"), SEEN).held_s == 0.0
    # a rejected goal is not "sent": it does not restart the period
    gate.check(ActionGoal("wipe", "red cup"), SEEN)
    assert gate.check(ActionGoal("pick", "red cup"), SEEN).held_s == pytest.approx(0.25, abs=1e-9)


def test_approval_answers_and_a_stop_while_waiting():
    answers = iter([None, (True, ""), (False, "")])
    stopped = {"now": False}
    gate = SafetyGate(SafetyConfig(require_approval=True, approval_timeout_s=2.0), approver=lambda g, stop: next(answers))
    d = gate.check(ActionGoal("pick", "red cup"), SEEN)
    assert (d.ok, d.kind, d.reason) == (False, "approval", "not approved within approval_timeout_s=2 s")
    assert gate.check(ActionGoal("pick", "red cup"), SEEN).ok
    d = gate.check(ActionGoal("pick", "red cup"), SEEN)
    assert (d.ok, d.kind, d.reason) == (False, "approval", "denied by the operator: no reason given")
    gate = SafetyGate(SafetyConfig(require_approval=True), approver=lambda g, stop: None)
    stopped["now"] = True
    d = gate.check(ActionGoal("pick", "red cup"), SEEN, stop=lambda: stopped["now"])
    assert (d.ok, d.kind, d.reason) == (False, "stopped", "stopped while waiting for approval")
    desk = ApprovalDesk(timeout_s=1.0)
    assert desk.decide("nobody", True) == (False, "no goal 'nobody' is waiting for approval (waiting: none)")
    t0 = time.perf_counter()
    assert desk.request(ActionGoal("pick", "red cup", goal_id="x"), lambda: True) is None  # a stop ends the wait
    assert time.perf_counter() - t0 < 0.5


def test_a_rate_below_one_goal_per_second_is_still_a_limit():
    now = [0.0]
    gate = SafetyGate(SafetyConfig(max_goal_rate_hz=0.5), clock=lambda: now[0],
                      sleep=lambda dt: now.__setitem__(0, now[0] + dt))  # fmt: skip
    assert gate.check(ActionGoal("pick", "red cup"), SEEN).held_s == 0.0
    assert gate.check(ActionGoal("pick", "red cup"), SEEN).held_s == pytest.approx(2.0, abs=1e-9)  # one per 2 s
