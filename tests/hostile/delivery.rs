//! Hostile input: delivery. See tests/hostile.rs.

#[allow(unused_imports)]
use crate::common;
