"""QC: per-image pictures and records (participant level), the group index (group level)."""
from .pictures import VIEWS, render_image_qc
from .record import QcJob, build_record, parse_entities, qc_names, record_validator
from .writer import write_image_qc

__all__ = ["QcJob", "VIEWS", "build_record", "parse_entities", "qc_names", "record_validator",
           "render_image_qc", "write_image_qc"]
