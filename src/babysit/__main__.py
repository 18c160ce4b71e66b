"""``python -m babysit`` is the ``babysit`` command."""

from babysit.cli import main

if __name__ == "__main__":
    main()
