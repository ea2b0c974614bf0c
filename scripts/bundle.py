"""`make bundle`: one deployable Cloud Functions directory per function.

    python -m scripts.bundle [--out build] [--list] [trading_execute] [scan_scheduler]

    build/<name>/main.py            functions/<name>/main.py, unchanged (entry point `<name>`)
    build/<name>/requirements.txt   functions/<name>/requirements.txt's pins, checked as below,
                                    then every distribution they bring, pinned (a lock)
    build/<name>/shared/…           the modules of `shared` main.py needs, and no other

Deploy the directory as it is (`gcloud functions deploy <name> --source build/<name> …`), or run
it from inside: `functions-framework --source main.py --target <name>`.

What goes in is decided by reading the code, not by a list kept by hand:
- Modules: an AST walk from main.py over every `import` and `from … import` statement anywhere in
  a module (function bodies too: a lazy import is still needed), resolving `shared.*` to files.
  Importing `shared.a.b` runs `shared/__init__.py` and `shared/a/__init__.py` first, so those come
  along. Only `shared` is vendored; importing another package of this repository (console, stack,
  sandbox, scripts, tests, bench, functions) fails the build.
- Forbidden modules (G3): the scanner must not need `shared.exchange.trade` nor `shared.execution`.
  If the walk reaches one, the build fails and prints the chain of imports that leads there. The
  built directory is then walked again: every import resolves inside it, and no forbidden file is
  in it.
- Requirements: each line of functions/<name>/requirements.txt must be the root requirements.txt's
  pin for that distribution, character for character; every third-party module the walk finds must
  come from a listed distribution or from one of their dependencies; every listed distribution must
  be imported or be a dependency of one that is (cryptography for PyJWT[crypto]). Which
  distribution provides which module, and what depends on what, is read from the metadata of the
  environment that runs this script (.venv, installed from requirements.txt).
- The lock: the bundle's requirements.txt lists the function's pins and then every distribution
  they depend on, transitively (extras and markers evaluated for this interpreter), each pinned
  `==` to the version installed here, read from its installed metadata (importlib.metadata), not
  from a list kept by hand. So the deployment installs exactly the set the suite ran with. The
  build fails when an installed version differs from its pin (run `make setup`). Markers are
  resolved, not copied: the lock is for this Python version (named in its header), which the
  deployment's runtime must match.
- Deterministic: the directory is rebuilt from scratch, files are copied byte for byte, modes are
  0644/0755 and every mtime is 1980-01-01, so the same sources give the same tree — and the same
  archive when gcloud zips it.
"""

from __future__ import annotations

import argparse
import ast
import importlib.metadata
import os
import shutil
import sys
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
FUNCTIONS = ("trading_execute", "scan_scheduler")
VENDORED = "shared"
# What each function must never need. The scanner holds no trade key and must not even be able to
# import the trade client (SPEC §1 G3); shared.execution is trading_execute's domain.
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "trading_execute": (),
    "scan_scheduler": ("shared.exchange.trade", "shared.execution"),
}
FIXED_MTIME = 315532800  # 1980-01-01T00:00:00Z, the earliest time a zip archive can hold
ENTRY = "main"


class BundleError(Exception):
    """The bundle cannot be built as asked; the message says what to change."""


@dataclass
class Walk:
    """What main.py needs: local modules (name → file), the importer that first needed each one
    (for chains), and the third-party top-level modules with their importers."""

    root: Path
    modules: dict[str, Path] = field(default_factory=dict)
    needed_by: dict[str, str] = field(default_factory=dict)
    third_party: dict[str, set[str]] = field(default_factory=dict)

    def chain(self, name: str) -> list[str]:
        links = [name]
        while links[-1] in self.needed_by:
            links.append(self.needed_by[links[-1]])
        return links[::-1]


@dataclass(frozen=True)
class Bundle:
    name: str
    path: Path
    files: tuple[str, ...]         # relative paths, sorted
    requirements: tuple[str, ...]  # functions/<name>/requirements.txt's pins
    locked: tuple[str, ...]        # the pins of what they bring, transitively (name==version)
    size: int                      # bytes of every file

    def summary(self) -> str:
        modules = sum(1 for f in self.files if f.startswith(f"{VENDORED}/"))
        return (f"{self.path}: main.py + {modules} modules of {VENDORED} ({self.size:,} bytes), "
                f"{len(self.requirements)} requirements + {len(self.locked)} dependencies, "
                f"all pinned")


# -- the import walk -------------------------------------------------------------------------------
def _local_file(root: Path, name: str) -> Path | None:
    base = root.joinpath(*name.split("."))
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    return None


def _imports(path: Path, module: str) -> Iterable[tuple[str, tuple[str, ...]]]:
    """(module, names imported from it) for every import statement in the file."""
    try:
        tree = ast.parse(path.read_bytes(), filename=str(path))
    except SyntaxError as exc:
        raise BundleError(f"{path} does not parse: {exc}") from None
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, ()
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".") if package else []
                if node.level > len(parts):
                    raise BundleError(f"{path}: a relative import beyond the top-level package")
                base = parts[:len(parts) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            if name != "__future__":
                yield name, tuple(alias.name for alias in node.names if alias.name != "*")


def _repository_packages(root: Path) -> set[str]:
    """Top-level packages of the repository other than the vendored one: never deployable."""
    return {p.name for p in root.iterdir()
            if p.is_dir() and (p / "__init__.py").is_file() and p.name != VENDORED} | {"functions"}


def walk(root: Path, entry: Path) -> Walk:
    """Every module main.py needs, transitively (see the module docstring)."""
    found = Walk(root=root)
    # In a repository (not in a built bundle, which has no functions/), its other packages.
    repository_only = _repository_packages(root) if (root / "functions").is_dir() else set()
    queue: deque[tuple[str, Path]] = deque([(ENTRY, entry)])

    def need(name: str, importer: str, *, optional: bool = False) -> None:
        top = name.split(".")[0]
        if top == VENDORED:
            parts = name.split(".")
            for depth in range(1, len(parts) + 1):
                prefix = ".".join(parts[:depth])
                path = _local_file(root, prefix)
                if path is None:
                    if optional and depth == len(parts):
                        return  # `from shared.x import name`: a name, not a module
                    raise BundleError(f"{importer} imports {name}, but {prefix} is not a module "
                                      f"under {root}")
                if prefix not in found.modules:
                    found.modules[prefix] = path
                    found.needed_by[prefix] = importer
                    queue.append((prefix, path))
        elif top in repository_only:
            raise BundleError(f"{importer} imports {name}: only {VENDORED} is vendored into a "
                              f"function; {top} is not deployable")
        elif top not in sys.stdlib_module_names and not optional:
            found.third_party.setdefault(top, set()).add(importer)

    while queue:
        module, path = queue.popleft()
        for name, names in _imports(path, module):
            need(name, module)
            for sub in names:
                need(f"{name}.{sub}", module, optional=True)
    return found


def check_forbidden(found: Walk, name: str) -> None:
    forbidden = FORBIDDEN[name]
    reached = sorted(m for m in found.modules
                     if any(m == f or m.startswith(f + ".") for f in forbidden))
    if reached:
        chains = "\n".join("  " + " → ".join(found.chain(m)) for m in reached)
        raise BundleError(f"{name} must not need {', '.join(forbidden)} (G3), but:\n{chains}")


# -- requirements -------------------------------------------------------------------------------
def _pins(path: Path) -> dict[str, tuple[str, Requirement]]:
    """canonical name → (the line without its comment, the requirement)."""
    pins: dict[str, tuple[str, Requirement]] = {}
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("-"):
            raise BundleError(f"{path}:{number}: options ({line}) are not allowed here")
        try:
            requirement = Requirement(line)
        except InvalidRequirement as exc:
            raise BundleError(f"{path}:{number}: {exc}") from None
        specs = list(requirement.specifier)
        if len(specs) != 1 or specs[0].operator != "==":
            raise BundleError(f"{path}:{number}: {line} is not an exact == pin")
        pins[canonicalize_name(requirement.name)] = (line, requirement)
    return pins


def _closure(requirements: Iterable[Requirement]) -> set[str]:
    """The canonical names of these distributions and of everything they depend on (with their
    extras, under this interpreter's markers), from the installed metadata."""
    seen: set[tuple[str, frozenset[str]]] = set()
    names: set[str] = set()
    stack = [(canonicalize_name(r.name), frozenset(r.extras)) for r in requirements]
    while stack:
        key = stack.pop()
        if key in seen:
            continue
        seen.add(key)
        name, extras = key
        names.add(name)
        try:
            requires = importlib.metadata.distribution(name).requires or []
        except importlib.metadata.PackageNotFoundError:
            raise BundleError(f"{name} is not installed in the build environment "
                              f"({sys.prefix}); run `make setup`") from None
        for spec in requires:
            requirement = Requirement(spec)
            marker = requirement.marker
            if marker is None or any(marker.evaluate({"extra": e}) for e in extras or {""}):
                stack.append((canonicalize_name(requirement.name), frozenset(requirement.extras)))
    return names


def _own_pins(name: str, root: Path) -> dict[str, tuple[str, Requirement]]:
    return _pins(root / "functions" / name / "requirements.txt")


def check_requirements(found: Walk, name: str, root: Path) -> tuple[str, ...]:
    """The function's pins, checked against the root file and against what the code imports."""
    own_file = root / "functions" / name / "requirements.txt"
    own, pinned = _own_pins(name, root), _pins(root / "requirements.txt")
    problems = []
    for key, (line, _) in own.items():
        if key not in pinned:
            problems.append(f"{line}: not pinned in requirements.txt")
        elif pinned[key][0] != line:
            problems.append(f"{line}: requirements.txt pins {pinned[key][0]}")
    if problems:  # the pins first: what follows reads the metadata of the pinned versions
        raise BundleError(f"{own_file.relative_to(root)}:\n" +
                          "\n".join(f"  {p}" for p in problems))

    providers = importlib.metadata.packages_distributions()
    available = _closure(r for _, r in own.values())  # what installing the pins brings
    imported: set[str] = set()                        # distributions whose modules are imported
    for top, importers in sorted(found.third_party.items()):
        dists = {canonicalize_name(d) for d in providers.get(top, [])}
        by = ", ".join(sorted(importers))
        if not dists:
            problems.append(f"{top} (imported by {by}) comes from no installed distribution")
        elif not dists & available:
            problems.append(f"{top} (imported by {by}) comes from {', '.join(sorted(dists))}, "
                            f"which is neither listed nor required by what is listed")
        imported |= dists
    used = _closure(r for key, (_, r) in own.items() if key in imported)
    for key, (line, _) in own.items():
        if key not in used:
            problems.append(f"{line}: listed, but nothing in the bundle imports it or needs it")
    if problems:
        raise BundleError(f"{own_file.relative_to(root)}:\n" +
                          "\n".join(f"  {p}" for p in problems))
    return tuple(line for line, _ in own.values())


def lock(name: str, root: Path) -> tuple[str, ...]:
    """`Name==version` for every distribution the function's pins bring and that they do not
    list themselves, sorted by name: the versions installed here, from their metadata. Refuses
    when an installed version is not the one pinned (the lock would not be what was tested)."""
    own = _own_pins(name, root)
    problems = []
    for line, requirement in own.values():
        installed = importlib.metadata.version(requirement.name)
        if not requirement.specifier.contains(installed, prereleases=True):
            problems.append(f"{line}: the build environment ({sys.prefix}) has {installed}; "
                            "run `make setup`")
    if problems:
        raise BundleError(f"functions/{name}/requirements.txt:\n" +
                          "\n".join(f"  {p}" for p in problems))
    pins = []
    for key in sorted(_closure(r for _, r in own.values()) - own.keys()):
        distribution = importlib.metadata.distribution(key)
        pins.append(f"{distribution.metadata['Name']}=={distribution.version}")
    return tuple(pins)


# -- building --------------------------------------------------------------------------------------
def build(name: str, out: Path, root: Path = ROOT) -> Bundle:
    """Build out/<name> from root's sources; raise BundleError (nothing written) when it cannot."""
    if name not in FORBIDDEN:
        raise BundleError(f"unknown function {name!r}: one of {', '.join(FUNCTIONS)}")
    entry = root / "functions" / name / "main.py"
    found = walk(root, entry)
    check_forbidden(found, name)
    requirements = check_requirements(found, name, root)
    locked = lock(name, root)

    files: dict[str, bytes] = {"main.py": entry.read_bytes()}
    for path in found.modules.values():
        files[path.relative_to(root).as_posix()] = path.read_bytes()
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    files["requirements.txt"] = (
        f"# {name}'s runtime (built by `make bundle`, for Python {python}).\n"
        f"# functions/{name}/requirements.txt, each pin as in requirements.txt:\n"
        + "".join(f"{line}\n" for line in requirements)
        + "# Everything they depend on, pinned to the version installed in the build environment"
        "\n# (read from its metadata):\n"
        + "".join(f"{line}\n" for line in locked)
    ).encode()

    out.mkdir(parents=True, exist_ok=True)
    staging = out / f".{name}.building"
    shutil.rmtree(staging, ignore_errors=True)
    for relative in sorted(files):
        target = staging / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(files[relative])
    _normalise(staging)
    verify_built(staging, name)
    final = out / name
    shutil.rmtree(final, ignore_errors=True)
    os.replace(staging, final)
    return Bundle(name=name, path=final, files=tuple(sorted(files)), requirements=requirements,
                  locked=locked, size=sum(len(b) for b in files.values()))


def _normalise(directory: Path) -> None:
    paths = sorted(directory.rglob("*"), reverse=True)  # children before their folders
    for path in [*paths, directory]:
        path.chmod(0o755 if path.is_dir() else 0o644)
        os.utime(path, (FIXED_MTIME, FIXED_MTIME))


def verify_built(directory: Path, name: str) -> None:
    """The built directory stands alone: main.py's imports resolve inside it, nothing forbidden
    is reached or even present."""
    found = walk(directory, directory / "main.py")
    check_forbidden(found, name)
    present = sorted(p.relative_to(directory).with_suffix("").as_posix().replace("/", ".")
                     for p in directory.rglob("*.py"))
    stray = [m for m in present if any(m == f or m.startswith(f + ".") for f in FORBIDDEN[name])]
    if stray:
        raise BundleError(f"{name}'s bundle contains {', '.join(stray)} (G3)")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.bundle", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("functions", nargs="*", metavar="FUNCTION",
                        help=f"default: {' '.join(FUNCTIONS)}")
    parser.add_argument("--out", type=Path, default=ROOT / "build",
                        help="where to write <function>/ (default: build/)")
    parser.add_argument("--list", action="store_true", help="print every file of each bundle")
    args = parser.parse_args(argv)
    try:
        for name in args.functions or FUNCTIONS:
            bundle = build(name, args.out)
            print(bundle.summary())
            if args.list:
                for relative in bundle.files:
                    print(f"  {relative}")
    except BundleError as exc:
        print(f"make bundle: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
