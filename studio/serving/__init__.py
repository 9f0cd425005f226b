"""Serving the tuned models: OpenAI-compatible routes (api.py), the batching scheduler (scheduler.py),
`python -m studio serve` (server.py) and vLLM's own server where a CUDA GPU is (vllm.py)."""
