"""JSON Schemas shipped with the package (manifest, QC record, routing config)."""
