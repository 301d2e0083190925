//! Hostile input: operate. See tests/hostile.rs.

#[allow(unused_imports)]
use crate::common;
