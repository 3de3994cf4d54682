"""Stage: report. what a person or a CI job reads: the verdict, the gate's exit code, the JSON schema, the HTML."""

from .finish import finish_report, report_html, report_json
from .schema import REPORT_SCHEMA, SCHEMA_NAME, SCHEMA_VERSION, validate_report
from .verdict import (FAIL_ON, NO_EVIDENCE, NOT_SANITIZED, STATUS_CLEAN, STATUS_REMAINS, STATUS_SANITIZED,
                      STATUS_UNSANITIZABLE, SUSPECTED, gate_exit_code, verdict_of)

__all__ = ["REPORT_SCHEMA", "SCHEMA_NAME", "SCHEMA_VERSION", "validate_report", "FAIL_ON", "NO_EVIDENCE",
           "NOT_SANITIZED", "STATUS_CLEAN", "STATUS_REMAINS", "STATUS_SANITIZED", "STATUS_UNSANITIZABLE", "SUSPECTED",
           "gate_exit_code", "verdict_of", "finish_report", "report_html", "report_json"]
