"""One APIRouter per file: openai (/v1), triton (/v2), health, metrics."""
