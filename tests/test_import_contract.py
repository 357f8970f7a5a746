"""The house rule (../shared/DESIGN.md, "Layout"): imports only point down, and modules form no import cycle.

Every import of our own modules counts, at the top of a file or inside a function. A room may import itself and
any room below it, never one above it. The rules that matter most are also said one by one (RULES): the bottom
rooms stand alone, inference (infer/) knows nothing of evaluation, training or the command lines, evaluation and
training never import each other, and nothing imports a command line (commands/).
"""
import ast
import pathlib
import shutil

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "translocator_jax"

# Bottom to top. A module belongs to the room of its longest listed prefix; rooms on one line are side by side
# (neither may import the other).
LAYERS = (
    ("translocator_jax.paths",),
    ("translocator_jax.errors",),
    ("translocator_jax.geo",),
    ("translocator_jax.models",),
    ("translocator_jax.data.records",),
    ("translocator_jax.data.earth_patches",),
    ("translocator_jax.data.registry",),
    ("translocator_jax.data.build", "translocator_jax.data.pipeline"),
    ("translocator_jax.runtime",),
    ("translocator_jax.infer",),
    ("translocator_jax.eval", "translocator_jax.train"),
    ("translocator_jax.commands",),
)
RANK = {room: rank for rank, rooms in enumerate(LAYERS) for room in rooms}

PATHS, ERRORS, GEO, MODELS = (f"translocator_jax.{r}" for r in ("paths", "errors", "geo", "models"))
INFER, EVAL, TRAIN, COMMANDS = (f"translocator_jax.{r}" for r in ("infer", "eval", "train", "commands"))
# Each room's rule: which other rooms of ours it may import. Today errors and paths import nothing of ours, geo
# imports errors only, and models imports errors only (geo is open to it).
RULES = {
    PATHS: ("imports no other room of ours", lambda target: False),
    ERRORS: ("imports no other room of ours", lambda target: False),
    GEO: ("imports no room of ours but errors", lambda target: target == ERRORS),
    MODELS: ("imports no room of ours but errors and geo", lambda target: target in (ERRORS, GEO)),
    INFER: ("never imports eval, train or commands", lambda target: target not in (EVAL, TRAIN, COMMANDS)),
    EVAL: ("never imports train or commands", lambda target: target not in (TRAIN, COMMANDS)),
    TRAIN: ("never imports eval or commands", lambda target: target not in (EVAL, COMMANDS)),
}


def module_name(path: pathlib.Path, root: pathlib.Path) -> str:
  parts = list(path.relative_to(root.parent).with_suffix("").parts)
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(root: pathlib.Path, dotted: str) -> bool:
  path = root.parent / pathlib.Path(*dotted.split("."))
  return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def imported_modules(path: pathlib.Path, name: str, root: pathlib.Path) -> set[str]:
  """Our modules that `path` imports (anywhere in the file): `from pkg import module` counts as the module,
  `from module import name` as the module; relative imports resolved."""
  out = set()
  package = name if path.name == "__init__.py" else name.rpartition(".")[0]
  for node in ast.walk(ast.parse(path.read_text(), str(path))):
    if isinstance(node, ast.Import):
      out.update(a.name for a in node.names)
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] + ([base] if base else []))
      for a in node.names:
        out.add(f"{base}.{a.name}" if _is_module(root, f"{base}.{a.name}") else base)
  return {m for m in out if m == "translocator_jax" or m.startswith("translocator_jax.")}


def room_of(module: str) -> str | None:
  candidates = [r for r in RANK if module == r or module.startswith(r + ".")]
  return max(candidates, key=len) if candidates else None


def violations(root: pathlib.Path = PACKAGE) -> list[str]:
  """Every import that does not point down between rooms, every module outside the house, every import cycle."""
  problems, edges = [], {}
  for path in sorted(root.rglob("*.py")):
    name = module_name(path, root)
    targets = imported_modules(path, name, root)
    if path.name == "__init__.py" and not targets:
      continue  # a plain package marker
    room = room_of(name)
    if room is None:
      problems.append(f"{name}: in no room of the house (add it to LAYERS)")
      continue
    for target in sorted(targets):
      target_room = room_of(target)
      if target_room is not None and target_room != room and RANK[target_room] >= RANK[room]:
        problems.append(f"{name} imports {target}: {room} may not import {target_room} (not below it)")
      if _is_module(root, target):
        edges.setdefault(name, set()).add(target)
  problems += [f"import cycle: {' -> '.join(c)}" for c in _cycles(edges)]
  return problems


def rule_breaks(root: pathlib.Path = PACKAGE) -> list[str]:
  """Every import that breaks one of RULES, and every import of commands/ from outside it (nothing imports a
  command line)."""
  problems = []
  for path in sorted(root.rglob("*.py")):
    name = module_name(path, root)
    room = room_of(name)
    for target in sorted(imported_modules(path, name, root)):
      target_room = room_of(target)
      if target_room is None or target_room == room:
        continue
      if target_room == COMMANDS:
        problems.append(f"{name} imports {target}: nothing imports commands")
      elif room in RULES and not RULES[room][1](target_room):
        problems.append(f"{name} imports {target}: {room} {RULES[room][0]}")
  return problems


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
  """Cycles of the module graph found by a depth-first search (at least one per cycle that exists)."""
  found, state = [], {}

  def visit(node, stack):
    state[node] = "open"
    stack.append(node)
    for nxt in sorted(edges.get(node, ())):
      if state.get(nxt) == "open":
        found.append(stack[stack.index(nxt):] + [nxt])
      elif nxt not in state:
        visit(nxt, stack)
    stack.pop()
    state[node] = "done"

  for node in sorted(edges):
    if node not in state:
      visit(node, [])
  return found


def test_imports_only_point_down_and_form_no_cycle():
  assert violations() == []


def test_each_room_keeps_its_rule_and_nothing_imports_a_command_line():
  assert rule_breaks() == []
  assert set(RULES) <= set(RANK)  # every rule names a room of the house


def _house_copy(tmp_path) -> pathlib.Path:
  copy = tmp_path / "translocator_jax"
  shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__", "assets"))
  return copy


def test_an_upward_import_breaks_the_contract(tmp_path):
  copy = _house_copy(tmp_path)
  distance = copy / "geo" / "distance.py"
  distance.write_text(distance.read_text() + "\n\ndef _late():\n  from translocator_jax.train import loop\n")
  found = violations(copy)
  assert "translocator_jax.geo.distance imports translocator_jax.train.loop: translocator_jax.geo may not import " \
      "translocator_jax.train (not below it)" in found, found
  assert all("translocator_jax.geo.distance" in f for f in found), found  # the violation, and the cycles it makes


def test_a_sideways_import_and_a_package_cycle_break_the_contract(tmp_path):
  copy = _house_copy(tmp_path)
  loaders = copy / "data" / "pipeline" / "training.py"
  loaders.write_text(loaders.read_text() + "\nfrom translocator_jax.data.build import writer  # noqa\n")
  writer = copy / "data" / "build" / "writer.py"
  writer.write_text(writer.read_text() + "\nfrom translocator_jax.data.pipeline import training  # noqa\n")
  found = violations(copy)
  assert any("data.pipeline.training imports translocator_jax.data.build.writer" in f for f in found), found
  assert any("data.build.writer imports translocator_jax.data.pipeline.training" in f for f in found), found
  assert "import cycle: translocator_jax.data.build.writer -> translocator_jax.data.pipeline.training -> " \
      "translocator_jax.data.build.writer" in found, found


def _plant(copy: pathlib.Path, module: str, line: str) -> None:
  path = copy / module
  path.write_text(path.read_text() + f"\n\ndef _planted():\n  {line}\n")


def test_inference_importing_evaluation_or_training_breaks_the_contract(tmp_path):
  copy = _house_copy(tmp_path)
  _plant(copy, "infer/session.py", "from translocator_jax.eval import leakage")
  _plant(copy, "infer/predictor.py", "from translocator_jax.train import loss")
  found, rules = violations(copy), rule_breaks(copy)
  assert "translocator_jax.infer.session imports translocator_jax.eval.leakage: translocator_jax.infer may not " \
      "import translocator_jax.eval (not below it)" in found, found
  assert rules == [
      "translocator_jax.infer.predictor imports translocator_jax.train.loss: translocator_jax.infer never imports "
      "eval, train or commands",
      "translocator_jax.infer.session imports translocator_jax.eval.leakage: translocator_jax.infer never imports "
      "eval, train or commands"], rules


def test_evaluation_and_training_importing_each_other_break_the_contract(tmp_path):
  copy = _house_copy(tmp_path)
  _plant(copy, "eval/benchmark.py", "from translocator_jax.train import loop")
  _plant(copy, "train/loop.py", "from translocator_jax.eval import baselines")
  found, rules = violations(copy), rule_breaks(copy)
  assert any(f.startswith("translocator_jax.eval.benchmark imports translocator_jax.train.loop:") for f in found), found
  assert any(f.startswith("translocator_jax.train.loop imports translocator_jax.eval.baselines:") for f in found), found
  assert rules == [
      "translocator_jax.eval.benchmark imports translocator_jax.train.loop: translocator_jax.eval never imports "
      "train or commands",
      "translocator_jax.train.loop imports translocator_jax.eval.baselines: translocator_jax.train never imports "
      "eval or commands"], rules


def test_importing_a_command_line_breaks_the_contract(tmp_path):
  copy = _house_copy(tmp_path)
  _plant(copy, "eval/benchmark.py", "from translocator_jax.commands import evaluate")
  found, rules = violations(copy), rule_breaks(copy)
  assert any(f.startswith("translocator_jax.eval.benchmark imports translocator_jax.commands.evaluate:")
             for f in found), found
  assert rules == ["translocator_jax.eval.benchmark imports translocator_jax.commands.evaluate: nothing imports "
                   "commands"], rules


def test_a_bottom_room_importing_another_room_breaks_its_rule(tmp_path):
  copy = _house_copy(tmp_path)
  _plant(copy, "models/flops.py", "from translocator_jax.geo import distance")  # allowed: models may use geo
  _plant(copy, "errors.py", "from translocator_jax import paths")  # below it in LAYERS, yet errors stands alone
  _plant(copy, "geo/nearest.py", "from translocator_jax import paths")
  assert violations(copy) == []  # both point down: only the rules see them
  assert rule_breaks(copy) == [
      "translocator_jax.errors imports translocator_jax.paths: translocator_jax.errors imports no other room of ours",
      "translocator_jax.geo.nearest imports translocator_jax.paths: translocator_jax.geo imports no room of ours but "
      "errors"]
