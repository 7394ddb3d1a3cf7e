"""`veil run`: attest, fetch the configuration, start and supervise the unmodified program.

Kept free of imports: ``veil.runtime.launch`` runs as its own short-lived process and should
start fast.
"""
