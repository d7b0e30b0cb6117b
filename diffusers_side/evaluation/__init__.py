"""Scoring generations against a reference set: bands, AMS / UMS, reports and figures."""
