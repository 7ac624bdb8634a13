"""The package version, in one place (setup.py reads the same string)."""
__version__ = "0.1.0"
# The card file format's version: card.json says which schema it follows (layerprof.card.schema checks it).
CARD_SCHEMA = "layerprof.card/1"
