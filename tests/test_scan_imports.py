"""G3: the scanner cannot even import the trade client.

Importing functions/scan_scheduler/main.py (settings loaded, clients built — everything a cold
start does) in a fresh interpreter never loads shared.exchange.trade nor shared.execution, with
either oracle; and the function imports and builds from a bundle that has neither file at all
(what `make bundle` ships for the scanner).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
MAIN = REPO / "functions" / "scan_scheduler" / "main.py"
FORBIDDEN = ("shared.exchange.trade", "shared.execution")

PROBE = """
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("scan_scheduler_main", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
assert callable(module.scan_scheduler) and module.SCANNER is not None
print(json.dumps({"modules": sorted(sys.modules),
                  "shared": sys.modules["shared"].__file__,
                  "oracle": type(module.SCANNER.oracle).__name__}))
"""


def import_main(main: Path, pythonpath: Path, **env: str) -> dict[str, object]:
    full_env = {
        "PATH": "/usr/bin:/bin", "PYTHONPATH": str(pythonpath),
        # Nothing listens there: the pool connects in the background and nothing is called.
        "DATABASE_URL": "postgresql://nobody@127.0.0.1:9/none",
        "SUPABASE_SERVICE_ROLE_KEY": "sb_secret_import-probe-key-0000",
        **env,
    }
    done = subprocess.run([sys.executable, "-c", PROBE, str(main)], env=full_env,
                          cwd=pythonpath, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("env", [{}, {"ORACLE": "openai", "OPENAI_API_KEY": "sk-probe-1234567"}])
def test_g3_importing_the_scanner_never_loads_the_trade_client(env: dict[str, str]) -> None:
    loaded = import_main(MAIN, REPO, **env)
    modules = loaded["modules"]
    assert isinstance(modules, list)
    assert "shared.scanning.tick" in modules and "shared.exchange.readonly" in modules
    assert [m for m in modules if m.startswith(FORBIDDEN)] == []
    assert loaded["oracle"] == ("OpenAIOracle" if env else "RulesOracle")
    assert ("openai" in modules) == bool(env)  # ORACLE=rules never loads the SDK


def test_g3_the_scanner_runs_from_a_bundle_without_the_trade_client(tmp_path: Path) -> None:
    bundle = tmp_path / "scan_scheduler"
    bundle.mkdir()
    shutil.copy(MAIN, bundle / "main.py")
    shutil.copytree(REPO / "shared", bundle / "shared",
                    ignore=shutil.ignore_patterns("__pycache__", "execution", "trade.py"))
    assert not (bundle / "shared" / "exchange" / "trade.py").exists()
    assert not (bundle / "shared" / "execution").exists()
    loaded = import_main(bundle / "main.py", bundle)
    assert str(loaded["shared"]).startswith(str(bundle))
    assert [m for m in loaded["modules"] if m.startswith(FORBIDDEN)] == []  # type: ignore[union-attr]
