"""gpuserve inference API: a gateway over vLLM's OpenAI server, and a vLLM simulator."""

__version__ = "0.1.0"
