"""The command line as an operator meets it: every expected failure is one line on stderr
(what, where, the fix) with its documented exit status, read-only commands never create a
ledger and name the one they read, and every command and option explains itself.

Commands run as subprocesses (``python -m cost_middleware``) in an empty temporary folder,
as a user runs them; the argparse tree is walked in process."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import textwrap
from importlib.metadata import version
from pathlib import Path

import pytest
import sqlalchemy as sa
from conftest import free_port
from test_report import ledger_records, write_ledger

from cost_middleware.ops.cli import EXIT_STATUS, _parser

NO_LEDGER_HINT = "(run from the app's folder or set COST_MIDDLEWARE_DATABASE_URL)"
#: Read-only commands: none may create a database file or a table.
READ_ONLY = [["report"], ["prices", "list"], ["prices", "show", "openai", "gpt-4o"],
             ["prices", "export"]]


def run(cwd: Path, *args: str, env: dict[str, str] | None = None,
        stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """``cost-middleware ARGS`` in ``cwd`` with only our variables of ``env`` set."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("COST_MIDDLEWARE_")}
    clean.update({"COST_MIDDLEWARE_STATSD": "off", "COLUMNS": "80", **(env or {})})
    return subprocess.run([sys.executable, "-m", "cost_middleware", *args], cwd=cwd,
                          env=clean, input=stdin, capture_output=True, text=True, timeout=60)


def error_line(result: subprocess.CompletedProcess[str]) -> str:
    """The one error line: the last line of stderr, and the only one besides ``ledger:``."""
    lines = result.stderr.splitlines()
    assert lines, result
    assert all(line.startswith("ledger: ") for line in lines[:-1]), result.stderr
    assert "Traceback" not in result.stderr
    return lines[-1]


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """An empty folder with a long path, so an error line is well past 80 columns."""
    path = tmp_path / ("another-folder-" * 5)
    path.mkdir()
    return path


# -- read-only commands never create a ledger ------------------------------------------------


@pytest.mark.parametrize("command", READ_ONLY, ids=" ".join)
def test_read_only_commands_in_another_folder_create_nothing(folder: Path,
                                                             command: list[str]) -> None:
    result = run(folder, *command)
    where = f"sqlite:///{folder / 'cost_middleware.db'}"
    assert result.returncode == 3
    assert result.stderr.splitlines()[0] == f"ledger: {where}"
    assert error_line(result) == f"error: no ledger at {where} {NO_LEDGER_HINT}"
    assert list(folder.iterdir()) == []


def test_doctor_in_another_folder_creates_nothing(folder: Path) -> None:
    result = run(folder, "doctor")
    where = f"sqlite:///{folder / 'cost_middleware.db'}"
    assert result.returncode == 1
    assert result.stderr == f"ledger: {where}\n"
    # One line per check, even piped: the detail is never wrapped.
    assert result.stdout.splitlines()[0] == (
        f"FAIL  database: {where}: tables missing (cost_records, model_prices); run "
        "`cost-middleware init` (no file there yet: run from the app's folder or set "
        "COST_MIDDLEWARE_DATABASE_URL)")
    assert list(folder.iterdir()) == []


def test_spool_status_creates_nothing(folder: Path) -> None:
    result = run(folder, "spool", "status")
    assert result.returncode == 0
    assert result.stdout == (f"0 records in 0 file(s), 0 bytes, in "
                             f"{folder / '.cost_middleware_spool'}\n")
    assert list(folder.iterdir()) == []


def test_read_only_commands_on_a_postgresql_database_without_tables(folder: Path,
                                                                    pg_url: str) -> None:
    where = sa.make_url(pg_url).render_as_string(hide_password=True)
    for command in READ_ONLY:
        result = run(folder, *command, env={"COST_MIDDLEWARE_DATABASE_URL": pg_url})
        assert result.returncode == 3, command
        assert error_line(result).startswith(f"error: no ledger at {where} (no tables there: ")
    engine = sa.create_engine(pg_url)
    try:
        with engine.connect() as conn:
            assert sa.inspect(conn).get_table_names() == []
    finally:
        engine.dispose()


def test_report_says_what_since_left_out(folder: Path) -> None:
    url = f"sqlite:///{folder / 'ledger.db'}"
    write_ledger(url, folder, ledger_records())
    env = {"COST_MIDDLEWARE_DATABASE_URL": url}
    result = run(folder, "report", "--since", "2099-01-01", env=env)
    assert result.returncode == 0
    assert result.stdout == ("No records since 2099-01-01 00:00:00 UTC; 16 records in the "
                             "ledger.\n")
    assert result.stderr == f"ledger: {url}\n"
    result = run(folder, "report", "--since", "30s", "--format", "json", env=env)
    assert result.returncode == 0 and json.loads(result.stdout)["rows"] == []


# -- the database cannot be reached ----------------------------------------------------------


def test_unreachable_postgresql(folder: Path) -> None:
    port = free_port()
    url = f"postgresql+psycopg://postgres:s3cret@127.0.0.1:{port}/cm"
    for command in (["report"], ["prices", "set", "acme", "m", "--input", "1", "--output", "2"]):
        result = run(folder, *command, env={"COST_MIDDLEWARE_DATABASE_URL": url})
        assert result.returncode == 3
        line = error_line(result)
        assert line.startswith(f"error: postgresql+psycopg://postgres:***@127.0.0.1:{port}/cm: "
                               "OperationalError: connection failed: ")
        assert "Connection refused" in line
        assert line.endswith("; check that the database is up and COST_MIDDLEWARE_DATABASE_URL "
                             "names it")
        assert "s3cret" not in result.stderr


def test_a_postgresql_database_that_does_not_exist(folder: Path, pg_server_url: str) -> None:
    url = sa.make_url(pg_server_url).set(database="cm_no_such_database")
    result = run(folder, "report",
                 env={"COST_MIDDLEWARE_DATABASE_URL": url.render_as_string(False)})
    assert result.returncode == 3
    line = error_line(result)
    assert line.startswith(f"error: {url.render_as_string(True)}: OperationalError: ")
    assert line.endswith('database "cm_no_such_database" does not exist; create it (createdb '
                         "cm_no_such_database) or set COST_MIDDLEWARE_DATABASE_URL")


@pytest.mark.parametrize("command", [["report"], ["init"]], ids=" ".join)
def test_a_sqlite_path_in_a_missing_folder(folder: Path, command: list[str]) -> None:
    result = run(folder, *command, env={"COST_MIDDLEWARE_DATABASE_URL": "sqlite:///gone/x.db"})
    assert result.returncode == 3
    assert error_line(result) == (
        f"error: sqlite:///{folder / 'gone' / 'x.db'}: OperationalError: unable to open "
        f"database file; the folder {folder / 'gone'} does not exist: create it, or run from "
        "the app's folder or set COST_MIDDLEWARE_DATABASE_URL")
    assert list(folder.iterdir()) == []


def test_postgresql_without_psycopg_names_the_extra(folder: Path, tmp_path: Path) -> None:
    shim = tmp_path / "no-psycopg"
    shim.mkdir()
    (shim / "psycopg.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'psycopg'\", name='psycopg')\n")
    result = run(folder, "report", env={
        "COST_MIDDLEWARE_DATABASE_URL": "postgresql://app:s3cret@db.internal/costs",
        "PYTHONPATH": str(shim)})
    assert result.returncode == 3
    assert error_line(result) == (
        "error: postgresql://app:***@db.internal/costs: ModuleNotFoundError: No module named "
        "'psycopg'; PostgreSQL needs the psycopg 3 driver: pip install "
        "'cost-middleware[postgresql]'")


# -- bad input -------------------------------------------------------------------------------


def test_prices_load_of_a_missing_file(folder: Path) -> None:
    result = run(folder, "prices", "load", "nofile.json")
    assert result.returncode == 2
    assert error_line(result) == "error: nofile.json: No such file or directory"
    assert list(folder.iterdir()) == []


@pytest.mark.parametrize(("text", "message"), [
    ("nope", "error: bad.json is not valid JSON ("),
    ('{"prices": {}}', "error: bad.json: field 'prices' must be a list"),
    ('{"prices": [{"provider": "acme"}]}', "error: bad.json: entry #0: field 'model' "),
])
def test_prices_load_of_a_malformed_catalog(folder: Path, text: str, message: str) -> None:
    (folder / "bad.json").write_text(text)
    result = run(folder, "prices", "load", "bad.json")
    assert result.returncode == 2
    assert error_line(result).startswith(message)
    assert [p.name for p in folder.iterdir()] == ["bad.json"]  # no ledger was opened


def test_prices_load_reads_stdin(folder: Path) -> None:
    catalog = {"prices": [{"provider": "acme", "model": "m-1", "input": "1", "output": "2"}]}
    result = run(folder, "prices", "load", "-", stdin=json.dumps(catalog))
    assert result.returncode == 0, result.stderr
    assert result.stdout == "1 price rows loaded.\n"
    shown = run(folder, "prices", "show", "acme", "m-1")
    assert shown.returncode == 0 and "m-1" in shown.stdout


@pytest.mark.parametrize(("since", "message"), [
    ("yesterday", "argument --since: not an ISO date/time: 'yesterday'; expected an age in "
                  "seconds, minutes, hours, days or weeks (30s, 15m, 24h, 7d, 2w) or an ISO "
                  "date/time"),
    ("99999999999d", "argument --since: too far back: '99999999999d'"),
])
def test_a_bad_since_is_one_line(folder: Path, since: str, message: str) -> None:
    result = run(folder, "report", "--since", since)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith(f"cost-middleware report: error: {message}")
    assert result.stderr.endswith("(see cost-middleware report --help)\n")


def test_a_bad_variable(folder: Path) -> None:
    result = run(folder, "report", env={"COST_MIDDLEWARE_BATCH_SIZE": "lots"})
    assert result.returncode == 2
    assert error_line(result).startswith("error: COST_MIDDLEWARE_BATCH_SIZE='lots'")


# -- the spool beside a running app ----------------------------------------------------------


HOLDER = textwrap.dedent("""
    import sys
    from cost_middleware import CostRecord, Usage
    from cost_middleware.engine.spool import Spool

    spool = Spool(sys.argv[1])
    spool.append([CostRecord(provider="openai", api="chat_completions", model="gpt-4o",
                             usage=Usage(input_tokens=10, output_tokens=5)) for _ in range(3)])
    print("ready", flush=True)
    sys.stdin.read()  # holds its spool file until told to exit
""")


def test_spool_files_held_by_a_running_process_are_named(folder: Path) -> None:
    spool = folder / "spool"
    env = {"COST_MIDDLEWARE_SPOOL_DIR": str(spool),
           "COST_MIDDLEWARE_DATABASE_URL": f"sqlite:///{folder / 'ledger.db'}"}
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(spool)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "ready\n"
        held = (f"3 records are in files held by running process(es) (pid {holder.pid}): each "
                "replays its own once its database writes succeed; once it exits, "
                "`cost-middleware spool replay` can.")
        status = run(folder, "spool", "status", env=env)
        assert status.returncode == 0
        assert status.stdout.splitlines()[0].startswith("3 records in 1 file(s), ")
        assert status.stdout.splitlines()[1] == held
        replay = run(folder, "spool", "replay", env=env)
        assert replay.returncode == 0
        assert replay.stdout.splitlines() == ["0 records replayed into the database.",
                                              f"Not replayed: {held}"]
    finally:
        holder.communicate("", timeout=30)
    replay = run(folder, "spool", "replay", env=env)
    assert replay.stdout == "3 records replayed into the database.\n"


# -- help and version ------------------------------------------------------------------------


def _commands(parser: argparse.ArgumentParser,
              path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    found = [(path, parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            listed = {choice.dest: choice.help for choice in action._choices_actions}
            for name, child in action.choices.items():
                assert listed.get(name), f"{' '.join((*path, name))} is listed without help"
                found += _commands(child, (*path, name))
    return found


def test_every_command_and_option_is_described() -> None:
    commands = _commands(_parser())
    assert len(commands) > 15
    for path, parser in commands:
        name = " ".join(path) or "cost-middleware"
        assert parser.description, f"{name} --help has no description"
        parser.format_help()  # a bad %-format in a help text fails here
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                continue
            assert action.help, f"{name} {action.dest} has no help"
            if action.default not in (None, False, argparse.SUPPRESS):
                assert "default" in action.help, f"{name} {action.dest} does not say its default"


def test_spool_help_lists_its_actions(folder: Path) -> None:
    result = run(folder, "spool", "--help")
    assert result.returncode == 0
    assert "status" in result.stdout and "replay" in result.stdout
    assert "count the records waiting" in result.stdout


def test_help_documents_the_exit_statuses(folder: Path) -> None:
    result = run(folder, "--help")
    assert result.returncode == 0
    assert EXIT_STATUS in result.stdout
    assert list(folder.iterdir()) == []


def test_version(folder: Path) -> None:
    import cost_middleware

    result = run(folder, "--version")
    assert result.returncode == 0
    assert result.stdout == f"cost-middleware {version('cost-middleware')}\n"
    assert cost_middleware.__version__ == version("cost-middleware")
