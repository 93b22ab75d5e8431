"""gpuserve inference gateway over vLLM's OpenAI server (OpenAI and Triton HTTP/gRPC APIs)."""

__version__ = "0.1.0"
