"""The reliability suite: hostile input and faults, each test marked ``reliability``."""
