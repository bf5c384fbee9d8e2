"""Studies whose database names collided under the operator's former 32-bit naming, found on demand.

Before names were collision-proof, a study's database was `hpo_<18-character slug>_<8 hex digits of
sha256(namespace/name)>`. The slug folds `-` into `_` and is cut at 18 characters, and 8 hex digits
are 32 bits, so a tenant could pick a name in its own namespace that maps to another tenant's
database in a fraction of a second. Tests use this to prove that such names no longer meet.
"""

from __future__ import annotations

import hashlib

from hpo_operator.database import legacy_database


def _digest(namespace: str, name: str) -> str:
    return hashlib.sha256(f"{namespace}/{name}".encode()).hexdigest()[:8]


def colliding_studies(victim_namespace: str, attacker_namespace: str) -> tuple[str, str]:
    """A victim study name and an attacker study name with the same legacy database name.

    ``attacker_namespace`` must be ``victim_namespace + "-x"`` and the victim namespace at least 15
    characters long, so that both slugs share their first 18 characters.
    """
    assert attacker_namespace == victim_namespace + "-x" and len(victim_namespace) >= 15
    victims = {_digest(victim_namespace, f"x-v{i}"): f"x-v{i}" for i in range(1 << 17)}
    for j in range(1 << 22):
        victim = victims.get(_digest(attacker_namespace, f"v{j}"))
        if victim is not None:
            assert legacy_database(victim_namespace, victim) == legacy_database(attacker_namespace, f"v{j}")
            return victim, f"v{j}"
    raise AssertionError("no collision found (expected one within a few tens of thousands of tries)")
