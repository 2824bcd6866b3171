"""The command line, run in process against a real SQLite file and real PostgreSQL."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from cost_middleware.ops.cli import main


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("COST_MIDDLEWARE_DATABASE_URL", f"sqlite:///{tmp_path / 'cli.db'}")
    monkeypatch.setenv("COST_MIDDLEWARE_SPOOL_DIR", str(tmp_path / "spool"))
    monkeypatch.setenv("COST_MIDDLEWARE_STATSD", "off")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_demo_runs_and_reports(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--requests", "300"]) == 0
    out = capsys.readouterr().out
    assert "Cost by model" in out and "Cost by tenant" in out
    assert "overhead p50" in out
    assert "acme" in out and "gpt-4o-mini" in out


def test_report_formats_after_demo(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main(["demo", "--requests", "200"])
    capsys.readouterr()
    assert main(["report", "--by", "tenant", "--format", "csv"]) == 0
    *rows, total = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert {r["tenant"] for r in rows} <= {"acme", "globex", "initech", "umbrella", "hooli"}
    assert sum(int(r["requests"]) for r in rows) == 200 == int(total["requests"])
    assert main(["report", "--by", "provider", "--since", "1h", "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)["rows"]
    assert {d["provider"] for d in data} == {"openai", "anthropic", "google_gemini"}
    assert all(d["cost_usd"].replace(".", "").isdigit() for d in data)
    assert main(["report", "--by", "route"]) == 0
    assert "/v1/messages" in capsys.readouterr().out


def test_prices_set_show_list_export_load(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["init"]) == 0
    assert main(["prices", "set", "acme", "acme-llm-9000", "--input", "1.5", "--output", "6",
                 "--cached-input", "0.15"]) == 0
    assert main(["prices", "show", "acme", "acme-llm-9000"]) == 0
    assert "acme-llm-9000" in capsys.readouterr().out
    assert main(["prices", "list", "--provider", "openai"]) == 0
    assert "gpt-4o" in capsys.readouterr().out
    out = env / "catalog.json"
    assert main(["prices", "export", "-o", str(out)]) == 0
    exported = json.loads(out.read_text())
    entry = next(p for p in exported["prices"] if p["model"] == "acme-llm-9000")
    assert entry["input"] == "1.5" and entry["cached_input"] == "0.15"
    exported["prices"] = [dict(entry, model="acme-llm-9001")]
    out.write_text(json.dumps(exported))
    assert main(["prices", "load", str(out)]) == 0
    assert main(["prices", "show", "acme", "acme-llm-9001"]) == 0


def test_bad_values_are_clear_errors(env: Path, capsys: pytest.CaptureFixture[str],
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(SystemExit):
        main(["prices", "set", "p", "m", "--input", "-1", "--output", "1"])
    assert "non-negative" in capsys.readouterr().err
    monkeypatch.setenv("COST_MIDDLEWARE_BATCH_SIZE", "lots")
    assert main(["report"]) == 2
    assert "COST_MIDDLEWARE_BATCH_SIZE='lots'" in capsys.readouterr().err


def test_doctor_and_spool_status(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main(["init"])
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert "database" in out and "redis" in out
    assert main(["spool", "status"]) == 0
    assert "0 records" in capsys.readouterr().out


def test_module_entry_point(env: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "cost_middleware", "--help"],
                            capture_output=True, text=True, check=True)
    assert "demo" in result.stdout and "prices" in result.stdout


def test_spool_replay_prices_and_stores(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import sqlalchemy as sa

    from cost_middleware import CostRecord, Usage
    from cost_middleware.engine.spool import Spool
    from cost_middleware.schema import cost_records

    spool = Spool(str(env / "spool"))
    spool.append([CostRecord(provider="openai", api="chat_completions", model="gpt-4o",
                             usage=Usage(input_tokens=2006, cached_input_tokens=1920,
                                         output_tokens=300)) for _ in range(3)])
    spool.close()
    assert main(["spool", "replay"]) == 0
    assert "3 records replayed" in capsys.readouterr().out
    engine = sa.create_engine(f"sqlite:///{env / 'cli.db'}")
    with engine.connect() as conn:
        costs = conn.execute(sa.select(cost_records.c.cost_usd)).scalars().all()
    engine.dispose()
    from decimal import Decimal

    assert costs == [Decimal("0.005615")] * 3
    assert main(["spool", "status"]) == 0
    assert "0 records" in capsys.readouterr().out
