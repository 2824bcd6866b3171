"""Vendor API hosts → provider: what an outgoing call's host says about who serves it.

Only the httpx transport asks: the host it sends to is the app's own configuration. The
middleware never does, as a request's ``Host`` header is the client's to choose. Many vendors
serve OpenAI-shaped paths (``/v1/chat/completions``), so for those paths the host is the one
reliable name of the vendor; a host not listed here says nothing.
"""

from __future__ import annotations

from cost_middleware.usage import anthropic, bedrock, cohere, gemini, openai

#: Host (lower case; one ``*`` is any run of characters) → provider. The only provider names a
#: host can give, so their number stays bounded.
HOSTS: dict[str, str] = {
    "api.openai.com": openai.OPENAI,
    "*.openai.azure.com": openai.AZURE,
    "api.groq.com": openai.GROQ,
    "api.together.xyz": openai.TOGETHER,
    "api.together.ai": openai.TOGETHER,
    "api.deepseek.com": openai.DEEPSEEK,
    "openrouter.ai": openai.OPENROUTER,
    "api.mistral.ai": openai.MISTRAL,
    "codestral.mistral.ai": openai.MISTRAL,
    "api.fireworks.ai": openai.FIREWORKS,
    "api.anthropic.com": anthropic.ANTHROPIC,
    "generativelanguage.googleapis.com": gemini.GEMINI,
    "aiplatform.googleapis.com": gemini.VERTEX,
    "*-aiplatform.googleapis.com": gemini.VERTEX,
    "bedrock-runtime.*.amazonaws.com": bedrock.BEDROCK,
    "api.cohere.com": cohere.COHERE,
    "api.cohere.ai": cohere.COHERE,
}

_EXACT = {host: provider for host, provider in HOSTS.items() if "*" not in host}
#: ``prefix*suffix`` hosts as (prefix, suffix, provider); the ``*`` stands for at least one
#: character.
_WILD = [(prefix, suffix, provider) for host, provider in HOSTS.items()
         for prefix, star, suffix in [host.partition("*")] if star]


def host_provider(host: str) -> str | None:
    """The provider serving at ``host`` (as httpx gives it: lower case, no port), if listed."""
    provider = _EXACT.get(host)
    if provider is not None:
        return provider
    for prefix, suffix, vendor in _WILD:
        if (len(host) > len(prefix) + len(suffix) and host.startswith(prefix)
                and host.endswith(suffix)):
            return vendor
    return None
