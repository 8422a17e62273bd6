"""Input data: the contract (contract.py), validation, ingest into data versions, atomic versioned
I/O shared by every hop (versioning.py), a synthetic generator with real structure, and a
MovieLens-100K importer. Import the submodules directly; this package imports nothing heavy."""
