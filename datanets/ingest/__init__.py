"""Pure ingest code for datanets: no Django imports, plain data in and out.

Pipeline: `formats.detect_format` reads the first bytes, `readers.read_rows` streams the file into raw rows with
their line/row numbers, `pipeline.RowProcessor` validates each row against the datanet kind, normalises it, hashes
it, removes exact duplicates, screens it and applies the curator's keep/redact/drop choice per flag kind, and
`dedup.NearDuplicateIndex` flags near-duplicates. `manifest.merkle_root` gives a version's manifest hash."""

from datanets.ingest.errors import IngestError

__all__ = ["IngestError"]
