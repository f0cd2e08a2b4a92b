"""Shards in, token batches out: reading, encoding, batching, and the shard tools."""
