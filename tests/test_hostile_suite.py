"""The hostile-input suite's index (tests/hostile.py) names only tests that exist."""

from __future__ import annotations

import ast
from pathlib import Path

from hostile import CATEGORIES, categories_of

TESTS = Path(__file__).resolve().parent


def test_every_id_in_the_index_names_a_test() -> None:
    missing = []
    for _, ids in CATEGORIES.values():
        for test_id in ids:
            file, _, name = test_id.partition("::")
            path = TESTS / file
            if not path.exists():
                missing.append(test_id)
                continue
            names = {node.name for node in ast.parse(path.read_text()).body
                     if isinstance(node, ast.FunctionDef)}
            if name and name not in names:
                missing.append(test_id)
    assert missing == []


def test_ids_with_parameters_and_whole_files_are_categorized() -> None:
    assert categories_of("tests/test_db_cut.py::test_a_cut_logs_no_traceback") == ["database_cut"]
    assert categories_of("tests/test_decompress.py::test_arbitrary_bytes_never_raise[gzip]") == [
        "bad_encoding"]
    assert categories_of("tests/test_storage.py::test_round_trip_is_exact_in_every_column") == []
