"""The serving layer, one module per endpoint family (as vLLM's entrypoints/openai/<endpoint>/).

common (registry, caps, results, upstream helpers) <- openai, triton, readiness.
"""
