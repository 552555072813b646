"""The HTML report of a run (`dasd report RUN`): ``dasd.report.build`` writes it."""
