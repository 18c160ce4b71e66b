"""The babysitter's checks: findings (findings.py) and the preflight checks (preflight.py).

``preflight(model, loss_fn, data)`` runs CS231n's before-training sanity checks and
returns :class:`Finding` objects; ``write_findings`` writes them to ``findings.json``.

Example
-------
>>> from babysit.checks import FINDINGS
>>> len(FINDINGS), FINDINGS["initial_loss_off"]
(45, 'Initial loss off')
"""

from babysit.checks.findings import FINDINGS, SEVERITIES, Finding, sort_findings, write_findings
from babysit.checks.preflight import ALL, preflight

__all__ = ["ALL", "FINDINGS", "SEVERITIES", "Finding", "preflight", "sort_findings", "write_findings"]
