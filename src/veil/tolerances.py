"""The weaknesses a session (or a CLI flag) may tolerate: one list, light to import."""

#: Tolerances a session may grant. Only ``sim`` has an effect before hardware verifiers land;
#: the others are accepted so that sessions can be written for hardware now.
TOLERANCES = (
    "sim",
    "debug-mode",
    "outdated-tcb",
    "sw-hardening-needed",
    "configuration-needed",
    "smt",
)
