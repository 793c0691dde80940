# Present so pytest puts the repository root on sys.path (imports like `from data import ...`).
