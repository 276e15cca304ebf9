//! Fault tests with real `meridian` processes: histories, checkers and harnesses.
