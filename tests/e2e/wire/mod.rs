//! The wire: byte-exact vectors and interop with the real Velithon from PyPI.

mod compression;
mod python_codegen;
mod typescript_codegen;
mod velithon;
mod wire_vectors;
