"""The vllm serving backend against a real vLLM server (vLLM's CPU build in .venv-vllm)."""
