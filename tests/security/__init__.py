"""Attacker scripts against a real CAS: each test fails if the property it names breaks."""
