"""The HTML report of a run (`dasd report RUN`): see ``dasd.report.build``."""

from dasd.report.build import Report, render_report, write_report

__all__ = ["Report", "render_report", "write_report"]
