"""The hostile-input suite: which tests prove what, by category (docs/RELIABILITY.md).

``python -m pytest -m hostile`` runs all of them; ``-m "hostile and compression_bomb"`` one
category. The categories are markers, given here in one place rather than in each file, so
this table is the suite's index; a test id that matches nothing fails the collection (a test
renamed without this table following it would otherwise drop out of the suite unseen).
"""

from __future__ import annotations

#: Category marker -> (what it is, test ids: ``file.py::name`` or a whole ``file.py``).
CATEGORIES: dict[str, tuple[str, tuple[str, ...]]] = {
    "compression_bomb": ("gzip, deflate and brotli bombs: bounded work and memory per read", (
        "test_decompress.py::test_bomb_is_stopped_without_allocating_its_output",
        "test_decompress.py::test_a_bomb_stops_at_the_ratio_within_its_first_reads",
        "test_decompress.py::test_credit_saved_by_incompressible_input_does_not_pay_for_a_bomb",
        "test_decompress.py::test_a_call_never_returns_more_than_a_step",
        "test_hostile_server.py::test_a_gzip_bomb_neither_holds_the_loop_nor_grows_memory",
    )),
    "bad_encoding": ("corrupt gzip, trailing garbage, unknown or stacked encodings", (
        "test_decompress.py::test_corrupt_input_sets_error_and_stops",
        "test_decompress.py::test_arbitrary_bytes_never_raise",
        "test_decompress.py::test_gzip_members_and_trailing_garbage",
        "test_decompress.py::test_deflate_ignores_bytes_after_the_stream",
        "test_decompress.py::test_unsupported_and_stacked_encodings",
    )),
    "dense_input": ("many tiny events, endless lines, deep nesting: a few ms per read", (
        "test_hostile_bodies.py::test_a_hostile_body_costs_a_few_milliseconds_per_read",
        "test_hostile_bodies.py::test_an_endless_line_costs_linear_time_in_any_reads",
        "test_hostile_bodies.py::test_a_tail_of_comments_is_held_bounded_then_refused",
        "test_hostile_bodies.py::test_hostile_bodies_reach_the_client_unchanged",
    )),
    "broken_text": ("lone surrogates and invalid UTF-8: the row is kept, usage exact", (
        "test_hostile_bodies.py::test_broken_text_in_a_body_still_leaves_a_row_with_exact_usage",
        "test_hostile_bodies.py::test_broken_text_in_a_stream_event_is_read_too",
    )),
    "huge_body": ("bodies over the body limit: billed from bounded ends", (
        "test_hostile_bodies.py::test_a_50_mb_body_is_billed_exactly_with_bounded_memory",
        "test_hostile_bodies.py::test_large_bodies_of_every_family_are_billed_as_if_read_whole",
        "test_hostile_bodies.py::test_a_large_body_cut_short_is_truncated_not_guessed",
        "test_hostile_bodies.py::test_a_large_body_whose_ends_hold_no_usage_is_too_large",
    )),
    "garbage": ("arbitrary bytes and format-like noise: never an exception, never a changed byte", (
        "test_usage_robustness.py::test_arbitrary_bytes_never_raise",
        "test_usage_robustness.py::test_format_like_noise_never_raises",
        "test_usage_robustness.py::test_garbage_readers_leave_no_state_behind",
        "test_usage_robustness.py::test_good_stream_after_noise_events_still_extracts",
        "test_asgi.py::test_bad_bodies_are_untouched_and_not_recorded_as_usage",
        "test_asgi.py::test_any_bytes_never_break_the_app",
    )),
    "wrong_types": ("any value of any type anywhere in a real body; impossible counts", (
        "test_usage_robustness.py::test_any_value_anywhere_in_a_real_body_never_raises",
        "test_usage_validation.py::test_invalid_counts_give_no_usage_and_a_skip_reason",
        "test_usage_validation.py::test_subsets_larger_than_their_totals_are_invalid",
        "test_usage_validation.py::test_json_that_is_not_a_provider_shape_is_skipped",
        "test_context.py::test_usage_of_the_wrong_type_is_an_internal_error_not_an_exception",
    )),
    "truncation": ("bodies and streams cut short: partial rows, never a guess", (
        "test_usage_validation.py::test_invalid_and_truncated_json_bodies",
        "test_capture.py::test_a_cut_stream_is_recorded_partial_with_the_last_values_seen",
        "test_capture.py::test_a_cut_stream_without_usage_yet_is_recorded_unpriced",
        "test_asgi.py::test_a_stream_cut_before_its_first_event_is_recorded_partial",
        "test_httpx_transport.py::test_a_stream_cut_by_the_network_is_partial_even_after_the_last_event",
        "test_decoders.py::test_json_array_cut_stream_yields_complete_elements_only",
    )),
    "injection": ("untrusted text never forges a metric, markup or a CSV formula; header text "
                  "stored as written", (
        "test_metrics.py::test_untrusted_values_cannot_forge_a_metric",
        "test_metrics.py::test_sanitize_keeps_only_safe_characters",
        "test_guard.py::test_untrusted_reasons_cannot_forge_a_metric_name",
        "test_render.py::test_untrusted_names_are_never_markup",
        "test_report.py::test_csv_never_starts_a_cell_with_a_formula",
        "test_report.py::test_csv_writes_control_characters_escaped",
        "test_header_text.py",
    )),
    "database_cut": ("the database cut, at any moment, the commit included", (
        "test_db_cut.py",
        "test_durability.py::test_ten_second_outage_loses_nothing_and_submit_stays_cheap",
    )),
    "restart": ("a restart after an outage replays at once, without a request", (
        "test_replay_at_start.py",
    )),
}


def categories_of(nodeid: str) -> list[str]:
    """The categories a collected test (``tests/file.py::name[param]``) belongs to."""
    path, _, name = nodeid.partition("::")
    file = path.rsplit("/", 1)[-1]
    test = name.split("[", 1)[0]
    return [category for category, (_, ids) in CATEGORIES.items()
            if file in ids or f"{file}::{test}" in ids]


def unmatched(nodeids: list[str]) -> list[str]:
    """Ids in :data:`CATEGORIES` that no collected test matches (checked on a full run)."""
    seen = set()
    for nodeid in nodeids:
        path, _, name = nodeid.partition("::")
        file = path.rsplit("/", 1)[-1]
        seen.update((file, f"{file}::{name.split('[', 1)[0]}"))
    return [i for _, ids in CATEGORIES.values() for i in ids if i not in seen]
