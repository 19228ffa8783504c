"""No import cycle among drpo's modules, counting the imports inside functions too; and `drpo --help` and a
config error start without torch.

A lazy import does not make a cycle harmless: it hides it from the reader, and the order in which the
modules are first imported decides whether it works. So the graph below has an edge for every
``import drpo...`` / ``from drpo... import`` anywhere in a module, parsed with ``ast`` (nothing is imported).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "drpo"


def modules() -> dict[str, Path]:
    """{dotted name: file} of every module and package of drpo."""
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imported(name: str, path: Path, known: set[str]) -> set[str]:
    """The drpo modules that module ``name`` imports, at any depth of its code."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from .x import y, from .. import z
                anchor = package
                for _ in range(node.level - 1):
                    anchor = anchor.rpartition(".")[0]
                base = f"{anchor}.{base}" if base else anchor
            # `from drpo.models import hf` imports the module drpo.models.hf; `import X` of a name, its module
            targets.update(f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names)
    return {t for t in targets if t in known and t != name}


def import_graph() -> dict[str, set[str]]:
    found = modules()
    return {name: imported(name, path, set(found)) for name, path in found.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as [a, b, ..., a], or None (depth-first search, three colours)."""
    state: dict[str, str] = {}  # absent: unvisited; "open": on the current path; "done": no cycle through it
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == "open":
                return [*path[path.index(target):], target]
            if target not in state and (cycle := visit(target)):
                return cycle
        state[node] = "done"
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_find_cycle_reports_the_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_the_graph_sees_imports_inside_functions():
    graph = import_graph()
    assert "drpo.lab.compare" in graph["drpo.cli"]  # imported in cmd_compare only
    assert "drpo.models.tokenizer" in graph["drpo.models"]  # a package's __init__ counts


def test_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


# torch takes seconds to import; matplotlib and transformers too. The parser (every subcommand's help) and the
# config's checks need none of them: `drpo --help` and `drpo train rollout.precision=fp4` answer at once.
HEAVY = ("torch", "matplotlib", "transformers", "scipy")


@pytest.mark.parametrize("steps", [
    # each step only adds to what the interpreter imported: none of them may bring in a heavy module
    ["import drpo", "import drpo.cli", "drpo.cli.build_parser()",
     "drpo.cli.build_parser().parse_args(['mismatch', 'run', '--rollouts', 'bf16'])"],
    # config errors: a bad value, an unknown key, a bad loss hyper-parameter next to a bad value, and the CLI's
    ["from drpo.config import ConfigError, load_config",
     *(f"try:\n    load_config(None, {overrides!r})\nexcept ConfigError:\n    pass\nelse:\n    raise AssertionError"
       for overrides in (["rollout.precision=fp4"], ["stepz=3"], ["loss.delta=-1", "steps=-1"])),
     "from drpo.cli import main\nassert main(['train', 'rollout.precision=fp4']) == 2"],
])
def test_help_and_config_errors_import_no_torch(steps):
    report = f"print(sorted(set({HEAVY!r}) & set(sys.modules)))"
    code = "\n".join(["import sys", *(f"{step}\n{report}" for step in steps)])
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    imported = dict(zip(steps, out.stdout.splitlines(), strict=True))
    assert all(heavy == "[]" for heavy in imported.values()), imported


def test_the_help_texts_are_the_modules_docstrings():
    from drpo.cli import module_doc
    from drpo.lab import compare
    from drpo.mismatch import format

    assert module_doc("drpo.lab.compare") == compare.__doc__
    assert module_doc("drpo.mismatch.format") == format.__doc__


# --- core and lab ---------------------------------------------------------------------------------------------
# The core (losses, trainer, behavior, models, tasks, config, drpo.mismatch, integrations, ...) never imports
# the lab (drpo.lab: sweeps, reports, verdicts, figures, the recommendation's evidence); the lab imports the
# core; drpo.cli, the command layer, is the one module that sees both.
LAB = "drpo.lab"
COMMAND_LAYER = "drpo.cli"
LAZY = "# lazy:"  # the reason an import of a core module sits inside a function, on its line or just above


def in_lab(name: str) -> bool:
    return name == LAB or name.startswith(LAB + ".")


def core_modules() -> dict[str, Path]:
    return {name: path for name, path in modules().items() if not in_lab(name) and name != COMMAND_LAYER}


def test_no_core_module_imports_the_lab():
    graph = import_graph()
    assert "drpo.lab.mismatch_report" in graph[COMMAND_LAYER]  # the checker sees the lab (cmd_mismatch's import)
    assert "drpo.mismatch.recommend" in graph["drpo.lab.evidence"]  # the lab imports the core
    upward = {name: sorted(t for t in graph[name] if in_lab(t) or t == COMMAND_LAYER) for name in core_modules()}
    upward = {name: targets for name, targets in upward.items() if targets}
    assert not upward, f"core modules importing the lab (move the code to drpo/lab/, or the import to cli.py): {upward}"
    lab_up = sorted(name for name, targets in graph.items() if in_lab(name) and COMMAND_LAYER in targets)
    assert not lab_up, f"lab modules importing the command layer: {lab_up}"


def function_imports(path: Path) -> list[tuple[int, str, bool]]:
    """(line, source, has a reason) of every import inside a function of ``path``. The reason is a ``# lazy:``
    comment on the import's lines, in the comment block just above it (a run of imports shares one), or in the
    comment block that opens the function's body (one reason for all of its imports)."""
    text = path.read_text()
    lines = text.splitlines()
    tree = ast.parse(text)
    imports = [node for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))]
    import_lines = {n for node in imports for n in range(node.lineno, node.end_lineno + 1)}
    enclosing = {}  # id(import) -> the innermost function around it (ast.walk goes outside in)
    for function in ast.walk(tree):
        if isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
            enclosing.update((id(node), function) for node in ast.walk(function)
                             if isinstance(node, (ast.Import, ast.ImportFrom)))

    def comment_above(line: int) -> bool:
        """A `# lazy:` in the comment block above ``line``, past other imports and blank lines."""
        n = line - 1
        while n >= 1 and (n in import_lines or not lines[n - 1].strip()):
            n -= 1
        while n >= 1 and lines[n - 1].lstrip().startswith("#"):
            if LAZY in lines[n - 1]:
                return True
            n -= 1
        return False

    def has_reason(node, function) -> bool:
        body = function.body
        docstring = isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) and len(body) > 1
        return (any(LAZY in lines[n - 1] for n in range(node.lineno, node.end_lineno + 1))
                or comment_above(node.lineno) or comment_above(body[1 if docstring else 0].lineno))

    return [(node.lineno, lines[node.lineno - 1].strip(), has_reason(node, enclosing[id(node)]))
            for node in imports if id(node) in enclosing]


def test_function_imports_reads_the_reasons(tmp_path):
    path = tmp_path / "m.py"
    path.write_text("import os\n\n\ndef f():\n    import json  # lazy: a reason\n    import re\n\n\n"
                    "def g():\n    # lazy: one reason for the run\n    # (on two lines)\n    import json\n\n"
                    "    from re import compile\n\n\ndef h():\n    x = 1  # lazy: not about the import\n    import json\n\n\n"
                    "def k():\n    \"\"\"Doc.\"\"\"\n    # lazy: one reason for the function\n    if os:\n        import json\n")
    assert [(line, ok) for line, _, ok in function_imports(path)] == [(5, True), (6, False), (12, True), (14, True),
                                                                      (19, False), (26, True)]


def test_core_imports_are_at_the_top_unless_a_reason_is_stated():
    """A core module imports what it uses at its top. An import inside a function needs its reason written next to
    it (``# lazy: ...``): an optional dependency, a heavy module kept off a fast path (`drpo --help`, a config
    error: test_help_and_config_errors_import_no_torch), or an import cycle broken on purpose."""
    unstated = [f"{path.relative_to(PACKAGE.parent)}:{line}: {source}" for name, path in sorted(core_modules().items())
                for line, source, ok in function_imports(path) if not ok]
    assert not unstated, "imports inside functions without a `# lazy:` reason:\n" + "\n".join(unstated)
