"""`python -m reports`: the monthly test report, the same command as `aiadmin report`."""

from reports.generator.cli import app

if __name__ == "__main__":
    app(prog_name="python -m reports")
