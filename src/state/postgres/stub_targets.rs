//! Placeholders for `TargetStore` on PostgreSQL while its SQL is written:
//! each says so. This file goes when the last one is replaced.
#![allow(unused_variables)]

use super::PgStore;
#[allow(unused_imports)]
use crate::state::*;
#[allow(unused_imports)]
use std::collections::{BTreeSet, HashMap};
#[allow(unused_imports)]
use std::sync::Arc;
#[allow(unused_imports)]
use std::time::Duration;

fn todo(what: &str) -> StateError {
    StateError::Postgres(format!("{what}: not on PostgreSQL yet"))
}

impl PgStore {
    pub async fn commit_page(&self, fence: &Fence, page: PageCommit) -> Result<(), StateError> {
        Err(todo("commit_page"))
    }
}
