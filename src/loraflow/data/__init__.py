"""Datasets: reading CSV/JSONL, validating every row, and splitting."""

from loraflow.data.report import ValidationReport, ValidationSummary
from loraflow.data.validate import Dataset, validate

__all__ = ["Dataset", "ValidationReport", "ValidationSummary", "validate"]
