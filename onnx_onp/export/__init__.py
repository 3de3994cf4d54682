"""Stage 8: zeroed and shrunk exports, checked against the masked evaluation."""

from .export import ShrinkError, WrittenModel, export_pruned, shrunk_model, write_model, zeroed_model

__all__ = ["ShrinkError", "WrittenModel", "export_pruned", "shrunk_model", "write_model", "zeroed_model"]
