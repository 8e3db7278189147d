"""Speed, none of the meaning: devices, batching, caching, search, distribution. Knows nothing of prompts or
tasks, and never imports mteb (the encode path must run on machines without it)."""
