"""The weaknesses a session (or a CLI flag) may tolerate: one list, light to import."""

#: Tolerances a session (or `veil evidence verify`, `veil cas attest`) may grant;
#: docs/policy.md says what each accepts.
TOLERANCES = (
    "sim",
    "debug-mode",
    "outdated-tcb",
    "sw-hardening-needed",
    "configuration-needed",
    "smt",
    "no-tcb-check",
    "uncertified-ak",
    "no-rim-check",
)
