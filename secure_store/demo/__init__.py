"""Real loopback servers for `secure-store demo` and for the test suite."""
