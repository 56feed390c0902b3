//! Examples, tests and benchmarks of VSP.
