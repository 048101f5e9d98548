"""The guidance environment protocol: what the one step loop needs from an environment.

Any Gymnasium environment can be guided once some object in its wrapper chain (the env itself,
a wrapper, or ``env.unwrapped``) offers these members. The first object in the chain that has
``execute_skill`` is used, so an adapter may be a wrapper around someone else's env
(docs/environments.md has a worked example).

Required (the loop cannot run without them):

| member | meaning |
|---|---|
| ``instruction: str`` | this episode's task in words (set by ``reset``) |
| ``render() -> np.ndarray`` | the camera image, HxWx3 uint8 |
| ``execute_skill(goal: ActionGoal) -> StepResult`` | run one structured goal to completion; a goal the env cannot do is a StepResult with success=False (or raises ValueError naming the valid choices) |
| ``object_names() -> list[str]`` | the objects a goal may name in this scene |
| ``target_names() -> list[str]`` | the destinations a goal may name |

Optional (features switch off, and say so, without them):

| member | used for |
|---|---|
| ``task_name: str`` | reports (default: the class name) |
| ``check_step(goal) -> bool`` | the simulator's step checker (else the new frame vs the predicted subgoal decides) |
| ``task_success() -> bool`` | scoring, and the checker's word on a final "done" |
| ``steps_done() / ground_truth_plan() / subgoal_images()`` | step metrics against the ground truth; the oracle backend |
| ``camera: CameraModel`` | grounding positions on the table plane, metric errors |
| ``name_vocabulary() -> list[str]`` | grounded decoding: every object name the task can produce |
| ``skill_verbs() -> dict[str, str]`` | extra verb phrases the planner parses, phrase -> verb ("press": "press", "push down": "press") |
| ``privileged_state() -> dict`` | evaluation of grounding errors |
| ``state_names() -> list[str]`` | ``emu-guide record --env``: names of the low-level observation vector, written as ``observation.state``'s names (the labeller finds gripper and end-effector columns by name) |

This module imports nothing heavy: the planner and the model runtime (the oracle backend) both use it.
"""

from __future__ import annotations

from typing import Any

__all__ = ["OPTIONAL", "REQUIRED", "EnvProtocolError", "guidance_env", "is_import_path", "load_env_factory",
           "missing_members"]

REQUIRED = ("instruction", "render", "execute_skill", "object_names", "target_names")
OPTIONAL = ("task_name", "check_step", "task_success", "steps_done", "ground_truth_plan", "subgoal_images",
            "camera", "name_vocabulary", "skill_verbs", "privileged_state", "state_names")  # fmt: skip


class EnvProtocolError(ValueError):
    """The environment does not offer what the guidance loop needs; the message names the members."""


def _chain(env: Any) -> list[Any]:
    """The env, each wrapper's inner env in turn, then ``unwrapped`` (no object twice)."""
    seen: list[Any] = []
    current = env
    while current is not None and all(current is not s for s in seen):
        seen.append(current)
        current = getattr(current, "env", None)
    unwrapped = getattr(env, "unwrapped", None)
    if unwrapped is not None and all(unwrapped is not s for s in seen):
        seen.append(unwrapped)
    return seen


def missing_members(obj: Any, members: tuple[str, ...] = REQUIRED) -> list[str]:
    return [m for m in members if not hasattr(obj, m)]


def guidance_env(env: Any, required: tuple[str, ...] = REQUIRED) -> Any:
    """The object in ``env``'s wrapper chain that implements the protocol (the first with
    ``execute_skill``); EnvProtocolError naming what is missing otherwise."""
    chain = _chain(env)
    for obj in chain:
        if hasattr(obj, "execute_skill"):
            missing = missing_members(obj, required)
            if missing:
                raise EnvProtocolError(
                    f"{type(obj).__name__} has execute_skill but not {missing}: a guidance environment needs "
                    f"{list(required)} (docs/environments.md)")
            return obj
    names = " -> ".join(type(o).__name__ for o in chain)
    raise EnvProtocolError(
        f"no object in the wrapper chain ({names}) has execute_skill: a guidance environment needs "
        f"{list(required)} (docs/environments.md)")


def is_import_path(task: str) -> bool:
    """Whether ``task`` reads as ``module.path:callable``."""
    module, _, attr = task.partition(":")
    return bool(module and attr) and all(p.isidentifier() for p in module.split(".")) and attr.isidentifier()


def load_env_factory(target: str, resolution: int | None = None) -> Any:
    """Import ``module:callable`` and call it (with ``resolution=`` when given and accepted): what
    ``emu-guide bench/demo --tasks`` and ``emu-guide record --env`` build. ValueError when it cannot load."""
    import importlib
    import inspect

    module, _, attr = target.partition(":")
    try:
        factory = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"cannot load the environment {target!r}: {exc}") from None
    try:
        takes_resolution = "resolution" in inspect.signature(factory).parameters
    except (TypeError, ValueError):
        takes_resolution = False
    return factory(resolution=int(resolution)) if resolution is not None and takes_resolution else factory()
