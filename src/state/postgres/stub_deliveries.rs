//! Placeholders for `DeliveryStore` on PostgreSQL while its SQL is written:
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
    pub async fn claim_due(
        &self,
        hook: &str,
        in_flight: Vec<i64>,
        limit: usize,
    ) -> Result<Vec<Claimed>, StateError> {
        Err(todo("claim_due"))
    }
    pub async fn assign_batches(&self, batches: Vec<(String, Vec<i64>)>) -> Result<(), StateError> {
        Err(todo("assign_batches"))
    }
    pub async fn pending_due_now(&self, hook: &str) -> Result<usize, StateError> {
        Err(todo("pending_due_now"))
    }
    pub async fn next_due_ms(&self, hook: &str) -> Result<Option<i64>, StateError> {
        Err(todo("next_due_ms"))
    }
    pub async fn record_delivery(
        &self,
        fence: &Fence,
        hook: &str,
        id: i64,
        record: DeliveryRecord,
    ) -> Result<(), StateError> {
        Err(todo("record_delivery"))
    }
    pub async fn record_deliveries(
        &self,
        fence: &Fence,
        hook: &str,
        records: Vec<(i64, DeliveryRecord)>,
        channel: bool,
    ) -> Result<(), StateError> {
        Err(todo("record_deliveries"))
    }
    pub async fn disable_hook(&self, hook: &str, reason: &str) -> Result<(), StateError> {
        Err(todo("disable_hook"))
    }
    pub async fn enable_hook(&self, hook: &str) -> Result<bool, StateError> {
        Err(todo("enable_hook"))
    }
    pub async fn hook_disabled(&self, hook: &str) -> Result<bool, StateError> {
        Err(todo("hook_disabled"))
    }
    pub async fn channel_state(&self, hook: &str) -> Result<ChannelState, StateError> {
        Err(todo("channel_state"))
    }
    pub async fn set_channel_status(
        &self,
        hook: &str,
        status: &str,
        error: Option<String>,
    ) -> Result<(), StateError> {
        Err(todo("set_channel_status"))
    }
    pub async fn retained_events(
        &self,
        hook: &str,
        since: i64,
        until: i64,
        with_bodies: bool,
    ) -> Result<Vec<RetainedEvent>, StateError> {
        Err(todo("retained_events"))
    }
}
