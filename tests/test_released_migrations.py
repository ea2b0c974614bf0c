"""Released migrations never change (scripts.release): the rules on this checkout — the gate
`make test` runs — and the rules and `cut` on scratch copies: an edited, renamed or deleted
released file, an unreleased file that sorts before the last released one, a file misnamed, a
manifest gone or edited by hand, each named with what to do."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from scripts import release
from stack.cluster import MIGRATIONS, ROOT

LATER = "29991231000000_later.sql"
LATER_SQL = "set lock_timeout = '5s';\n\nalter table public.scan_jobs add column note text;\n"


def test_no_released_migration_changed_and_every_later_one_comes_after() -> None:
    manifest = release.load(release.MANIFEST)
    problems = release.problems(MIGRATIONS, manifest)
    assert not problems, "\n".join(problems)
    assert release.MANIFEST == ROOT / "supabase" / "released-migrations.json"
    # The CLI would warn about (and skip) any other file among the migrations.
    assert not [p.name for p in MIGRATIONS.iterdir() if p.suffix != ".sql"]


@pytest.fixture
def project(tmp_path: Path) -> tuple[Path, Path]:
    """A scratch copy of the migrations and an empty manifest."""
    folder = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS, folder)
    manifest = tmp_path / "released-migrations.json"
    release.save(release.Manifest(), manifest)
    return folder, manifest


def cut(project: tuple[Path, Path], name: str) -> release.Release:
    folder, manifest = project
    return release.cut(name, folder, manifest)


def problems(project: tuple[Path, Path]) -> list[str]:
    folder, manifest = project
    return release.problems(folder, release.load(manifest))


def test_a_cut_releases_every_migration_with_its_checksum(project: tuple[Path, Path]) -> None:
    folder, manifest = project
    files = sorted(p.name for p in folder.glob("*.sql"))
    assert release.unreleased(folder, release.load(manifest)) == files
    first = cut(project, "v1")
    assert sorted(first.migrations) == files
    written = json.loads(manifest.read_text())
    assert written["releases"] == [{"name": "v1", "migrations": {
        name: release.sha256(folder / name) for name in files}}]
    assert "never changes" in written["about"]
    assert problems(project) == [] and release.unreleased(folder, release.load(manifest)) == []

    (folder / LATER).write_text(LATER_SQL)
    assert problems(project) == []
    assert release.unreleased(folder, release.load(manifest)) == [LATER]
    assert sorted(cut(project, "v2").migrations) == [LATER]
    assert [r.name for r in release.load(manifest).releases] == ["v1", "v2"]
    assert release.load(manifest).last == LATER


def test_an_edited_released_migration_is_named_with_what_to_do(project: tuple[Path, Path]) -> None:
    folder, _ = project
    cut(project, "v1")
    edited = sorted(folder.glob("*.sql"))[2]
    edited.write_text(edited.read_text() + "\n-- one more comment\n")
    [problem] = problems(project)
    assert problem.startswith(f"{edited.name} is released (in v1) but has changed (sha256 ")
    last = sorted(folder.glob("*.sql"))[-1].name
    assert problem.endswith(f"put the change in a new migration file that sorts after {last} "
                            "(supabase/migrations/<YYYYMMDDHHMMSS>_<name>.sql with a later "
                            "timestamp)"), problem
    with pytest.raises(release.ReleaseError, match="cannot cut a release while a rule is broken"):
        cut(project, "v2")


def test_a_renamed_or_deleted_released_migration_is_named(project: tuple[Path, Path]) -> None:
    folder, _ = project
    cut(project, "v1")
    files = sorted(folder.glob("*.sql"))
    renamed = files[1]
    renamed.rename(folder / LATER)
    assert problems(project) == [
        f"{renamed.name} is released (in v1) but was renamed to {LATER}: a project that applied "
        f"it would apply it again under the new name; give it back its name, {renamed.name}"]
    (folder / LATER).rename(renamed)
    files[3].unlink()
    [problem] = problems(project)
    assert problem.startswith(f"{files[3].name} is released (in v1) but is gone from {folder}: "
                              "restore it (git checkout); to undo what it did, write a new "
                              "migration file that sorts after"), problem


def test_an_unreleased_migration_must_sort_after_the_last_released_one(
        project: tuple[Path, Path]) -> None:
    folder, _ = project
    cut(project, "v1")
    files = sorted(folder.glob("*.sql"))
    early = f"{int(files[-1].name[:14]) - 1}_early.sql"
    (folder / early).write_text(LATER_SQL)
    assert problems(project) == [
        f"{early} is not released and sorts before {files[-1].name}, the last released "
        "migration: `supabase db push` refuses a migration older than the newest one a project "
        "has applied. Give it a later timestamp (rename it to <YYYYMMDDHHMMSS>_early.sql with a "
        f"timestamp after {files[-1].name[:14]})"]


def test_a_misnamed_migration_file_is_named(project: tuple[Path, Path]) -> None:
    folder, _ = project
    (folder / "29991231000000_Later-Thing.sql").write_text(LATER_SQL)
    assert problems(project) == [
        "29991231000000_Later-Thing.sql is not named <YYYYMMDDHHMMSS>_<name>.sql (lower-case "
        "letters, digits and _ in the name): the Supabase CLI skips or misorders it; rename it"]


def test_cut_refuses_a_taken_or_bad_name_and_an_empty_release(project: tuple[Path, Path]) -> None:
    folder, manifest = project
    with pytest.raises(release.ReleaseError, match="is not a release name"):
        cut(project, "-v1 ")
    cut(project, "v1")
    (folder / LATER).write_text(LATER_SQL)
    with pytest.raises(release.ReleaseError, match="already a release named 'v1'"):
        cut(project, "v1")
    (folder / LATER).unlink()
    before = manifest.read_text()
    with pytest.raises(release.ReleaseError, match="nothing to release: every migration of "):
        cut(project, "v2")
    assert manifest.read_text() == before


@pytest.mark.parametrize(("text", "why"), [
    (None, "is missing: it lists the released migrations"),
    ("{", "is not a valid manifest"),
    ('{"releases": [{"name": "v1", "migrations": {"20260101000000_a.sql": "00"}}]}',
     "is not a sha256"),
    ('{"releases": [{"name": "v1", "migrations": {"20260101000000_a.sql": "' + "0" * 64 + '"}},'
     ' {"name": "v1", "migrations": {"20260102000000_b.sql": "' + "0" * 64 + '"}}]}',
     "release 'v1' is listed twice"),
    ('{"releases": [{"name": "v1", "migrations": {"20260102000000_b.sql": "' + "0" * 64 + '"}},'
     ' {"name": "v2", "migrations": {"20260101000000_a.sql": "' + "0" * 64 + '"}}]}',
     "does not sort after 20260102000000_b.sql"),
    ('{"releases": [{"name": "v1", "migrations": {}}]}', "names at least one migration"),
])
def test_a_manifest_gone_or_edited_by_hand_is_refused(tmp_path: Path, text: str | None,
                                                      why: str) -> None:
    path = tmp_path / "released-migrations.json"
    if text is not None:
        path.write_text(text)
    with pytest.raises(release.ReleaseError, match=why):
        release.load(path)


def test_the_command_line(project: tuple[Path, Path]) -> None:
    folder, manifest = project
    paths = ["--migrations", str(folder), "--manifest", str(manifest)]

    def run(*args: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        code = release.main([*paths, *args], out=out, err=err)
        return code, out.getvalue(), err.getvalue()

    files = sorted(p.name for p in folder.glob("*.sql"))
    assert run("check") == (0, f"no release cut yet; {len(files)} not released yet: "
                               f"{', '.join(files)}\n", "")
    code, out, err = run("cut", "v1")
    assert (code, err) == (0, "")
    assert out.startswith(f"released v1: {len(files)} migration(s), {files[0]} … {files[-1]}; "
                          f"commit {manifest}.")
    assert run("check") == (0, f"{len(files)} released migrations in 1 release(s), the last "
                               f"'v1' up to {files[-1]}; 0 not released yet\n", "")
    (folder / files[0]).write_text("-- edited\n")
    code, out, err = run("check")
    assert (code, out) == (1, "")
    assert err.startswith(f"released migrations: {files[0]} is released (in v1) but has changed")
    code, out, err = run("cut", "v2")
    assert (code, out) == (1, "")
    assert err.startswith("release: cannot cut a release while a rule is broken:\n  - ")


def test_make_release_needs_a_name() -> None:
    made = subprocess.run(["make", "--no-print-directory", "release"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, check=False)
    assert made.returncode == 2, made.stdout + made.stderr
    assert "usage: make release NAME=<name>" in made.stdout + made.stderr
