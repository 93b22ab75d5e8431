"""gpuserve-sim: test doubles for the gateway, kept out of its package.

``server``: a GPU-free emulator of vLLM's OpenAI server (``gpuserve-sim``);
``procs``: start it and the gateway as real processes on loopback (tests);
``bench``: the loopback benchmark (``make bench-api``).
"""

__version__ = "0.1.0"
