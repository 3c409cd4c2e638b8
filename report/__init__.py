"""The figures and tables drawn from results files: what is shown, not how it is measured."""
