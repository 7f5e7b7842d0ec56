//! Model-based property tests (see issue 4).
