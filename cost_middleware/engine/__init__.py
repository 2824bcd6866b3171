"""The engine behind the adapters: the tracker that owns a pipeline, the batcher, the disk spool."""
