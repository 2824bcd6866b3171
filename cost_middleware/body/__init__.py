"""Bytes to events: SSE, NDJSON, JSON array, AWS event-stream, whole bodies, decompression."""
