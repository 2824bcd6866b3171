"""The fixture corpus the provider tests are parametrized over is really there."""

from conftest import CORPUS_FIXTURES, LOCAL_FIXTURES, load_expected


def test_corpus_and_local_fixtures_are_loaded() -> None:
    entries = load_expected()
    dirs = {e["_dir"] for e in entries}
    assert str(CORPUS_FIXTURES) in dirs, f"missing {CORPUS_FIXTURES}/EXPECTED.json"
    assert str(LOCAL_FIXTURES) in dirs
    assert sum(e["_dir"] == str(CORPUS_FIXTURES) for e in entries) >= 37
