"""Mutation-testing benchmark for the core modules: is a one-line bug caught by the tests?

For each core module this applies one small AST mutation at a time (an operator, a comparison, a
boolean operator, a constant, a removed statement), runs the module's own tests against the
mutant, and counts the mutant KILLED when a test fails (or the run times out) and SURVIVED when
every test still passes. It prints the kill rate per module, lists the survivors (file:line and
the mutated source line) and writes JSON under ``runs/bench/``.

Why our own tool and not mutmut / cosmic-ray: both were tried against this layout. cosmic-ray
mutates the source files in place, and this working tree is shared with other sessions that run
their tests at the same time (a mutant on disk breaks their runs). mutmut 3 reads its
configuration only from ``[tool.mutmut]`` / ``setup.cfg``, copies the tree to ``mutants/``,
trampolines every function and first runs the whole test selection to map tests to functions:
tens of minutes on this 2-core machine before the first mutant. This script never writes a
source file: the mutant is compiled from the mutated AST in memory and served to the test run
by an import hook (``sys.meta_path``) under the module's real name and path.

Speed: a parent process imports the heavy third-party libraries once (torch, transformers,
numpy, cv2, gymnasium, pytest) and forks one child per mutant; the child installs the hook and
runs ``pytest`` on a narrow test selection (a few seconds). A mutant is counted a timeout
(killed) after ``max(20 s, 5 x the clean run)``.

Run (not part of the default test run; nice it, the machine is shared)::

    nice -n 10 .venv/bin/python bench/mutation.py                  # every core module
    nice -n 10 .venv/bin/python bench/mutation.py --module dida --module parse
    .venv/bin/python bench/mutation.py --list --module monitor     # the mutants, no tests run

Per module at most ``--max-mutants`` (default 60) mutants are run, a fixed-seed sample when the
module has more sites (the JSON records both counts); ``--max-mutants 0`` runs every site.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import copy
import importlib.abc
import importlib.util
import json
import os
import random
import signal
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# module -> (source file, functions to mutate (None = the whole module), tests to run).
# Tests are pytest node ids relative to the repository root: keep them narrow (seconds).
MODULES: dict[str, dict] = {
    "dida": {
        "module": "model_runtime.decoding.dida",
        "only": None,
        "tests": ["tests/model_runtime/decoding/test_dida.py", "tests/model_runtime/decoding/test_dida_policy.py"],
    },
    "ar": {
        "module": "model_runtime.decoding.ar",
        "only": None,
        "tests": ["tests/model_runtime/decoding/test_ar.py", "tests/model_runtime/decoding/test_dida_policy.py"],
    },
    "constraints": {
        "module": "model_runtime.decoding.constraints",
        "only": None,
        "tests": ["tests/model_runtime/decoding/test_constraints_sampling.py",
                  "tests/model_runtime/decoding/test_grammar_rules.py"],
    },
    "sampling": {
        "module": "model_runtime.decoding.sampling",
        "only": None,
        "tests": ["tests/model_runtime/decoding/test_constraints_sampling.py",
                  "tests/model_runtime/decoding/test_sampling_policy.py"],
    },
    "parse": {
        "module": "planner.parse",
        "only": None,
        "tests": ["tests/planner/test_parse.py"],
    },
    "monitor": {
        "module": "planner.monitor",
        "only": None,
        "tests": ["tests/planner/test_monitor.py"],
    },
    "metrics": {
        "module": "planner.metrics",
        "only": None,
        "tests": ["tests/planner/test_metrics.py", "tests/planner/test_report.py::test_report_files_are_valid",
                  "tests/planner/test_report.py::test_success_at_k_is_calvin_style"],
    },
    "checker_base": {
        "module": "sim_envs.base",
        "only": ["check_step", "steps_done", "task_success", "_update_progress"],
        "tests": ["tests/sim_envs/test_ground_truth.py", "tests/sim_envs/test_checkers.py"],
    },
    "checker_table_clear": {
        "module": "sim_envs.table_clear",
        "only": ["_check", "_in_place", "_final_ok"],
        "tests": ["tests/sim_envs/test_checkers.py", "tests/sim_envs/test_ground_truth.py"],
    },
    "checker_fold_cloth": {
        "module": "sim_envs.fold_cloth",
        "only": ["_check", "_final_ok", "CHECK_TOL"],
        "tests": ["tests/sim_envs/test_checkers.py", "tests/sim_envs/test_ground_truth.py"],
    },
    "checker_sort_blocks": {
        "module": "sim_envs.sort_blocks",
        "only": ["_check", "_resting_on", "_final_ok"],
        "tests": ["tests/sim_envs/test_checkers.py", "tests/sim_envs/test_ground_truth.py"],
    },
    "dataset_v3": {
        "module": "finetune_embodied.datasets.lerobot_v3",
        "only": None,
        "tests": ["tests/finetune_embodied/datasets/test_lerobot_v3.py",
                  "tests/finetune_embodied/datasets/test_lerobot_v3_exact.py",
                  "tests/finetune_embodied/datasets/test_bad_data.py"],
    },
    "dataset_v21": {
        "module": "finetune_embodied.datasets.lerobot_v21",
        "only": None,
        "tests": ["tests/finetune_embodied/datasets/test_lerobot_v21.py",
                  "tests/finetune_embodied/datasets/test_lerobot_v21_exact.py",
                  "tests/finetune_embodied/datasets/test_bad_data.py"],
    },
    "dataset_episode": {
        "module": "finetune_embodied.datasets.episode",
        "only": None,
        "tests": ["tests/finetune_embodied/datasets/test_episode.py",
                  "tests/finetune_embodied/datasets/test_lerobot_v3.py",
                  "tests/finetune_embodied/datasets/test_lerobot_v21.py"],
    },
    "loop": {
        "module": "planner.loop",
        "only": None,
        "tests": ["tests/planner/test_guidance_loop.py"],
    },
    "safety": {
        "module": "planner.safety",
        "only": None,
        # every test of the file but the hypothesis property (14 s a run; the numpy fuzz checks the same property)
        "tests": [f"tests/emu_ros/test_safety_gate.py::{t}" for t in (
            "test_fuzz_numpy_every_bad_goal_is_rejected_and_every_good_one_passes",
            "test_gate_costs_under_a_millisecond_per_goal", "test_goals_that_are_not_ok_pass_through_uncounted",
            "test_grounding_sources_detector_perception_vocabulary_and_scene", "test_workspace_and_frame_reasons",
            "test_rate_limit_holds_goals_and_a_stop_rejects_the_held_one",
            "test_approval_desk_approve_deny_timeout_and_unknown_ids",
            "test_config_and_parameter_parsing_errors_name_the_problem",
            "test_loop_never_executes_a_rejected_goal_and_records_why",
            "test_sim_episode_with_the_gate_on_still_succeeds",
            "test_every_rejection_has_a_declared_kind_and_an_exact_reason",
            "test_config_defaults_normalise_and_bounds",
            "test_rate_limit_spaces_goals_by_the_period_and_the_first_goes_at_once",
            "test_approval_answers_and_a_stop_while_waiting",
            "test_a_rate_below_one_goal_per_second_is_still_a_limit")],
    },
}

# ---------------------------------------------------------------------------------------------
# Mutation sites
# ---------------------------------------------------------------------------------------------

BINOP_SWAP = {
    ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult, ast.FloorDiv: ast.Div,
    ast.Mod: ast.Mult, ast.Pow: ast.Mult, ast.BitAnd: ast.BitOr, ast.BitOr: ast.BitAnd,
}
CMP_SWAP = {
    ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.Eq: ast.NotEq,
    ast.NotEq: ast.Eq, ast.In: ast.NotIn, ast.NotIn: ast.In, ast.Is: ast.IsNot, ast.IsNot: ast.Is,
}


@dataclass
class Site:
    """One mutation: the ``index``-th candidate node of ``kind`` in the module, in walk order."""

    index: int
    kind: str  # binop | cmp | boolop | not | const | stmt
    line: int
    col: int
    desc: str
    source_line: str = ""


@dataclass
class Result:
    site: Site
    outcome: str  # killed | survived | timeout | error
    seconds: float
    mutated_line: str = ""


@dataclass
class ModuleReport:
    name: str
    module: str
    path: str
    tests: list[str]
    sites_total: int
    sites_run: int
    clean_seconds: float
    killed: int = 0
    survived: int = 0
    timeout: int = 0
    error: int = 0
    seconds: float = 0.0
    results: list[Result] = field(default_factory=list)

    @property
    def kill_rate(self) -> float | None:
        n = self.killed + self.timeout + self.survived
        return (self.killed + self.timeout) / n if n else None


def _skip_nodes(tree: ast.AST) -> set[int]:
    """ids of nodes never mutated: docstrings, annotations, ``__all__``, raise/assert messages."""
    skip: set[int] = set()

    def mark(node: ast.AST | None) -> None:
        if node is not None:
            for n in ast.walk(node):
                skip.add(id(n))

    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) and isinstance(
                getattr(body[0], "value", None), ast.Constant) and isinstance(body[0].value.value, str):
            mark(body[0])
        if isinstance(node, (ast.AnnAssign,)):
            mark(node.annotation)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            mark(node.returns)
            for a in (*node.args.args, *node.args.kwonlyargs, *node.args.posonlyargs, node.args.vararg,
                      node.args.kwarg):
                if a is not None:
                    mark(a.annotation)
            for d in node.decorator_list:
                mark(d)
        if isinstance(node, ast.Raise):
            mark(node.exc)  # the message; removing the raise is a stmt mutation
        if isinstance(node, ast.Assert):
            mark(node.msg)
        if isinstance(node, ast.JoinedStr):
            mark(node)
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
            mark(node)
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            mark(node)
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            mark(node)
    return skip


def _inside(tree: ast.Module, only: list[str] | None) -> set[int] | None:
    """ids of the nodes inside the named functions (any class), or None for the whole module."""
    if only is None:
        return None
    ids: set[int] = set()
    for node in ast.walk(tree):
        named = isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name in only
        # a module constant named in ``only`` (a checker's tolerance) is mutated too
        named = named or (isinstance(node, ast.Assign) and node in tree.body and any(
            isinstance(t, ast.Name) and t.id in only for t in node.targets))
        if named:
            for n in ast.walk(node):
                ids.add(id(n))
    return ids


def _candidates(tree: ast.Module, only: list[str] | None) -> list[tuple[str, ast.AST]]:
    skip = _skip_nodes(tree)
    inside = _inside(tree, only)
    out: list[tuple[str, ast.AST]] = []
    for node in ast.walk(tree):
        if id(node) in skip or (inside is not None and id(node) not in inside):
            continue
        if isinstance(node, (ast.BinOp, ast.AugAssign)) and type(node.op) in BINOP_SWAP:
            out.append(("binop", node))
        elif isinstance(node, ast.Compare):
            for _ in node.ops:
                out.append(("cmp", node))
        elif isinstance(node, ast.BoolOp):
            out.append(("boolop", node))
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.Not, ast.USub)):
            out.append(("not", node))
        elif isinstance(node, ast.Constant) and (isinstance(node.value, bool) or (
                isinstance(node.value, (int, float)) and not isinstance(node.value, bool))):
            out.append(("const", node))
        if isinstance(node, (ast.Expr, ast.AugAssign, ast.Assign, ast.Return, ast.Raise, ast.Continue,
                             ast.Break)) and id(node) not in skip:
            if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
                continue
            out.append(("stmt", node))
    return out


def list_sites(path: Path, only: list[str] | None) -> list[Site]:
    src = path.read_text()
    lines = src.splitlines()
    tree = ast.parse(src)
    sites = []
    cmp_seen: dict[int, int] = {}
    for i, (kind, node) in enumerate(_candidates(tree, only)):
        line = getattr(node, "lineno", 0)
        desc = kind
        if kind == "binop":
            desc = f"{type(node.op).__name__} -> {BINOP_SWAP[type(node.op)].__name__}"
        elif kind == "cmp":
            j = cmp_seen.get(id(node), 0)
            cmp_seen[id(node)] = j + 1
            op = node.ops[j]
            desc = f"{type(op).__name__} -> {CMP_SWAP[type(op)].__name__}" if type(op) in CMP_SWAP else "cmp negated"
        elif kind == "boolop":
            desc = "and -> or" if isinstance(node.op, ast.And) else "or -> and"
        elif kind == "not":
            desc = "drop 'not'" if isinstance(node.op, ast.Not) else "drop unary '-'"
        elif kind == "const":
            desc = f"{node.value!r} -> {_const_mutant(node.value)!r}"
        elif kind == "stmt":
            desc = f"remove {type(node).__name__}"
        sites.append(Site(i, kind, line, getattr(node, "col_offset", 0), desc,
                          lines[line - 1].strip() if 0 < line <= len(lines) else ""))
    return sites


def _const_mutant(v: object) -> object:
    if isinstance(v, bool):
        return not v
    if isinstance(v, int):
        return v + 1
    if isinstance(v, float):
        return v * 2 + 1 if v == 0 else v * 2
    return v


def mutate(path: Path, only: list[str] | None, index: int) -> ast.Module:
    """The module's AST with candidate ``index`` mutated."""
    tree = ast.parse(path.read_text())
    cands = _candidates(tree, only)
    kind, node = cands[index]
    if kind == "cmp":
        j = sum(1 for k, n in cands[:index] if n is node)  # which operator of a chained comparison
        op = node.ops[j]
        if type(op) in CMP_SWAP:
            node.ops[j] = CMP_SWAP[type(op)]()
    elif kind == "binop":
        node.op = BINOP_SWAP[type(node.op)]()
    elif kind == "boolop":
        node.op = ast.Or() if isinstance(node.op, ast.And) else ast.And()
    elif kind == "not":
        _replace(tree, node, node.operand)
    elif kind == "const":
        node.value = _const_mutant(node.value)
    elif kind == "stmt":
        _replace(tree, node, ast.Pass())
    return ast.fix_missing_locations(tree)


def _replace(tree: ast.AST, old: ast.AST, new: ast.AST) -> None:
    ast.copy_location(new, old)
    for parent in ast.walk(tree):
        for name, value in ast.iter_fields(parent):
            if value is old:
                setattr(parent, name, new)
                return
            if isinstance(value, list):
                for i, v in enumerate(value):
                    if v is old:
                        value[i] = new
                        return
    raise RuntimeError("mutation site not found")


# ---------------------------------------------------------------------------------------------
# Running one mutant (in a forked child)
# ---------------------------------------------------------------------------------------------


class _MutantFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Serves ``fullname`` from an in-memory code object (the mutant), at its real path."""

    def __init__(self, fullname: str, path: Path, code) -> None:
        self.fullname, self.path, self.code = fullname, path, code

    def find_spec(self, fullname, path=None, target=None):
        if fullname != self.fullname:
            return None
        return importlib.util.spec_from_file_location(fullname, self.path, loader=self)

    def create_module(self, spec):
        return None

    def exec_module(self, module) -> None:
        exec(self.code, module.__dict__)


def _child(fullname: str, path: Path, tree: ast.Module | None, tests: list[str], log: Path) -> None:
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    try:
        os.chdir(ROOT)
        sys.path.insert(0, str(ROOT))  # this tree's packages, whatever the environment points at
        if tree is not None:
            code = compile(tree, str(path), "exec")
            sys.meta_path.insert(0, _MutantFinder(fullname, path, code))
        import pytest

        rc = pytest.main(["-x", "-q", "-p", "no:cacheprovider", "-p", "no:randomly", "--no-header", *tests])
    except BaseException as exc:  # noqa: BLE001 - a mutant may break anything; report it as an error
        print(f"mutation child: {exc!r}", flush=True)
        rc = 99
    os._exit(int(rc))


def run_tests(fullname: str, path: Path, tree: ast.Module | None, tests: list[str], timeout: float,
              log: Path) -> tuple[str, float]:
    t0 = time.monotonic()
    pid = os.fork()
    if pid == 0:
        os.setpgid(0, 0)
        _child(fullname, path, tree, tests, log)
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() - t0 > timeout:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return "timeout", time.monotonic() - t0
        time.sleep(0.05)
    dt = time.monotonic() - t0
    rc = os.waitstatus_to_exitcode(status)
    if rc == 0:
        return "survived", dt
    if rc in (1, 2):  # tests failed, or collection failed (the clean run collected fine: the mutant broke it)
        return "killed", dt
    return f"error(rc={rc})", dt


def _preimport() -> None:
    """Third-party libraries the tests import, loaded once in the parent (never project modules)."""
    import numpy  # noqa: F401
    import pytest  # noqa: F401
    import torch

    torch.set_num_threads(1)
    for name in ("transformers", "transformers.models.qwen3.modeling_qwen3", "cv2", "gymnasium", "pyarrow",
                 "pyarrow.parquet", "av", "safetensors.torch", "yaml"):
        with contextlib.suppress(Exception):  # optional speed-up only
            __import__(name)


def run_module(name: str, cfg: dict, max_mutants: int, seed: int, logdir: Path) -> ModuleReport:
    fullname = cfg["module"]
    path = ROOT / (fullname.replace(".", "/") + ".py")
    tests = [t for t in cfg["tests"] if (ROOT / t.split("::")[0]).exists()]
    sites = list_sites(path, cfg["only"])
    if not tests:  # never fall back to pytest's default (the whole suite)
        raise SystemExit(f"{name}: none of its test files exist: {cfg['tests']}")
    chosen = sites
    if max_mutants and len(sites) > max_mutants:
        chosen = sorted(random.Random(f"{seed}:{name}").sample(sites, max_mutants), key=lambda s: s.index)
    log = logdir / f"{name}.log"
    status, clean = run_tests(fullname, path, None, tests, 600, log)
    rep = ModuleReport(name, fullname, str(path.relative_to(ROOT)), tests, len(sites), len(chosen), round(clean, 2))
    if status != "survived":
        print(f"{name}: the clean test run fails ({status}); see {log}. Skipped.", flush=True)
        rep.error = len(chosen)
        return rep
    timeout = max(20.0, 5 * clean)
    t0 = time.monotonic()
    for k, site in enumerate(chosen, 1):
        tree = mutate(path, cfg["only"], site.index)
        try:
            mutated_line = ast.unparse(_stmt_at(tree, site.line)) if site.line else ""
        except Exception:  # noqa: BLE001
            mutated_line = ""
        outcome, dt = run_tests(fullname, path, tree, tests, timeout, log)
        rep.results.append(Result(site, outcome, round(dt, 2), mutated_line))
        key = outcome if outcome in ("killed", "survived", "timeout") else "error"
        setattr(rep, key, getattr(rep, key) + 1)
        mark = {"killed": ".", "survived": "S", "timeout": "T"}.get(outcome, "E")
        print(mark, end="" if k % 60 else "\n", flush=True)
    rep.seconds = round(time.monotonic() - t0, 1)
    print(flush=True)
    return rep


def _stmt_at(tree: ast.Module, line: int) -> ast.AST:
    best = None
    one_line = [n for n in ast.walk(tree) if isinstance(n, ast.expr) and getattr(n, "lineno", None) == line
                and getattr(n, "end_lineno", None) == line]
    for node in ast.walk(tree):
        if isinstance(node, ast.stmt) and getattr(node, "lineno", None) == line and not isinstance(
                node, (ast.FunctionDef, ast.ClassDef, ast.If, ast.For, ast.While, ast.With, ast.Try)):
            return node
        if isinstance(node, (ast.If, ast.While)) and node.lineno == line:
            best = copy.copy(node.test)
    if best is not None:
        return best
    if one_line:  # e.g. one entry of a multi-line dict: the widest expression on that line
        return max(one_line, key=lambda n: (n.end_col_offset or 0) - n.col_offset)
    raise LookupError(line)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--module", action="append", choices=sorted(MODULES), help="repeatable; default: all")
    ap.add_argument("--max-mutants", type=int, default=60, help="per module (fixed-seed sample); 0 = all")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--list", action="store_true", help="list the mutation sites and exit")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "bench")
    args = ap.parse_args(argv)
    names = args.module or list(MODULES)
    if args.list:
        for name in names:
            cfg = MODULES[name]
            path = ROOT / (cfg["module"].replace(".", "/") + ".py")
            for s in list_sites(path, cfg["only"]):
                print(f"{name} {path.relative_to(ROOT)}:{s.line} [{s.kind}] {s.desc}: {s.source_line}")
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    logdir = args.out / f"mutation-{stamp}-logs"
    logdir.mkdir(parents=True, exist_ok=True)
    _preimport()
    t0 = time.monotonic()
    reports = []
    for name in names:
        print(f"== {name} ({MODULES[name]['module']})", flush=True)
        reports.append(run_module(name, MODULES[name], args.max_mutants, args.seed, logdir))
    wall = time.monotonic() - t0

    print(f"\n{'module':22s} {'sites':>5s} {'run':>4s} {'killed':>6s} {'timeout':>7s} {'survived':>8s} "
          f"{'error':>5s} {'kill rate':>9s} {'time s':>7s}")
    tot_k = tot_n = 0
    for r in reports:
        rate = r.kill_rate
        tot_k += r.killed + r.timeout
        tot_n += r.killed + r.timeout + r.survived
        print(f"{r.name:22s} {r.sites_total:5d} {r.sites_run:4d} {r.killed:6d} {r.timeout:7d} {r.survived:8d} "
              f"{r.error:5d} {('%.0f%%' % (100 * rate)) if rate is not None else '-':>9s} {r.seconds:7.1f}")
    overall = tot_k / tot_n if tot_n else None
    print(f"{'total':22s} {'':5s} {'':4s} {'':6s} {'':7s} {'':8s} {'':5s} "
          f"{('%.0f%%' % (100 * overall)) if overall is not None else '-':>9s} {wall:7.1f}")
    print("\nsurvivors:")
    for r in reports:
        for res in r.results:
            if res.outcome == "survived":
                s = res.site
                print(f"  {r.path}:{s.line} [{s.desc}] {s.source_line}  =>  {res.mutated_line}")
    out = args.out / f"mutation-{stamp}.json"
    payload = {
        "command": " ".join(["bench/mutation.py", *(argv if argv is not None else sys.argv[1:])]),
        "max_mutants": args.max_mutants,
        "seed": args.seed,
        "wall_s": round(wall, 1),
        "kill_rate": overall,
        "modules": [
            {**{k: v for k, v in asdict(r).items() if k != "results"}, "kill_rate": r.kill_rate,
             "survivors": [{**asdict(x.site), "mutated_line": x.mutated_line} for x in r.results
                           if x.outcome == "survived"],
             "errors": [{**asdict(x.site), "outcome": x.outcome} for x in r.results
                        if x.outcome not in ("killed", "survived", "timeout")]}
            for r in reports
        ],
    }
    out.write_text(json.dumps(payload, indent=2))
    print(f"\nwrote {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
