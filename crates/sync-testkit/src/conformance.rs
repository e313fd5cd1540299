//! Conformance suites, one per port, run unchanged against every implementation.
