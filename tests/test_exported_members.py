import cost_middleware

PUBLIC = {
    "BudgetExceeded", "ConfigError", "CostMiddleware", "CostRecord", "CostTracker", "Price",
    "PriceBook", "Settings", "Usage", "WSGICostMiddleware", "record_usage",
}


def test_all_is_exactly_the_public_names() -> None:
    assert set(cost_middleware.__all__) == PUBLIC


def test_every_public_name_resolves_and_belongs_to_us() -> None:
    for name in cost_middleware.__all__:
        member = getattr(cost_middleware, name)
        assert member.__module__.startswith("cost_middleware"), name
