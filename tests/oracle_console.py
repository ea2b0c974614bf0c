"""Running the operator console in the tests: the real entry point (`console.cli.main`)
in-process with captured output, or `python -m console` as a subprocess. No test module here;
shared helpers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from console.cli import main

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Run:
    code: int
    out: str
    err: str

    @property
    def json(self) -> Any:
        return json.loads(self.out)


def oracle(capsys: pytest.CaptureFixture[str], *argv: str,
           env: Mapping[str, str] | None = None) -> Run:
    """`oracle ARGV…` in-process. The environment is exactly `env` (never the caller's own
    DATABASE_URL or SUPABASE_JWT_SECRET)."""
    capsys.readouterr()
    code = main(list(argv), environ=dict(env or {}))
    captured = capsys.readouterr()
    return Run(code, captured.out, captured.err)


def oracle_process(*argv: str, env: Mapping[str, str] | None = None) -> Run:
    """`python -m console ARGV…` in a child process, from the repository root."""
    full_env = {k: v for k, v in os.environ.items()
                if k not in ("DATABASE_URL", "SUPABASE_JWT_SECRET", "SUPABASE_JWT_ISSUER")}
    full_env.update(env or {})
    proc = subprocess.run([sys.executable, "-m", "console", *argv], cwd=ROOT, env=full_env,
                          capture_output=True, text=True, timeout=120, check=False)
    return Run(proc.returncode, proc.stdout, proc.stderr)
