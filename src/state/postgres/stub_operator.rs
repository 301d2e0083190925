//! Placeholders for `OperatorStore` on PostgreSQL while its SQL is written:
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
    pub async fn orphaned_hooks(
        &self,
        configured: Vec<String>,
    ) -> Result<Vec<OrphanedHook>, StateError> {
        Err(todo("orphaned_hooks"))
    }
    pub async fn hook_has_messages(&self, hook: &str) -> Result<bool, StateError> {
        Err(todo("hook_has_messages"))
    }
    pub async fn dlq_list(
        &self,
        hook: Option<String>,
        configured: Vec<String>,
    ) -> Result<Vec<MessageRecord>, StateError> {
        Err(todo("dlq_list"))
    }
    pub async fn dlq_list_filtered(
        &self,
        hook: Option<String>,
        filter: MessageFilter,
        configured: Vec<String>,
    ) -> Result<Vec<MessageRecord>, StateError> {
        Err(todo("dlq_list_filtered"))
    }
    pub async fn dead_letters(
        &self,
        hook: Option<String>,
    ) -> Result<Vec<MessageRecord>, StateError> {
        Err(todo("dead_letters"))
    }
    pub async fn dlq_selected(
        &self,
        sel: DlqSelection,
        moving: bool,
    ) -> Result<Vec<i64>, StateError> {
        Err(todo("dlq_selected"))
    }
    pub async fn redrive(&self, sel: DlqSelection) -> Result<usize, StateError> {
        Err(todo("redrive"))
    }
    pub async fn purge(&self, sel: DlqSelection) -> Result<usize, StateError> {
        Err(todo("purge"))
    }
    pub async fn move_to_hook(&self, sel: DlqSelection, to: &str) -> Result<Moved, StateError> {
        Err(todo("move_to_hook"))
    }
    pub async fn find_messages(
        &self,
        key: MessageKey,
        hook: Option<String>,
        body: WithBody,
    ) -> Result<Vec<MessageRecord>, StateError> {
        Err(todo("find_messages"))
    }
    pub async fn message_body(&self, id: i64) -> Result<MessageBody, StateError> {
        Err(todo("message_body"))
    }
    pub async fn replay_candidates(
        &self,
        hook: &str,
        filter: MessageFilter,
    ) -> Result<Vec<MessageRecord>, StateError> {
        Err(todo("replay_candidates"))
    }
    pub async fn replay_candidates_from_event(
        &self,
        hook: &str,
        from: i64,
        filter: MessageFilter,
    ) -> Result<Vec<MessageRecord>, StateError> {
        Err(todo("replay_candidates_from_event"))
    }
    pub async fn requeue_delivered(&self, items: Vec<Requeue>) -> Result<usize, StateError> {
        Err(todo("requeue_delivered"))
    }
    pub async fn requeue_delivered_or_dead(
        &self,
        items: Vec<Requeue>,
    ) -> Result<usize, StateError> {
        Err(todo("requeue_delivered_or_dead"))
    }
    pub async fn patient_targets_report(
        &self,
        source: &str,
        resource_type: &str,
    ) -> Result<Option<TargetReport>, StateError> {
        Err(todo("patient_targets_report"))
    }
    pub async fn target_report(
        &self,
        source: &str,
        resource_type: &str,
    ) -> Result<Option<TargetReport>, StateError> {
        Err(todo("target_report"))
    }
    pub async fn hook_report(&self, hook: &str) -> Result<HookReport, StateError> {
        Err(todo("hook_report"))
    }
    pub async fn rename_source(&self, old: &str, new: &str) -> Result<Rename, StateError> {
        Err(todo("rename_source"))
    }
    pub async fn summary(&self) -> Result<Summary, StateError> {
        Err(todo("summary"))
    }
    pub async fn gauge_snapshot(&self, hooks: Vec<String>) -> Result<GaugeSnapshot, StateError> {
        Err(todo("gauge_snapshot"))
    }
    pub async fn record_daemon_start(&self, pid: u32, version: &str) -> Result<(), StateError> {
        Err(todo("record_daemon_start"))
    }
    pub async fn heartbeat(&self, pid: u32) -> Result<(), StateError> {
        Err(todo("heartbeat"))
    }
    pub async fn last_heartbeat(&self) -> Result<Option<Heartbeat>, StateError> {
        Err(todo("last_heartbeat"))
    }
    pub async fn prune_delivered(&self, older_than_ms: i64) -> Result<usize, StateError> {
        Err(todo("prune_delivered"))
    }
    pub async fn prune_seen(
        &self,
        source: &str,
        resource_type: &str,
        before: String,
    ) -> Result<usize, StateError> {
        Err(todo("prune_seen"))
    }
    pub async fn prune_tombstones(
        &self,
        source: &str,
        resource_type: &str,
        before: String,
    ) -> Result<usize, StateError> {
        Err(todo("prune_tombstones"))
    }
    pub async fn reclaim_space(&self) -> Result<u64, StateError> {
        Err(todo("reclaim_space"))
    }
    pub async fn truncate_wal(&self) -> Result<bool, StateError> {
        Err(todo("truncate_wal"))
    }
}
