"""`make bundle` (scripts/bundle.py, SPEC §7): each built directory is a Cloud Function alone.

- The listing: main.py, requirements.txt and the modules of `shared` main.py needs; the scanner's
  has no trade client (no shared/exchange/trade.py, no shared/execution/), by file listing, by the
  import walk of the built directory, and by an import in its own venv that fails.
- The bundle's requirements.txt is the function's pins, then a lock: every distribution they bring,
  pinned to the version installed in the build environment (from its metadata); installing it in
  an empty venv gives a `pip freeze` equal to those pins.
- The build refuses what must not ship: a scanner module that would need the trade client (the
  chain of imports is named, nothing is written), a pin that differs from requirements.txt or from
  what is installed, a third-party import no listed distribution provides, a listed distribution
  nothing needs, a repository package that is not vendored. Same sources → the same files, modes
  and mtimes.
- Each bundle runs in a clean venv made from its own requirements.txt only (pip, no index but a
  wheelhouse downloaded for exactly that file, cached under build/.pip-cache), served by that
  venv's `functions-framework --source main.py` from inside the directory, without the repository
  on the path, against the real test database and the sandbox: trading_execute answers 401, then
  executes a proposal (paper) and reconciles; the scanner's tick, with auto-execute pointed at the
  trading_execute bundle, claims, proposes and has the proposal executed.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from scripts import bundle
from shared.auth import dev_token
from tests.execute_harness import proposal, trader
from tests.function_server import FunctionServer, start_function
from tests.pg import Database
from tests.sandbox_server import SandboxServer
from tests.scan_support import (
    ALWAYS_SIGNAL,
    JWT_SECRET,
    SERVICE_KEY,
    build_world,
    scan_env,
    service_headers,
)
from tests.test_scan_imports import FORBIDDEN, PROBE

ROOT = Path(__file__).resolve().parent.parent
PIP_CACHE = ROOT / "build" / ".pip-cache"


# -- building --------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Both bundles, built as `make bundle` builds them (the CLI, in a child process)."""
    out = tmp_path_factory.mktemp("bundles")
    done = subprocess.run([sys.executable, "-m", "scripts.bundle", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("requirements") == 2, done.stdout
    return {name: out / name for name in bundle.FUNCTIONS}


def tree(directory: Path) -> dict[str, tuple[bytes, int, int]]:
    """Every file and folder: content, mode and mtime."""
    return {p.relative_to(directory).as_posix():
            (b"" if p.is_dir() else p.read_bytes(), p.stat().st_mode, int(p.stat().st_mtime))
            for p in sorted(directory.rglob("*"))}


def listing(directory: Path) -> list[str]:
    return [p.relative_to(directory).as_posix() for p in sorted(directory.rglob("*"))
            if p.is_file()]


def pins(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if line and not line.startswith("#")]


def canonical(pin: str) -> tuple[str, str]:
    """(canonical distribution name, version) of a `name[extras]==version` line."""
    requirement = Requirement(pin)
    (specifier,) = requirement.specifier
    return canonicalize_name(requirement.name), specifier.version


def test_each_bundle_holds_its_entry_point_its_pins_and_the_shared_modules_it_needs(
        bundles: dict[str, Path]) -> None:
    root_pins = set(pins(ROOT / "requirements.txt"))
    for name, directory in bundles.items():
        files = listing(directory)
        assert files[:2] == ["main.py", "requirements.txt"]
        assert all(f.startswith("shared/") and f.endswith(".py") for f in files[2:]), files
        assert (directory / "main.py").read_bytes() == \
            (ROOT / "functions" / name / "main.py").read_bytes()
        for relative in files[2:]:  # vendored byte for byte
            assert (directory / relative).read_bytes() == (ROOT / relative).read_bytes()
        own = pins(ROOT / "functions" / name / "requirements.txt")
        shipped = pins(directory / "requirements.txt")
        assert shipped[:len(own)] == own
        assert set(own) <= root_pins
        # Then the lock: every dependency pinned to the version installed here, none listed twice.
        locked = shipped[len(own):]
        assert locked == list(bundle.lock(name, ROOT))
        assert len({canonical(line) for line in shipped}) == len(shipped)
        for line in locked:
            distribution, version = line.split("==")
            assert importlib.metadata.version(distribution) == version, line
    trade, scan = (set(listing(bundles[n])) for n in ("trading_execute", "scan_scheduler"))
    assert {"shared/exchange/trade.py", "shared/execution/execute.py",
            "shared/execution/reconcile.py"} <= trade
    assert not any(f.startswith("shared/scanning/") for f in trade)
    assert {"shared/scanning/tick.py", "shared/exchange/readonly.py"} <= scan
    assert not [f for f in scan if f == "shared/exchange/trade.py"
                or f.startswith("shared/execution/")]
    assert any(p.startswith("openai==") for p in pins(bundles["scan_scheduler"] /
                                                         "requirements.txt"))
    assert not any(p.startswith("openai==") for p in pins(bundles["trading_execute"] /
                                                             "requirements.txt"))


def test_the_import_walk_of_the_built_scanner_reaches_no_trade_code(
        bundles: dict[str, Path]) -> None:
    directory = bundles["scan_scheduler"]
    found = bundle.walk(directory, directory / "main.py")
    assert "shared.scanning.tick" in found.modules and "shared.exchange.readonly" in found.modules
    assert all(path.is_relative_to(directory) for path in found.modules.values())
    assert [m for m in found.modules if m.startswith(FORBIDDEN)] == []
    # Every module shipped is needed, and every module needed is shipped.
    assert sorted(p.relative_to(directory).as_posix() for p in found.modules.values()) == \
        [f for f in listing(directory) if f.startswith("shared/")]
    # The same walk over the repository's own scanner finds exactly these modules.
    assert set(bundle.walk(ROOT, ROOT / "functions/scan_scheduler/main.py").modules) == \
        set(found.modules)


def test_the_same_sources_build_the_same_files(tmp_path: Path, bundles: dict[str, Path]) -> None:
    for name in bundle.FUNCTIONS:
        first = bundle.build(name, tmp_path / "one")
        second = bundle.build(name, tmp_path / "two")
        assert first.files == second.files
        assert tree(first.path) == tree(second.path) == tree(bundles[name])
        assert {mtime for _, _, mtime in tree(first.path).values()} == {bundle.FIXED_MTIME}
        # Building again over an existing bundle leaves nothing of the old one behind.
        (first.path / "stale.py").write_text("x = 1\n")
        assert tree(bundle.build(name, tmp_path / "one").path) == tree(second.path)


# -- what the build refuses ----------------------------------------------------------------------
@pytest.fixture
def sources(tmp_path: Path) -> Path:
    """A copy of what the build reads, to break."""
    root = tmp_path / "repo"
    shutil.copytree(ROOT / "shared", root / "shared",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "functions", root / "functions",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "requirements.txt", root / "requirements.txt")
    (root / "console").mkdir()
    (root / "console" / "__init__.py").write_text("")
    return root


def edit(path: Path, change: Callable[[str], str]) -> None:
    path.write_text(change(path.read_text()))


def refused(sources: Path, name: str) -> str:
    out = sources.parent / "out"
    with pytest.raises(bundle.BundleError) as caught:
        bundle.build(name, out, root=sources)
    assert not (out / name).exists()  # nothing half-built is left to deploy
    return str(caught.value)


@pytest.mark.parametrize("statement", [
    "from shared.exchange.trade import BitvavoTrade",
    "import shared.execution.results",
    "\ndef _later():\n    from shared.exchange import trade\n    return trade\n",  # a lazy import
])
def test_a_scanner_module_that_would_need_the_trade_client_fails_the_build_with_its_chain(
        sources: Path, statement: str) -> None:
    edit(sources / "shared/scanning/sizing.py", lambda text: text + "\n" + statement + "\n")
    message = refused(sources, "scan_scheduler")
    assert "scan_scheduler must not need shared.exchange.trade, shared.execution (G3)" in message
    chain = next(line.strip() for line in message.splitlines() if line.startswith("  "))
    assert chain.startswith("main → shared.scanning.tick → ")
    assert " → shared.scanning.sizing → shared.ex" in chain
    # trading_execute may need both: the same sources build it.
    assert bundle.build("trading_execute", sources.parent / "out", root=sources).files


@pytest.mark.parametrize(("name", "file", "change", "expected"), [
    ("scan_scheduler", "functions/scan_scheduler/requirements.txt",
     lambda t: t.replace("openai==2.54.0", "openai==2.53.0"),
     "openai==2.53.0: requirements.txt pins openai==2.54.0"),
    ("scan_scheduler", "functions/scan_scheduler/requirements.txt",
     lambda t: t.replace("openai==2.54.0", ""),
     "openai (imported by shared.scanning.gpt) comes from openai, which is neither listed"),
    ("trading_execute", "functions/trading_execute/requirements.txt",
     lambda t: t + "rich==15.0.0\n",
     "rich==15.0.0: listed, but nothing in the bundle imports it or needs it"),
    ("trading_execute", "functions/trading_execute/requirements.txt",
     lambda t: t + "left-pad==1.0.0\n", "left-pad==1.0.0: not pinned in requirements.txt"),
    ("trading_execute", "functions/trading_execute/requirements.txt",
     lambda t: t.replace("httpx==0.28.1", "httpx>=0.28"), "httpx>=0.28 is not an exact == pin"),
    ("trading_execute", "shared/auth.py", lambda t: t + "\nimport console\n",
     "shared.auth imports console: only shared is vendored into a function; console is not "
     "deployable"),
    ("trading_execute", "shared/auth.py", lambda t: t + "\nfrom shared import nowhere_module\n",
     None),  # a name that is no module: allowed here (Python fails it at import, not the build)
    ("trading_execute", "shared/auth.py", lambda t: t + "\nimport shared.nowhere_module\n",
     "shared.auth imports shared.nowhere_module, but shared.nowhere_module is not a module"),
])
def test_the_build_refuses_requirements_and_imports_that_do_not_fit(
        sources: Path, name: str, file: str, change: Callable[[str], str],
        expected: str | None) -> None:
    edit(sources / file, change)
    if expected is None:
        assert bundle.build(name, sources.parent / "out", root=sources).files
    else:
        assert expected in refused(sources, name)


def test_the_build_refuses_a_pin_the_build_environment_does_not_have(sources: Path) -> None:
    """The lock is read from what is installed: a pin that is not what is installed (the venv is
    behind requirements.txt) would ship an untested set, so the build stops."""
    installed = importlib.metadata.version("httpx")
    for file in ("requirements.txt", "functions/trading_execute/requirements.txt"):
        edit(sources / file, lambda text: text.replace(f"httpx=={installed}", "httpx==0.0.1"))
    assert f"httpx==0.0.1: the build environment ({sys.prefix}) has {installed}; run " \
        "`make setup`" in refused(sources, "trading_execute")


def test_the_command_line_says_what_is_wrong_and_exits_1(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert bundle.main(["nope"]) == 1
    assert "unknown function 'nope': one of trading_execute, scan_scheduler" in \
        capsys.readouterr().err


# -- each bundle in a clean venv of its own --------------------------------------------------------
def _pip(*args: str, isolated: bool) -> None:
    env = {k: v for k, v in os.environ.items() if not (isolated and k.startswith("PIP_"))}
    if isolated:  # the wheelhouse only: no index, no machine-wide find-links or config
        env["PIP_CONFIG_FILE"] = os.devnull
    done = subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check",
                           "--no-input", *args], env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def wheelhouse(requirements: Path) -> Path:
    """The wheels of exactly this requirements file, downloaded once (from the index pip is
    configured with) and kept under build/.pip-cache, keyed by the file's content."""
    digest = hashlib.sha256(requirements.read_bytes()).hexdigest()[:16]
    house = PIP_CACHE / "wheelhouse" / digest
    if not (house / ".complete").exists():
        staging = PIP_CACHE / "wheelhouse" / f".{digest}.{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        _pip("download", "--only-binary", ":all:", "--cache-dir", str(PIP_CACHE / "http"),
             "--dest", str(staging), "-r", str(requirements), isolated=False)
        (staging / ".complete").write_text(requirements.read_text())
        shutil.rmtree(house, ignore_errors=True)
        os.replace(staging, house)
    return house


class Venvs:
    """One clean venv per bundle per test session, made from the bundle's requirements.txt."""

    def __init__(self, bundles: dict[str, Path], base: Path) -> None:
        self.bundles, self.base = bundles, base
        self.made: dict[str, Path] = {}
        self.seconds: dict[str, float] = {}

    def __call__(self, name: str) -> Path:
        if name not in self.made:
            started = time.monotonic()
            requirements = self.bundles[name] / "requirements.txt"
            house = wheelhouse(requirements)
            venv = self.base / f"venv-{name}"
            subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)],
                           check=True, timeout=120)
            _pip("--python", str(venv / "bin" / "python"), "install", "--no-index",
                 "--find-links", str(house), "--no-compile", "-r", str(requirements),
                 isolated=True)
            self.made[name] = venv
            self.seconds[name] = time.monotonic() - started
            print(f"\n{name}: venv + pip install {self.seconds[name]:.1f} s")
        return self.made[name]

    def freeze(self, name: str) -> list[str]:
        """`pip freeze --all` of the bundle's venv (pip itself is not in it)."""
        done = subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check",
                               "--python", str(self(name) / "bin" / "python"), "freeze", "--all"],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout.splitlines()

    def python(self, name: str, code: str, *args: str) -> subprocess.CompletedProcess[str]:
        """`python -c code` in the bundle's venv, from inside the bundle, nothing else on the
        path."""
        return subprocess.run([str(self(name) / "bin" / "python"), "-c", code, *args],
                              cwd=self.bundles[name], env={"PATH": "/usr/bin:/bin"},
                              capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="session")
def venvs(bundles: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Venvs:
    return Venvs(bundles, tmp_path_factory.mktemp("venvs"))


@contextmanager
def serve(venvs: Venvs, name: str, env: dict[str, str]) -> Iterator[FunctionServer]:
    """The bundle served by its venv's functions-framework from inside its directory."""
    venv = venvs(name)
    assert "PYTHONPATH" not in env
    with start_function(name, env=env, source=Path("main.py"),
                        command=[str(venv / "bin" / "functions-framework")],
                        cwd=venvs.bundles[name]) as fn:
        yield fn


def execute_env(db: Database, sandbox: SandboxServer) -> dict[str, str]:
    return {"DATABASE_URL": db.authenticator_url, "SUPABASE_JWT_SECRET": JWT_SECRET,
            "SUPABASE_SERVICE_ROLE_KEY": SERVICE_KEY, "BITVAVO_REST_URL": sandbox.rest_url,
            "TRADING_MODE": "paper", "RECONCILE_MIN_AGE_SECONDS": "0"}


def test_each_venv_holds_its_requirements_and_not_the_repository(venvs: Venvs) -> None:
    for name in bundle.FUNCTIONS:
        probe = venvs.python(name, "import shared, sys; print(shared.__file__); "
                                   "import importlib.util as u; print(u.find_spec('console'), "
                                   "u.find_spec('pytest'), u.find_spec('openai') is not None)")
        assert probe.returncode == 0, probe.stderr
        where, found = probe.stdout.splitlines()
        assert Path(where).is_relative_to(venvs.bundles[name])  # the vendored copy
        assert found == f"None None {name == 'scan_scheduler'}"


def test_installing_a_bundles_requirements_gives_exactly_its_pins(venvs: Venvs) -> None:
    """The lock is complete: pip, installing the bundle's requirements.txt into an empty venv,
    installs every pinned distribution at its pinned version and nothing else (an unpinned
    transitive dependency would show up here with whatever version pip picked)."""
    for name in bundle.FUNCTIONS:
        expected = sorted(canonical(line) for line in pins(venvs.bundles[name] /
                                                           "requirements.txt"))
        assert sorted(canonical(line) for line in venvs.freeze(name)) == expected


def test_the_scanner_venv_cannot_import_the_trade_client(venvs: Venvs) -> None:
    for module, missing in (("shared.exchange.trade", "shared.exchange.trade"),
                            ("shared.execution", "shared.execution"),
                            ("shared.execution.execute", "shared.execution")):
        done = venvs.python("scan_scheduler", f"import {module}")
        assert done.returncode == 1
        assert f"ModuleNotFoundError: No module named '{missing}'" in done.stderr, done.stderr
    control = venvs.python("scan_scheduler",
                           "import shared.exchange.readonly, shared.scanning.tick")
    assert control.returncode == 0, control.stderr
    # Loading main.py as a cold start does (settings, clients) loads nothing forbidden.
    loaded = subprocess.run(
        [str(venvs("scan_scheduler") / "bin" / "python"), "-c", PROBE, "main.py"],
        cwd=venvs.bundles["scan_scheduler"], capture_output=True, text=True, timeout=120,
        env={"PATH": "/usr/bin:/bin", "DATABASE_URL": "postgresql://nobody@127.0.0.1:9/none",
             "SUPABASE_SERVICE_ROLE_KEY": SERVICE_KEY})
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    modules = json.loads(loaded.stdout.strip().splitlines()[-1])["modules"]
    assert "shared.scanning.tick" in modules
    assert [m for m in modules if m.startswith(FORBIDDEN)] == []


def test_the_trading_execute_bundle_serves_from_its_own_venv(
        venvs: Venvs, db: Database, bitvavo_sandbox: SandboxServer) -> None:
    user = trader(db)
    proposal_id = proposal(db, user)
    with serve(venvs, "trading_execute", execute_env(db, bitvavo_sandbox)) as fn:
        anonymous = fn.post("/", json={"proposal_id": str(proposal_id)},
                            headers={"Idempotency-Key": "bundle-1"})
        assert anonymous.status_code == 401
        assert anonymous.headers["content-type"] == "application/problem+json"
        assert anonymous.json()["status"] == 401

        executed = fn.post("/", json={"proposal_id": str(proposal_id)},
                           headers={"Idempotency-Key": "bundle-1",
                                    "Authorization": f"Bearer {dev_token(JWT_SECRET, user)}"})
        assert executed.status_code == 201, executed.text
        assert executed.json()["execution"]["status"] == "filled"

        reconciled = fn.post("/reconcile", json={}, headers=service_headers())
        assert reconciled.status_code == 200, reconciled.text
        assert set(reconciled.json()) >= {"examined", "settled", "failed", "errors"}
        assert "Traceback" not in fn.logs()


def test_the_scanner_bundle_ticks_from_its_own_venv_and_hands_on_to_the_trading_bundle(
        venvs: Venvs, db: Database, bitvavo_sandbox: SandboxServer) -> None:
    (user,) = build_world(db, users=1, markets=("BTC-EUR",),
                          settings={"auto_execute": True, "trading_enabled": True,
                                    "min_confidence": Decimal("0.5")})
    with serve(venvs, "trading_execute", execute_env(db, bitvavo_sandbox)) as executor:
        env = scan_env(db, bitvavo_sandbox, EXECUTE_FUNCTION_URL=executor.url + "/",
                       **ALWAYS_SIGNAL)
        with serve(venvs, "scan_scheduler", env) as scanner:
            user_token = dev_token(JWT_SECRET, user)
            assert scanner.post("/", json={}, headers={
                "Authorization": f"Bearer {user_token}"}).status_code == 401
            tick = scanner.post("/", json={"max_jobs": 5}, headers=service_headers())
            assert tick.status_code == 200, tick.text
            counts = tick.json()
            assert (counts["claimed"], counts["succeeded"], counts["failed"],
                    counts["proposals"], counts["executions_requested"]) == (1, 1, 0, 1, 1)
            assert "Traceback" not in scanner.logs() + executor.logs()
    rows = db.query("select e.status, e.idempotency_key = 'auto:' || p.id::text "
                    "from public.trade_executions e join public.trade_proposals p "
                    "on p.id = e.proposal_id where e.user_id = %s", (user,))
    assert rows == [("filled", True)]
