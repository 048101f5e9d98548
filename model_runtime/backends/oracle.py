"""The oracle backend: plan steps read from the simulator's privileged state (no model).

It answers ``next_step`` exactly like a model backend (a sentence, a subgoal image, a goal) but
takes them from ``env.unwrapped``: how many ground-truth steps the current state satisfies
(``steps_done()``), the ground-truth plan and its subgoal images. It is the planner's upper bound
(the closed loop with a perfect planner measures the parser, grounding and executor alone) and a
test aid (a known-correct step stream).

Where the subgoal image comes from (``replan``):

- ``"current"`` (default): re-derived from the CURRENT state: the next ground-truth step is
  simulated on a copy of the environment and the copy's camera image is the subgoal. When that
  step cannot run from the current state (a place whose object was dropped by a failed skill),
  the oracle first re-issues the ground-truth pick of that object. So re-planning after any
  failure gives a correct next step and an exact subgoal image.
- ``"reset"``: the ground-truth plan's subgoal images from the episode's reset state (cheapest;
  exact only while everything goes to plan).
"""

from __future__ import annotations

import copy
import time
from typing import Any

import numpy as np

from emu_guide.types import DecodeMode, Frame, PlanStep
from model_runtime.backends.base import BackendError, DecodeOptions

__all__ = ["OracleBackend"]

_REPLAN_MODES = ("reset", "current")
_MODEL_ONLY_KWARGS = {"model_path", "device", "dtype", "attn_implementation", "num_threads"}


class OracleBackend:
    """``GuidanceBackend`` over a ``sim_envs`` environment's privileged state."""

    name = "oracle"

    def __init__(self, env: Any = None, replan: str = "current", final_text: str = "Task complete.",
                 **unused: Any) -> None:
        if env is None:
            raise BackendError("the oracle backend needs the simulation environment: load_backend('oracle', env=env)")
        if replan not in _REPLAN_MODES:
            raise BackendError(f"oracle backend: replan must be one of {_REPLAN_MODES}, got {replan!r}")
        # Model-only options are accepted and ignored so callers can pass one set of kwargs to any
        # backend; anything else is a mistake worth naming.
        unknown = sorted(set(unused) - _MODEL_ONLY_KWARGS)
        if unknown:
            raise BackendError(f"oracle backend: unknown option(s) {unknown}; it takes env, replan, final_text")
        from emu_guide.env_protocol import REQUIRED, EnvProtocolError, guidance_env

        self.env = env
        needs = (*REQUIRED, "steps_done", "ground_truth_plan", "subgoal_images", "camera")
        try:
            self.sim = guidance_env(env, required=needs)  # the env, a wrapper or env.unwrapped
        except EnvProtocolError as exc:
            raise BackendError(f"oracle backend: {exc}") from None
        self.copyable = True  # False once a deep copy failed: subgoals then come from the reset plan
        self.replan = replan
        self.final_text = final_text
        self.model_id = f"oracle:{getattr(self.sim, 'task_name', type(self.sim).__name__)}({replan})"
        self.rederived = 0  # steps whose subgoal came from a re-derived plan (not the reset plan's)

    @property
    def image_size(self) -> tuple[int, int]:
        cam = self.sim.camera
        return int(cam.height), int(cam.width)

    def reset(self) -> None:
        """Nothing is cached across calls; kept so runners can call it on every backend."""
        self.rederived = 0

    # -- plan from the current state ------------------------------------------------------------
    def _simulate(self, steps: list[PlanStep]) -> np.ndarray | None:
        """Run ``steps`` on a deep copy of the env; the copy's image after the last, or None on failure."""
        shadow = copy.deepcopy(self.sim)  # TypeError etc. for envs that cannot be copied (MuJoCo): see next_step
        for st in steps:
            result = shadow.execute_skill(st.goal)
            if not result.success:
                return None
        return shadow.render()

    def _next_from_current(self, plan: list[PlanStep], done: int) -> tuple[PlanStep, np.ndarray]:
        step = plan[done]
        image = self._simulate([step])
        if image is not None:
            return step, image
        # The step cannot run from here: typically a place whose object is no longer held. Re-issue
        # the ground-truth pick of that object (same phrasing as the plan), then the step itself.
        if step.goal is not None and step.goal.verb in ("place", "stack"):
            picks = [s for s in plan[:done] if s.goal is not None and s.goal.verb == "pick"
                     and s.goal.object == step.goal.object]
            if picks:
                pick = picks[-1]
                image = self._simulate([pick])
                if image is not None:
                    self.rederived += 1
                    return pick, image
        raise BackendError(
            f"oracle backend: ground-truth step {done} ({step.text!r}) cannot run from the current state "
            "and no re-derived step can (the episode went off the task)"
        )

    # -- interface ----------------------------------------------------------------------------
    def next_step(
        self,
        frame: Frame,
        instruction: str,
        history: list[PlanStep],
        options: DecodeOptions | None = None,
    ) -> PlanStep:
        t0 = time.perf_counter()
        if not isinstance(frame, Frame):
            raise BackendError(f"oracle backend: frame must be an emu_guide.types.Frame, got {type(frame).__name__}")
        if (frame.height, frame.width) != self.image_size:
            raise BackendError(
                f"oracle backend: frame is {frame.height}x{frame.width}, the environment renders "
                f"{self.image_size[0]}x{self.image_size[1]}"
            )
        if options is not None and not isinstance(options, DecodeOptions):
            raise BackendError(f"oracle backend: options must be DecodeOptions, got {type(options).__name__}")
        plan = self.sim.ground_truth_plan()
        done = int(self.sim.steps_done())
        t_text = time.perf_counter()
        if done >= len(plan):
            return PlanStep(
                index=len(history),
                text=self.final_text,
                decode_mode=DecodeMode.ORACLE,
                is_final=True,
                timings_ms={"text": (t_text - t0) * 1e3, "image": 0.0, "total": (time.perf_counter() - t0) * 1e3},
            )
        if self.replan == "current" and self.copyable:
            try:
                gt, image = self._next_from_current(plan, done)
            except BackendError:  # the episode went off the task: not a copy problem
                raise
            except (TypeError, copy.Error, NotImplementedError, AttributeError, RuntimeError) as exc:
                # An env that cannot be deep-copied (MuJoCo handles, open files): the reset plan's
                # subgoal images from now on (what replan="plan" does).
                self.copyable = False
                self.copy_error = f"{type(exc).__name__}: {exc}"
                gt, image = plan[done], self.sim.subgoal_images()[done]
        else:
            gt, image = plan[done], self.sim.subgoal_images()[done]
        t_img = time.perf_counter()
        return PlanStep(
            index=len(history),
            text=gt.text,
            subgoal_image=np.asarray(image, dtype=np.uint8),
            goal=gt.goal,
            decode_mode=DecodeMode.ORACLE,
            timings_ms={"text": (t_text - t0) * 1e3, "image": (t_img - t_text) * 1e3, "total": (t_img - t0) * 1e3},
        )

    def close(self) -> None:
        """Nothing to release (the environment belongs to the caller)."""
