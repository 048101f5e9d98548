"""Task names, environment and backend construction shared by ``emu-guide demo`` and ``bench``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from emu_guide.env_protocol import is_import_path, load_env_factory
from emu_guide.paths import shipped_model_dir

__all__ = ["TASKS", "add_text_argument", "env_id", "has_shipped_model", "make_backend", "make_env", "resolve_backend"]

# short name -> registered Gymnasium id
TASKS: dict[str, str] = {
    "table_clear": "sim_envs/TableClear-v0",
    "fold_cloth": "sim_envs/FoldCloth-v0",
    "sort_blocks": "sim_envs/SortBlocks-v0",
}


def env_id(task: str) -> str:
    """Short task name, a registered Gymnasium id, or ``module:callable`` -> what ``make_env`` builds."""
    if task in TASKS:
        return TASKS[task]
    if task in TASKS.values() or is_import_path(task):
        return task
    import gymnasium as gym

    import sim_envs  # noqa: F401  (registers the ids)

    if task in gym.registry:
        return task
    raise ValueError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}, a registered Gymnasium id, "
                     "or your own environment as module:callable (docs/environments.md)")


def make_env(task: str, resolution: int | None = None) -> Any:
    """The environment for ``task``: ours by short name, any registered id through ``gym.make``, or
    ``module:callable`` (imported in this process: bench workers build their own the same way)."""
    import gymnasium as gym

    import sim_envs  # noqa: F401  (registers the ids)

    target = env_id(task)
    kwargs = {} if resolution is None else {"resolution": int(resolution)}
    if is_import_path(target):
        env = load_env_factory(target, resolution)
    else:
        env = gym.make(target, **kwargs) if target in TASKS.values() else gym.make(target)
    from emu_guide.env_protocol import EnvProtocolError, guidance_env

    try:
        guidance_env(env)
    except EnvProtocolError as exc:
        env.close()
        raise ValueError(f"{task!r}: {exc}") from None
    return env


def has_shipped_model(path: Path | None = None) -> bool:
    """Whether a trained default model is shipped (a model directory: guidance.json + lm/ + tokenizers)."""
    d = path or shipped_model_dir()
    return (d / "guidance.json").is_file() and (d / "lm").is_dir()


def resolve_backend(name: str) -> tuple[str, str]:
    """'auto' -> ('torch', '') when a default model is shipped, else ('oracle', notice)."""
    if name != "auto":
        return name, ""
    if has_shipped_model():
        return "torch", ""
    return "oracle", (
        f"NOTICE: no trained default model in {shipped_model_dir()} yet; using the ORACLE backend "
        "(plan steps and subgoal images from the simulator's privileged state, no model)."
    )


def make_backend(name: str, env: Any, model_path: str | None = None, device: str = "cpu",
                 num_threads: int | None = None, trust_remote_code: bool = False) -> Any:
    """Instantiate a backend by name; the oracle gets the env, model backends the model path.

    ``num_threads`` (torch backend) caps intra-op threads: bench workers share the cores.
    ``trust_remote_code``: run a checkpoint's own tokenizer code (the Emu3.5 release needs it).
    """
    from model_runtime.backends.base import load_backend

    if name == "oracle":
        return load_backend("oracle", env=env)
    path = model_path or str(shipped_model_dir())
    kwargs: dict[str, Any] = {"model_path": path, "device": device}
    if trust_remote_code:
        kwargs["trust_remote_code"] = True
    if num_threads is not None and name == "torch":
        kwargs["num_threads"] = num_threads
    return load_backend(name, **kwargs)


def add_text_argument(parser: Any) -> None:
    """``--text grounded|free`` for the commands that run closed-loop episodes (demo, bench)."""
    parser.add_argument("--text", default="grounded", choices=("grounded", "free"),
                        help="grounded (default): the model may name only the objects the detector sees (plus the"
                             " held one and the targets; tasks without a detector run free); free: the model alone")


def add_model_arguments(parser: Any) -> None:
    """``--trust-remote-code`` for the commands that load a model (demo, bench, replay)."""
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="run the checkpoint's own tokenizer code (the official Emu3.5 release ships it as "
                             "tokenization_emu3.py); only for checkpoints you trust")


def supported_instructions(task: str) -> list[str]:
    """The instruction phrasings the task's simulator writes (templates with {placeholders} for SortBlocks)."""
    import sim_envs

    target = env_id(task)  # unknown task -> ValueError naming the valid ones
    if target not in sim_envs.ENV_IDS:
        return []  # an outside environment: its instructions are its own
    return sim_envs.instruction_phrasings(target)


def check_user_instruction(backend: Any, instruction: str, task: str) -> str | None:
    """None when the model can read ``instruction``; else a one-line error naming the unknown words
    and listing the phrasings the task's training data used."""
    from model_runtime.backends.base import BackendError

    if not instruction.strip():
        return "--instruction is empty"
    check = getattr(backend, "check_instruction", None)
    if check is None:
        return None
    try:
        check(" ".join(instruction.split()))
    except BackendError as exc:
        examples = "; ".join(repr(s) for s in supported_instructions(task))
        return f"{exc}. Instructions the model was trained on for {task}: {examples}" if examples else str(exc)
    return None


def add_instruction_argument(parser: Any) -> None:
    """``--instruction TEXT``: what the model is asked (the simulator still scores its own task)."""
    parser.add_argument("--instruction", default=None,
                        help="the instruction given to the model instead of the episode's own; the simulator still "
                             "scores its own task, so ask for that task in your words")
