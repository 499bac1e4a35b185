//! Dataset readers.
