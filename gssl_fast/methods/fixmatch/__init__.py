"""The fixmatch method: ``config.py`` (its [method] keys, read with the recipe) and ``method.py``."""
