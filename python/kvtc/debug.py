"""Debugging helpers: what a blob stores, below the level of decoded values.

``plan_codes(profile, blob)`` → {plan index: [GroupCodes]}: per group, its integer codes
[width, n] (uint8, component-major as stored), and for dynamic groups the per-token fp16
offset and scale bit patterns (uint16 [n]). The blob is checked exactly as decode checks it.
The package's tests compare these with kvtc's Node codec, code for code.
"""

from .codec import GroupCodes, coefficients, payload_codes, plan_codes

__all__ = ["GroupCodes", "coefficients", "payload_codes", "plan_codes"]
