"""Adapters that put drpo.losses into the large-scale engines: verl (verl.py) and TRL (trl.py).

Import the submodule you need; this package imports neither engine. See README.md beside this file.
"""
