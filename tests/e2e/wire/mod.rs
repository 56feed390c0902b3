//! The wire: byte-exact vectors and interop with the real Velithon from PyPI.

mod compression;
mod velithon;
mod wire_vectors;
