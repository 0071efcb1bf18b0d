"""``python -m modelaudit.cli``: the same command as the ``modelaudit`` script (the bench runs scans so)."""

from modelaudit.cli import main

main()
