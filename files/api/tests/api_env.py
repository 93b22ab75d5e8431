"""Names and keys shared by the API tests."""

from __future__ import annotations

MODEL = "sim-model"
ALIAS = "sim-alias"
KEY_ALICE = "alice-test-key-0123456789"
KEY_BOB = "bob-test-key-9876543210"

LIMITS = {
    "max_tokens": 256,
    "max_n": 4,
    "max_prompt_chars": 2000,
    "max_body_bytes": 32768,
    "max_in_flight": 200,
    "max_in_flight_per_key": 100,
}
