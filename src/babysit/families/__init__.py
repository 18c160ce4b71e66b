"""Model families: all the knowledge of a kind of model that the run path needs.

``FAMILIES`` maps a family's name to an object satisfying :class:`Family`
(:mod:`babysit.families.protocol`); :func:`family_of` gives a spec's family, the first in
the registry that claims it (the standard family, last, claims every spec). Adding a family
is one module here and one line in ``FAMILIES``.

Example
-------
>>> from babysit.config import Experiment
>>> family_of(Experiment(model={"kind": "gan"})).name, family_of(Experiment()).name
('gan', 'standard')
>>> sorted(FAMILIES)
['autoencoder', 'gan', 'language', 'perceptron', 'standard']
"""

from __future__ import annotations

from babysit.config import Experiment
from babysit.families.autoencoder import AUTOENCODER
from babysit.families.gan import GAN
from babysit.families.language import LANGUAGE
from babysit.families.perceptron import PERCEPTRON
from babysit.families.protocol import Family, RunContext
from babysit.families.standard import STANDARD

FAMILIES: dict[str, Family] = {
    "gan": GAN,
    "autoencoder": AUTOENCODER,
    "language": LANGUAGE,
    "perceptron": PERCEPTRON,
    "standard": STANDARD,  # last: it claims every spec the others leave
}


def family_of(spec: Experiment) -> Family:
    """The family that trains ``spec``."""
    return next(family for family in FAMILIES.values() if family.claims(spec))


__all__ = ["FAMILIES", "Family", "RunContext", "family_of"]
