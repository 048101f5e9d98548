"""Reproduce the shipped default model with one command.

    python -m finetune_embodied.default_model [--config configs/train/default_model.yaml] [--quick]

record (sim experts with mistakes + recoveries, TRAIN seeds) -> train the vision tokenizer ->
next-token training -> DiDA adaptation -> (optional sections) the LM trained further and adapted
again (``refine``, ``refine_dida``), the step verifier (``verifier``) and the scene perceiver
(``perception``) -> export a model directory (``model_runtime.backends.torch_backend``
format: guidance.json, lm/, vision_tokenizer/, text_tokenizer/, step_verifier/, perception/) with MODEL_CARD.md, checked by
loading it through ``TorchBackend`` and running one guidance step on a held-out sim episode.

Everything is resumable: the recording from its per-episode shards, each stage from its latest
checkpoint, a finished stage is not re-run. Work goes to ``runs/default_model/`` (or ``--work``);
the export goes to ``--out`` (default ``runs/default_model/export``; pass ``model_runtime/default_model``
to replace the shipped one).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from emu_guide.paths import PROJECT_ROOT, artifacts_root

__all__ = ["add_arguments", "export_model", "main", "run_pipeline"]

STAGES = ("tokenizer", "next_token", "dida", "refine", "refine_dida", "verifier", "perception", "perception_names")
# A stage trains by configs/train/<its config>.yaml: its own name, but for the refine stages, which
# train the LM further from the DiDA stage's weights (a second next-token pass, then DiDA again),
# and perception_names, which trains the perceiver's name reader alone on the trained perceiver
STAGE_CONFIGS = {"refine": "next_token", "refine_dida": "dida", "perception_names": "perception"}


def _read_yaml(path: Path) -> dict[str, Any]:
    import yaml

    if not path.is_file():
        raise ValueError(f"pipeline config {path} does not exist")
    doc = yaml.safe_load(path.read_text()) or {}
    if not isinstance(doc, dict):
        raise ValueError(f"pipeline config {path} must be a mapping")
    unknown = set(doc) - {"record", "export", "quick", "reading", *STAGES}
    if unknown:
        raise ValueError(f"pipeline config {path}: unknown sections {sorted(unknown)}")
    return doc


def _merge_quick(doc: dict[str, Any]) -> dict[str, Any]:
    quick = doc.get("quick") or {}
    out = {k: dict(v or {}) for k, v in doc.items() if k != "quick"}
    for section, values in quick.items():
        out.setdefault(section, {}).update(values or {})
    return out


def sim_instruction_texts() -> list[str]:
    """Every instruction paraphrase the sim tasks define (their templates with placeholders left out).

    Added to the word vocabulary so that a held-out episode's paraphrase never has unknown words
    even if no recorded TRAIN episode drew it.
    """
    import sim_envs

    texts = [t for env_id in sim_envs.ENV_IDS for t in sim_envs.instruction_phrasings(env_id) if "{" not in t]
    return sorted(set(texts))


def recipe_overrides(doc: dict[str, Any], stage: str) -> list[str]:
    """A pipeline recipe's section for ``stage`` as ``key=value`` overrides of configs/train/<stage>.yaml."""
    return [f"{k}={json.dumps(v) if isinstance(v, (list, dict)) else v}" for k, v in (doc.get(stage) or {}).items()]


def _stage_done(run_dir: Path, max_steps: int) -> bool:
    from finetune_embodied.train.checkpoint import latest_checkpoint

    last = latest_checkpoint(run_dir / "checkpoints")
    return last is not None and int(last.name.split("-")[1]) >= max_steps and (run_dir / "summary.json").is_file()


def _run_stage(stage: str, overrides: list[str], work: Path, state: dict[str, Any], progress: bool) -> dict[str, Any]:
    from finetune_embodied.train.config import load_config
    from finetune_embodied.train.loop import train

    run_dir = work / stage
    config = STAGE_CONFIGS.get(stage, stage)
    cfg = load_config(PROJECT_ROOT / "configs" / "train" / f"{config}.yaml", [f"checkpoint.dir={run_dir}", *overrides])
    if _stage_done(run_dir, cfg.optim.max_steps):
        print(f"[default_model] {stage}: already trained ({run_dir}), skipping")
    else:
        t0 = time.perf_counter()
        train(cfg, progress=progress)
        state.setdefault("wall_s", {})[stage] = state.get("wall_s", {}).get(stage, 0.0) + time.perf_counter() - t0
    summary = json.loads((run_dir / "summary.json").read_text())
    summary["config"] = cfg.to_dict()
    return summary


def export_model(lm_ckpt: Path, tokenizer_ckpt: Path, out: Path, max_total_mb: float = 20.0,
                 verifier_ckpt: Path | None = None, perceiver_ckpt: Path | None = None) -> dict[str, Any]:
    """Our LM checkpoint + vision tokenizer checkpoint (+ a verifier-stage and a perception-stage
    checkpoint) -> a TorchBackend model directory at ``out``.

    Written next to ``out`` first and renamed into place (an interrupted export never leaves half a
    model where the backend looks). Raises ValueError when the weights exceed ``max_total_mb``.
    """
    from finetune_embodied.train.checkpoint import load_checkpoint
    from finetune_embodied.train.stages.tokenizer_stage import load_tokenizer_or_checkpoint
    from model_runtime.backends.torch_backend import save_model_dir
    from model_runtime.layout import compact
    from model_runtime.lm import LMConfig, build_lm
    from model_runtime.text_tokenizer import WordTokenizer

    ck = load_checkpoint(lm_ckpt)
    meta = ck["config"]["model"]
    if meta.get("kind") != "lm":
        raise ValueError(f"{lm_ckpt} is not a language-model checkpoint (kind {meta.get('kind')!r})")
    if any(".lora_" in k for k in ck["weights"]):
        raise ValueError(f"{lm_ckpt} holds LoRA adapters: merge them before exporting")
    lm_cfg = LMConfig(**meta["lm"])
    lm = build_lm(lm_cfg, seed=0)
    text = WordTokenizer.load(lm_ckpt)
    vision = load_tokenizer_or_checkpoint(tokenizer_ckpt)
    layout = compact(text.vocab_size, vision.num_codes)
    # the perception_aux probe's heads are training-only: the exported model is a plain Qwen3
    weights = {k: v for k, v in ck["weights"].items() if not k.startswith("perception_probe.")}
    if meta.get("visual_codes"):  # trained with factorised code rows: write the summed plain table
        from finetune_embodied.train.factorized_codes import materialize

        vc = meta["visual_codes"]
        weights = materialize(weights, layout.visual_offset, tuple(vc["levels"]), residual=vc["mode"] == "factorized")
    missing, unexpected = lm.load_state_dict(weights, strict=False)
    if [k for k in missing if k != "lm_head.weight"] or unexpected:
        raise ValueError(f"{lm_ckpt}: weights do not fit LMConfig: missing {missing[:3]}, unexpected {unexpected[:3]}")
    tmp = out.parent / f".{out.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    # the model directory records whether its images were DiDA-adapted (else the backend decodes AR)
    data = (ck["config"].get("train") or {}).get("data") or {}
    # ... and how many done steps its prompts held in training (the backend keeps as many)
    verifier = None
    if verifier_ckpt is not None:
        from model_runtime.step_verifier import VERIFIER_DIR

        verifier = Path(verifier_ckpt) / VERIFIER_DIR
        if not verifier.is_dir():
            raise ValueError(f"{verifier_ckpt} is not a verifier-stage checkpoint (no {VERIFIER_DIR}/)")
    perceiver = None
    if perceiver_ckpt is not None:
        from model_runtime.scene_perceiver import PERCEIVER_DIR

        perceiver = Path(perceiver_ckpt) / PERCEIVER_DIR
        if not perceiver.is_dir():
            raise ValueError(f"{perceiver_ckpt} is not a perception-stage checkpoint (no {PERCEIVER_DIR}/)")
    save_model_dir(tmp, lm.eval(), vision, text, layout, lm_config=lm_cfg, dida_adapted=ck["config"].get("stage") == "dida",
                   answer_format=data.get("answer", "step"), max_history=data.get("max_history"), step_verifier=verifier,
                   perceiver=perceiver)
    total = sum(p.stat().st_size for p in tmp.rglob("*.safetensors"))
    if total > max_total_mb * 1e6:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ValueError(f"exported weights are {total / 1e6:.1f} MB, over the {max_total_mb} MB budget")
    card = out / "MODEL_CARD.md"
    old_card = card.read_text() if card.is_file() else None
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    if old_card is not None and not (out / "MODEL_CARD.md").exists():
        (out / "MODEL_CARD.md").write_text(old_card)  # replaced by the caller's new card right after
    return {"weights_mb": total / 1e6, "params_lm": sum(p.numel() for p in {id(p): p for p in lm.parameters()}.values())}


def smoke_check(model_dir: Path, seed: int | None = None) -> dict[str, Any]:
    """Load the export through TorchBackend and run one step on a held-out sim episode."""
    import gymnasium as gym

    import sim_envs  # noqa: F401  (registers the envs)
    from emu_guide.types import Frame
    from model_runtime.backends.base import DecodeOptions, load_backend
    from sim_envs.seeds import HELDOUT_SEEDS

    seed = int(HELDOUT_SEEDS[0]) if seed is None else seed
    env = gym.make("sim_envs/TableClear-v0")
    obs, _ = env.reset(seed=seed)
    backend = load_backend("torch", model_path=str(model_dir))
    try:
        t0 = time.perf_counter()
        step = backend.next_step(Frame(image=obs["image"]), env.unwrapped.instruction, [], DecodeOptions())
        dt = time.perf_counter() - t0
    finally:
        backend.close()
        env.close()
    return {"heldout_seed": seed, "first_step_text": step.text, "is_final": step.is_final, "step_latency_s": dt}


def _git_rev() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=PROJECT_ROOT, capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _fmt_metrics(m: dict[str, Any]) -> str:
    keep = {k: v for k, v in (m or {}).items() if k != "samples" and isinstance(v, (int, float))}
    return ", ".join(f"{k} {v:.3g}" for k, v in keep.items()) or "-"


def write_model_card(out: Path, info: dict[str, Any]) -> Path:
    rec, st = info["record"], info["stages"]
    lines = [
        "# Default guidance model (model_runtime/default_model)",
        "",
        "Trained from scratch on CPU by the fine-tuning pipeline on simulation data only.",
        "",
        "Reproduce (resumes if interrupted):",
        "",
        "```",
        info["command"],
        "```",
        "",
        f"- code revision: {info['git_rev']}; built {info['date_utc']} UTC",
        f"- machine: {info['machine']}",
        f"- shipped weights: {info['export']['weights_mb']:.2f} MB (LM {info['export']['params_lm'] / 1e6:.2f} M parameters + FSQ tokenizer)",
        "",
        "## Data",
        "",
        f"- `emu-guide record`: tasks {', '.join(rec['tasks'])}; {rec['episodes_in_dataset']} episodes"
        f" ({rec['episodes_per_task']} TRAIN seeds per task"
        + "".join(f", {t} {n}" for t, n in (rec.get("episodes_by_task") or {}).items())
        + f", mistake rate {rec['mistake_rate']},"
        f" {rec['mistakes_injected']} mistakes + recoveries injected), {rec['resolution']} px frames;"
        f" recording {rec['record_seconds'] / 60:.1f} min",
        f"- held out for evaluation: {st['dida']['config']['data']['heldout_fraction']:.0%} of the episodes (whole episodes,"
        " evenly spaced over the recording so every task is represented); all metrics below are on them",
        "",
        "## Stages",
        "",
        "| stage | steps | batch | lr | train samples | wall time | samples/s | held-out metrics |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in ("tokenizer", "reading", "next_token", "dida", "refine", "refine_dida", "verifier", "perception",
                 "perception_names"):
        if name not in st:  # the reading warm-up, the refine stages, the verifier and the perceiver are optional
            continue
        s = st[name]
        c = s["config"]
        lines.append(
            f"| {name} | {s['steps']} | {c['optim']['batch_size']} | {c['optim']['lr']:g} | {s.get('train_samples', '-')} |"
            f" {info['wall_s'].get(name, 0) / 60:.1f} min | {s.get('samples_per_s', 0):.2f} | {_fmt_metrics(s.get('final_eval'))} |"
        )
    total = sum(info["wall_s"].values()) + rec["record_seconds"]
    lines += [
        "",
        f"Total wall time (recording + training): {total / 60:.1f} min.",
        "",
        "Metric meanings: `recon_psnr_db` tokenizer reconstruction PSNR on held-out frames;"
        " `object_pos_err_px` centroid error of coloured objects (model_runtime.image_metrics);"
        " `next_step_text_acc` fraction of held-out samples whose whole next-step sentence is predicted"
        " exactly (greedy, equivalent to teacher forcing when every token is right); `subgoal_code_acc`"
        " / `subgoal_psnr_db` subgoal image codes (next_token: autoregressive with the true prefix; dida:"
        " one parallel pass from a fully masked block) and the PSNR of their decoding against the"
        " decoded true codes. verifier: `acc`, `false_done` (of the held-out steps that did not happen,"
        " the share judged done), `missed_done` (of those that did, judged not done), per sample source"
        " (`acc_step` a recorded attempt's end, `acc_partway` a frame part way into it, `acc_other_step`"
        " another step's sentence), at the verifier's threshold. perception (the scene perceiver):"
        " `object_f1` objects named right (full name), `cell_acc` their cell among matched ones,"
        " `holding_acc` the held object, `exact` the whole perception, on held-out recorded frames.",
        "",
        "## Check through the runtime",
        "",
        f"- `TorchBackend` load + one `next_step` on held-out seed {info['smoke'].get('heldout_seed')}:"
        f" {info['smoke'].get('result', '')}",
        "",
        "## Limits",
        "",
        "- Simulation only (three tabletop tasks, fixed camera); not meant for real robots without fine-tuning.",
        "- Vocabulary: the words of the recorded plans and the sims' instruction paraphrases; other words"
        " are refused by the backend with a clear error.",
        "",
    ]
    path = out / "MODEL_CARD.md"
    path.write_text("\n".join(lines))
    return path


def run_pipeline(config: Path, out: Path, work: Path, quick: bool = False, progress: bool = True,
                 stage_overrides: dict[str, list[str]] | None = None,
                 record_overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Record -> tokenizer -> next_token -> dida (-> refine -> refine_dida) (-> verifier, -> perception
    (-> perception_names)) -> export to
    ``out`` -> TorchBackend check -> model card.

    ``stage_overrides`` / ``record_overrides`` go on top of the config (tests use them for tiny models).
    """
    from finetune_embodied.record import RecordConfig, record

    doc = _read_yaml(config)
    doc = _merge_quick(doc) if quick else {k: v for k, v in doc.items() if k != "quick"}
    work.mkdir(parents=True, exist_ok=True)
    state_path = work / "pipeline_state.json"
    state = json.loads(state_path.read_text()) if state_path.is_file() else {}

    # 1. record (resumes from shards)
    rec_kwargs = {**(doc.get("record") or {}), **(record_overrides or {})}
    rec_cfg = RecordConfig(out=str(work / "dataset"), **{k: (tuple(v) if isinstance(v, list) else v) for k, v in rec_kwargs.items()})
    t0 = time.perf_counter()
    rec = record(rec_cfg, progress=progress)
    if rec["episodes_recorded_now"] or "record" not in state:
        state["record"] = {**rec, "record_seconds": state.get("record", {}).get("record_seconds", 0.0) + time.perf_counter() - t0,
                           "tasks": list(rec_cfg.tasks), "episodes_per_task": rec_cfg.episodes_per_task,
                           "episodes_by_task": dict(rec_cfg.episodes_by_task or {}),
                           "mistake_rate": rec_cfg.mistake_rate, "resolution": rec_cfg.resolution}
    state_path.write_text(json.dumps(state, indent=1))
    dataset = work / "dataset"

    def flat(stage: str) -> list[str]:
        return recipe_overrides(doc, stage) + list((stage_overrides or {}).get(stage, []))

    from finetune_embodied.train.checkpoint import latest_checkpoint

    common = [f"data.path={dataset}"]
    stages: dict[str, Any] = {}
    stages["tokenizer"] = _run_stage("tokenizer", common + flat("tokenizer"), work, state, progress)
    state_path.write_text(json.dumps(state, indent=1))
    tok_ckpt = latest_checkpoint(work / "tokenizer" / "checkpoints")
    vocab = json.dumps(sim_instruction_texts())
    lm_common = common + [f"tokenizer={tok_ckpt}", f"data.extra_texts={vocab}"]
    nt_init: list[str] = []
    if "reading" in doc:  # optional reading warm-up: next_token starts from it
        stages["reading"] = _run_stage("reading", lm_common + flat("reading"), work, state, progress)
        state_path.write_text(json.dumps(state, indent=1))
        nt_init = [f"init_from={latest_checkpoint(work / 'reading' / 'checkpoints')}"]
    stages["next_token"] = _run_stage("next_token", lm_common + nt_init + flat("next_token"), work, state, progress)
    state_path.write_text(json.dumps(state, indent=1))
    nt_ckpt = latest_checkpoint(work / "next_token" / "checkpoints")
    stages["dida"] = _run_stage("dida", lm_common + [f"init_from={nt_ckpt}"] + flat("dida"), work, state, progress)
    state_path.write_text(json.dumps(state, indent=1))
    lm_ckpt = latest_checkpoint(work / "dida" / "checkpoints")
    if "refine" in doc:  # the LM trained further from its DiDA weights (e.g. on more of the recording), then DiDA again
        # from the DiDA stage's model exported as shipped (code rows as one plain table): a fine-tune of a shipped model
        base = work / "dida_model"
        if not (base / "guidance.json").is_file():
            export_model(lm_ckpt, tok_ckpt, base, max_total_mb=float("inf"))
        stages["refine"] = _run_stage("refine", lm_common + [f"init_from={base}"] + flat("refine"), work, state, progress)
        state_path.write_text(json.dumps(state, indent=1))
        refined = latest_checkpoint(work / "refine" / "checkpoints")
        stages["refine_dida"] = _run_stage("refine_dida", lm_common + [f"init_from={refined}"] + flat("refine_dida"), work,
                                           state, progress)
        state_path.write_text(json.dumps(state, indent=1))
        lm_ckpt = latest_checkpoint(work / "refine_dida" / "checkpoints")
    verifier_ckpt = None
    if "verifier" in doc:  # the step verifier: the loop's frame verification (model_runtime/step_verifier.py)
        stages["verifier"] = _run_stage("verifier", common + flat("verifier"), work, state, progress)
        state_path.write_text(json.dumps(state, indent=1))
        verifier_ckpt = latest_checkpoint(work / "verifier" / "checkpoints")
    perceiver_ckpt = None
    if "perception" in doc:  # the scene perceiver: what the step is planned from (model_runtime/scene_perceiver.py)
        stages["perception"] = _run_stage("perception", common + flat("perception"), work, state, progress)
        state_path.write_text(json.dumps(state, indent=1))
        perceiver_ckpt = latest_checkpoint(work / "perception" / "checkpoints")
        if "perception_names" in doc:  # its name reader (full-resolution crops), trained alone on the frozen perceiver
            stages["perception_names"] = _run_stage("perception_names", common + [f"init_from={perceiver_ckpt}"]
                                                    + flat("perception_names"), work, state, progress)
            state_path.write_text(json.dumps(state, indent=1))
            perceiver_ckpt = latest_checkpoint(work / "perception_names" / "checkpoints")

    # 5. export + check through the runtime
    max_mb = float((doc.get("export") or {}).get("max_total_mb", 20))
    exp = export_model(lm_ckpt, tok_ckpt, out, max_total_mb=max_mb, verifier_ckpt=verifier_ckpt,
                       perceiver_ckpt=perceiver_ckpt)
    try:
        smoke = smoke_check(out)
        smoke["result"] = (f"OK, first step {smoke['first_step_text']!r} in {smoke['step_latency_s'] * 1000:.0f} ms")
    except Exception as exc:  # reported in the card and the summary, and re-raised below
        smoke = {"result": f"FAILED: {type(exc).__name__}: {exc}", "error": True}
    import platform

    import torch

    cmd = f"python -m finetune_embodied.default_model --config {config.relative_to(PROJECT_ROOT) if config.is_relative_to(PROJECT_ROOT) else config}"
    cmd += (" --quick" if quick else "") + "".join(
        f" --set {st}:{kv}" for st, kvs in (stage_overrides or {}).items() for kv in kvs) + f" --out {out}"
    info = {
        "command": cmd,
        "git_rev": _git_rev(),
        "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        "machine": f"{platform.machine()} {torch.get_num_threads()} threads, torch {torch.__version__}, no GPU"
        if not torch.cuda.is_available() else torch.cuda.get_device_name(0),
        "record": state["record"],
        "stages": stages,
        "wall_s": state.get("wall_s", {}),
        "export": exp,
        "smoke": smoke,
    }
    write_model_card(out, info)
    (work / "pipeline_summary.json").write_text(json.dumps(info, indent=1, default=str))
    if smoke.get("error"):
        raise RuntimeError(f"the exported model at {out} does not run through TorchBackend: {smoke['result']}")
    return info


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=str(PROJECT_ROOT / "configs" / "train" / "default_model.yaml"))
    parser.add_argument("--out", default=None, help="export directory (default <runs>/default_model/export;"
                        " model_runtime/default_model replaces the shipped model)")
    parser.add_argument("--work", default=None, help="work directory (default <runs>/default_model[_quick])")
    parser.add_argument("--quick", action="store_true", help="tiny settings: smoke test of the whole pipeline")
    parser.add_argument("--set", action="append", default=[], metavar="STAGE:KEY=VALUE",
                        help="override one stage's config, e.g. --set next_token:optim.max_steps=500 (repeatable)")
    parser.add_argument("--no-progress", action="store_true")


def main(args: argparse.Namespace) -> int:
    name = "default_model_quick" if args.quick else "default_model"
    work = Path(args.work) if args.work else artifacts_root() / name
    out = Path(args.out) if args.out else work / "export"
    overrides: dict[str, list[str]] = {}
    for item in args.set:
        stage, sep, kv = item.partition(":")
        if not sep or stage not in STAGES or "=" not in kv:
            print(f"default_model: --set {item!r} must look like STAGE:KEY=VALUE with STAGE in {STAGES}")
            return 2
        overrides.setdefault(stage, []).append(kv)
    try:
        info = run_pipeline(Path(args.config), out.resolve(), work.resolve(), quick=args.quick,
                            progress=not args.no_progress, stage_overrides=overrides)
    except (ValueError, RuntimeError) as exc:
        print(f"default_model: {exc}")
        return 1
    print(f"exported {out} ({info['export']['weights_mb']:.2f} MB); model card {out / 'MODEL_CARD.md'}")
    print(f"TorchBackend check: {info['smoke']['result']}")
    return 0


if __name__ == "__main__":
    p = argparse.ArgumentParser(prog="python -m finetune_embodied.default_model", description=__doc__.splitlines()[0])
    add_arguments(p)
    sys.exit(main(p.parse_args()))
