"""`make bench`: speed and memory measurements, printed and written as JSON (not asserted in tests)."""
