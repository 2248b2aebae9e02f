"""The config: its sources and their order, parsing with lines kept, normalising k3OS spellings,
the schema, and every named rule (``checks``)."""
