"""The package's structure, checked from the source (AST), so that it cannot drift from docs/ARCHITECTURE.md.

1. Import direction: library modules import no command module, no `mdlm.profiles`, no argparse and call no
   print(); command modules import no other command (shared glue lives in `mdlm.commands.common`).
2. DVC dependencies follow the imports: every stage of dvc.yaml that runs `mdlm <command>` lists, among its
   deps, every `mdlm` module its command module imports, directly or through other modules, at module level or
   inside functions (and the package data files those modules read).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "mdlm"
ENTRY_POINTS = {"mdlm", "mdlm.cli", "mdlm.__main__", "mdlm.api"}  # the CLI and the public API façade, not layers
DATA_FILES = {"mdlm.assets": ["mdlm/assets.yaml"]}  # files a module reads from the package itself


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
COMMANDS = {m for m in MODULES if m.startswith("mdlm.commands.") and m != "mdlm.commands.common"}
LIBRARY = {m for m in MODULES if not m.startswith("mdlm.commands") and m not in ENTRY_POINTS}


def imports_of(module: str) -> set[str]:
    """Every module that ``module`` imports anywhere in its source (module level or inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(MODULES[module].read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            # `from mdlm import evaluate` / `from mdlm.commands import sample` import submodules
            found |= {f"{node.module}.{alias.name}" for alias in node.names if f"{node.module}.{alias.name}" in MODULES}
    return found


def internal_imports(module: str) -> set[str]:
    return {m for m in imports_of(module) if m in MODULES and m != module}


def closure(module: str) -> set[str]:
    seen, todo = set(), [module]
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        todo += [d for d in internal_imports(m) if d not in ENTRY_POINTS and d != "mdlm.commands"]
    return seen


def calls_print(module: str) -> bool:
    tree = ast.parse(MODULES[module].read_text())
    return any(isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "print"
               for n in ast.walk(tree))


# ---- import direction --------------------------------------------------------------------------------------

# The layers of docs/ARCHITECTURE.md: a library module imports only from its own layer or lower ones.
LAYERS = {
    0: {"errors", "paths", "io", "config", "profiles", "clock"},  # profiles: read by commands only (test above)
    1: {"assets", "asset_manifest", "gpt2_files", "tokenizers", "schedule", "model", "onednn", "folded", "diffusion",
        "stats", "prefixes", "judge_reference", "judge_cache", "sampling_law", "fvcore_count"},
    2: {"corpus", "data", "checkpoints", "sampler", "sampler_reference", "sample_runs", "flops", "run_counts", "judge",
        "train", "timing"},
    3: {"evaluate", "importance", "patterns", "scores", "search", "optimize", "claims", "frontier", "ship", "plots"},
    4: {"prose", "frontier_report", "report", "stage_times"},
}
LAYER_OF = {f"mdlm.{m}": level for level, names in LAYERS.items() for m in names}


def test_every_library_module_has_a_layer():
    assert sorted(LIBRARY - set(LAYER_OF)) == [], "place the new module in LAYERS and in docs/ARCHITECTURE.md"
    assert sorted(set(LAYER_OF) - LIBRARY) == []


@pytest.mark.parametrize("module", sorted(LIBRARY))
def test_library_imports_flow_down_the_layers(module):
    up = sorted(m for m in internal_imports(module) if LAYER_OF.get(m, -1) > LAYER_OF[module])
    assert not up, f"{module} (layer {LAYER_OF[module]}) imports the higher-layer modules {up}"


@pytest.mark.parametrize("module", sorted(LIBRARY))
def test_library_modules_stay_below_the_commands(module):
    bad = sorted(m for m in imports_of(module)
                 if m == "argparse" or m == "mdlm.profiles" or m.startswith(("mdlm.commands", "mdlm.cli")))
    assert not bad, f"{module} imports {bad}: library code takes typed sections, never the profile or argv"
    assert not calls_print(module), f"{module} prints: library code returns results, commands print them"


@pytest.mark.parametrize("module", sorted(COMMANDS))
def test_commands_do_not_import_each_other(module):
    others = sorted(m for m in internal_imports(module) if m in COMMANDS)
    assert not others, f"{module} imports the commands {others}; shared glue belongs in mdlm.commands.common"


def test_every_cli_command_has_its_module():
    from mdlm.cli import COMMANDS as CLI

    assert {f"mdlm.commands.{c}" for c in CLI} == COMMANDS


def test_the_checks_can_fail():
    """The walker sees function-level imports and `from package import module` forms."""
    tree_imports = imports_of("mdlm.cli")
    assert "mdlm.commands.sample" in tree_imports  # imported inside command_module()


# ---- DVC deps follow the imports ------------------------------------------------------------------------

def stage_commands() -> list[tuple[str, list[str], list[str]]]:
    """(stage, [command modules its cmd runs], [deps]) for every stage of dvc.yaml."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    out = []
    for name, stage in stages.items():
        body = stage.get("do", stage)
        cmds = body["cmd"] if isinstance(body["cmd"], list) else [body["cmd"]]
        runs = sorted({f"mdlm.commands.{m}" for c in cmds for m in re.findall(r"\bmdlm\s+([a-z-]+)", c)})
        out.append((name, runs, [str(d) if not isinstance(d, dict) else next(iter(d)) for d in body["deps"]]))
    return out


def missing_deps(runs: list[str], deps: list[str]) -> list[str]:
    def covered(path: str) -> bool:
        return any(path == d or path.startswith(d.rstrip("/") + "/") for d in deps)

    needed = set()
    for command in runs:
        for m in closure(command):
            needed.add(str(MODULES[m].relative_to(ROOT)))
            needed.update(DATA_FILES.get(m, []))
    return sorted(p for p in needed if not covered(p))


@pytest.mark.parametrize("stage, runs, deps", stage_commands(), ids=[s[0] for s in stage_commands()])
def test_stage_deps_cover_the_imports_of_its_command(stage, runs, deps):
    assert runs, f"stage {stage} runs no `mdlm` command"
    assert set(runs) <= COMMANDS, f"stage {stage} runs unknown commands {sorted(set(runs) - COMMANDS)}"
    missing = missing_deps(runs, deps)
    assert not missing, f"dvc.yaml stage {stage}: deps lack {missing} (its command imports them)"


def test_the_deps_check_catches_a_missing_module():
    runs = ["mdlm.commands.sample"]
    assert "mdlm/model.py" in missing_deps(runs, ["mdlm/sampler.py"])
    assert missing_deps(runs, ["mdlm"]) == []
