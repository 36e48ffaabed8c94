"""Ingestion, the first stage of the flow: folders -> planned files (`scan`) -> decoded model inputs (`decode`,
in worker processes) -> batched embeddings committed file by file (`pipeline`)."""
