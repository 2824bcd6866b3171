"""A newcomer's first run: ``cost-middleware demo`` in an empty folder is clean."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from cost_middleware import config


def test_the_demo_prints_no_warning_error_or_traceback(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items()
           if k not in config.ALL_VARIABLES and k != config.STANDARD_STATSD_HOST}
    result = subprocess.run(
        [str(Path(sys.executable).parent / "cost-middleware"), "demo", "--requests", "120"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "Cost by model" in result.stdout
    for word in ("WARNING", "ERROR", "Traceback", "warning", "no ASGI lifespan"):
        assert word not in output, output
