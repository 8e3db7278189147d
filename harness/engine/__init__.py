"""Speed, none of the meaning: devices, batching, caching, search, distribution. Knows nothing of prompts or
tasks, and never imports mteb at module level (the encode path must run on machines without it).

device.py        device and dtype resolution
batching.py      length-sorted batches, out-of-memory back-off (``run_batches``, for adapters' ``embed``)
cache.py         the embedding cache: keys, checksummed shards, crash-safe writes
encode.py        the encode engine: plan, cache lookups, work split across ranks, progress
distributed.py   torchrun / SLURM process groups and the few collectives the engine uses
search.py        streaming exact top-k search and mteb's SearchProtocol over an adapter
memory.py        glibc allocator thresholds for the CPU encode loop
"""
