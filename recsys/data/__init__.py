"""Input data: the contract (contract.py), validation, ingest into data versions, atomic versioned
I/O shared by every hop (versioning.py), a synthetic generator with real structure, and importers
(movielens.py: MovieLens-100K and ml-latest; generic.py: an event log with the user's own column
names) that share one writer of input folders (importing.py). Import the submodules directly; this
package imports nothing heavy."""
