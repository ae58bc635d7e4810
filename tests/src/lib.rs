//! Shared helpers for libnet integration tests and test-net.
