"""A local fake AI provider (OpenAI, Anthropic and Gemini shapes) for the examples.

    uvicorn examples.fake_provider:app --port 9100
"""

from cost_middleware.ops.fake_provider import fake_provider_app as app

__all__ = ["app"]
