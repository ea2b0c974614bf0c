"""Released migrations: `supabase/released-migrations.json` names every migration file that has
been released, by release, with the sha256 of its bytes. Once released a migration may be pushed
to a project at any time after, and `supabase db push` never applies a version it has recorded
again: an edit would never reach that project, a renamed file would be applied a second time. So
a released file never changes; a schema change is a new migration file that sorts after the last
released one.

    python -m scripts.release check          # the rules below; exit 1 with what to do
    python -m scripts.release cut NAME       # `make release NAME=…`: release every migration
                                             # not released yet, as release NAME

The rules (`make test` checks them: tests/test_released_migrations.py):
- every released file is there, under its name, with the bytes it was released with;
- every migration not released yet sorts after the last released one (the CLI refuses to push a
  migration older than the newest one a project has, unless told `--include-all`);
- every *.sql in supabase/migrations is named `<YYYYMMDDHHMMSS>_<name>.sql` (the CLI skips other
  names).
`cut` refuses while any rule is broken, when the name is taken, and when nothing is new.
The upgrade test (tests/test_upgrade.py) reads the same manifest to know which migrations a
deployed database may already have (the released ones) and which it would get next.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import IO

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

ROOT = Path(__file__).resolve().parent.parent
MIGRATIONS = ROOT / "supabase" / "migrations"
# Next to the migrations, not among them: the CLI warns about every file there that is not one.
MANIFEST = ROOT / "supabase" / "released-migrations.json"

MIGRATION_NAME = re.compile(r"^(\d{14})_[a-z0-9_]+\.sql$")
RELEASE_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
SHA256 = re.compile(r"^[0-9a-f]{64}$")
ABOUT = ("The released migrations of supabase/migrations, by release, with the sha256 of each "
         "file's bytes. A released migration never changes: put a schema change in a new "
         "migration file that sorts after the last released one. Written by `make release "
         "NAME=...` (python -m scripts.release cut); checked by `make test`.")


class ReleaseError(Exception):
    """The manifest cannot be read, or a release cannot be cut; the message says what to do."""


class Release(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=RELEASE_NAME)
    migrations: dict[str, str]  # file name → sha256 of its bytes

    @field_validator("migrations")
    @classmethod
    def _files(cls, value: dict[str, str]) -> dict[str, str]:
        if not value:
            raise ValueError("a release names at least one migration")
        for name, digest in value.items():
            if not MIGRATION_NAME.match(name):
                raise ValueError(f"{name!r} is not a migration file name")
            if not SHA256.match(digest):
                raise ValueError(f"{name}: {digest!r} is not a sha256 in lower-case hex")
        return dict(sorted(value.items()))


class Manifest(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    about: str = ABOUT
    releases: tuple[Release, ...] = ()

    @field_validator("releases")
    @classmethod
    def _in_order(cls, value: tuple[Release, ...]) -> tuple[Release, ...]:
        names: set[str] = set()
        last = ""
        for release in value:
            if release.name in names:
                raise ValueError(f"release {release.name!r} is listed twice")
            names.add(release.name)
            first = min(release.migrations)
            if first <= last:
                raise ValueError(f"release {release.name!r} has {first}, which does not sort "
                                 f"after {last}, the last file of the release before it")
            last = max(release.migrations)
        return value

    @property
    def released(self) -> dict[str, tuple[str, str]]:
        """file name → (sha256, release name), in file-name order."""
        return {name: (digest, release.name) for release in self.releases
                for name, digest in release.migrations.items()}

    @property
    def last(self) -> str | None:
        """The last released file, or None before the first release."""
        return max(self.released, default=None)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load(path: Path = MANIFEST) -> Manifest:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ReleaseError(f"{path} is missing: it lists the released migrations (before the "
                           'first release: {"releases": []}); restore it from git') from None
    try:
        return Manifest.model_validate_json(text)
    except ValidationError as exc:
        raise ReleaseError(f"{path} is not a valid manifest: {exc}") from None


def save(manifest: Manifest, path: Path = MANIFEST) -> None:
    path.write_text(json.dumps(manifest.model_dump(mode="json"), indent=2) + "\n",
                    encoding="utf-8")


def migration_paths(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.sql"))


def unreleased(folder: Path, manifest: Manifest) -> list[str]:
    """The migration files not released yet, in the order they apply."""
    released = manifest.released
    return [p.name for p in migration_paths(folder) if p.name not in released]


def problems(folder: Path, manifest: Manifest) -> list[str]:
    """Every broken rule (see the module docstring), each with what to do; none: all is well."""
    paths = {p.name: p for p in migration_paths(folder)}
    digests = {name: sha256(path) for name, path in paths.items()}
    released = manifest.released
    last = manifest.last
    later = (f"a new migration file that sorts after {last} (supabase/migrations/"
             "<YYYYMMDDHHMMSS>_<name>.sql with a later timestamp)")
    found = [f"{name} is not named <YYYYMMDDHHMMSS>_<name>.sql (lower-case letters, digits and "
             "_ in the name): the Supabase CLI skips or misorders it; rename it"
             for name in paths if not MIGRATION_NAME.match(name)]
    new = [name for name in paths if name not in released]
    renamed: set[str] = set()
    for name, (digest, release) in released.items():
        if name not in paths:
            copies = [other for other in new if digests[other] == digest]
            if copies:
                renamed.add(copies[0])
                found.append(f"{name} is released (in {release}) but was renamed to "
                             f"{copies[0]}: a project that applied it would apply it again "
                             f"under the new name; give it back its name, {name}")
            else:
                found.append(f"{name} is released (in {release}) but is gone from {folder}: "
                             f"restore it (git checkout); to undo what it did, write {later}")
        elif digests[name] != digest:
            found.append(f"{name} is released (in {release}) but has changed (sha256 "
                         f"{digest[:12]}… when released, {digests[name][:12]}… now): a "
                         "project that applied it never sees an edit. Restore it as released "
                         f"(git log -p -- supabase/migrations/{name} shows the edit) and put "
                         f"the change in {later}")
    if last is not None:
        found += [f"{name} is not released and sorts before {last}, the last released "
                  "migration: `supabase db push` refuses a migration older than the newest one "
                  "a project has applied. Give it a later timestamp (rename it to "
                  f"<YYYYMMDDHHMMSS>_{name.split('_', 1)[-1]} with a timestamp after "
                  f"{last.split('_', 1)[0]})"
                  for name in new if name < last and name not in renamed]
    return found


def cut(name: str, folder: Path = MIGRATIONS, path: Path = MANIFEST) -> Release:
    """Add release `name` with every migration not released yet, and write the manifest."""
    manifest = load(path)
    if not re.match(RELEASE_NAME, name):
        raise ReleaseError(f"{name!r} is not a release name: letters, digits, '.', '_' and '-', "
                           "starting with a letter or digit, at most 64 characters")
    if name in {r.name for r in manifest.releases}:
        raise ReleaseError(f"there is already a release named {name!r}: choose another name")
    broken = problems(folder, manifest)
    if broken:
        raise ReleaseError("cannot cut a release while a rule is broken:\n"
                           + "\n".join(f"  - {p}" for p in broken))
    new = unreleased(folder, manifest)
    if not new:
        raise ReleaseError(f"nothing to release: every migration of {folder} is released "
                           f"(the last: {manifest.last})")
    release = Release(name=name, migrations={n: sha256(folder / n) for n in new})
    save(Manifest(about=ABOUT, releases=(*manifest.releases, release)), path)
    return release


def describe(folder: Path, manifest: Manifest) -> str:
    new = unreleased(folder, manifest)
    if manifest.releases:
        state = (f"{len(manifest.released)} released migrations in {len(manifest.releases)} "
                 f"release(s), the last {manifest.releases[-1].name!r} up to {manifest.last}")
    else:
        state = "no release cut yet"
    return f"{state}; {len(new)} not released yet" + (f": {', '.join(new)}" if new else "")


def main(argv: Sequence[str] | None = None, out: IO[str] = sys.stdout,
         err: IO[str] = sys.stderr) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.release",
                                     description="Check the released migrations, or cut a "
                                                 "release.")
    parser.add_argument("--migrations", type=Path, default=MIGRATIONS,
                        help="the migrations folder (default: supabase/migrations)")
    parser.add_argument("--manifest", type=Path, default=MANIFEST,
                        help="the manifest (default: supabase/released-migrations.json)")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("check", help="every rule holds (exit 1 with what to do otherwise)")
    cutting = commands.add_parser("cut", help="release every migration not released yet")
    cutting.add_argument("name", help="the release's name, e.g. v1")
    args = parser.parse_args(argv)
    try:
        if args.command == "cut":
            release = cut(args.name, args.migrations, args.manifest)
            files = sorted(release.migrations)
            manifest = args.manifest.resolve()
            shown = manifest.relative_to(ROOT) if manifest.is_relative_to(ROOT) else manifest
            out.write(f"released {release.name}: {len(files)} migration(s), {files[0]} … "
                      f"{files[-1]}; commit {shown}. From now on these files "
                      "never change: a schema change is a new migration file after "
                      f"{files[-1]}.\n")
            return 0
        manifest = load(args.manifest)
        broken = problems(args.migrations, manifest)
        for problem in broken:
            err.write(f"released migrations: {problem}\n")
        if not broken:
            out.write(describe(args.migrations, manifest) + "\n")
        return 1 if broken else 0
    except ReleaseError as exc:
        err.write(f"release: {exc}\n")
        return 1


if __name__ == "__main__":
    sys.exit(main())
