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
    pub async fn target_state(&self, key: &TargetKey) -> Result<TargetState, StateError> {
        Err(todo("target_state"))
    }
    pub async fn init_target(
        &self,
        fence: &Fence,
        key: &TargetKey,
        watermark: Option<String>,
        floor: Option<String>,
    ) -> Result<(), StateError> {
        Err(todo("init_target"))
    }
    pub async fn load_seen(
        &self,
        source: &str,
        resource_type: &str,
        ids: Vec<String>,
    ) -> Result<HashMap<String, SeenRow>, StateError> {
        Err(todo("load_seen"))
    }
    pub async fn load_seen_for_page(
        &self,
        source: &str,
        resource_type: &str,
        ids: Vec<String>,
        bodies: bool,
    ) -> Result<HashMap<String, SeenRow>, StateError> {
        Err(todo("load_seen_for_page"))
    }
    pub async fn lowest_patient_watermark(
        &self,
        source: &str,
        resource_type: &str,
    ) -> Result<Option<String>, StateError> {
        Err(todo("lowest_patient_watermark"))
    }
    pub async fn record_polls(&self, outcomes: Vec<PollOutcome>) -> Result<(), StateError> {
        Err(todo("record_polls"))
    }
    pub async fn backfill_job(
        &self,
        source: &str,
        resource_type: &str,
    ) -> Result<Option<BackfillJob>, StateError> {
        Err(todo("backfill_job"))
    }
    pub async fn start_backfill(
        &self,
        source: &str,
        resource_type: &str,
        since: &str,
        until: &str,
    ) -> Result<(), StateError> {
        Err(todo("start_backfill"))
    }
    pub async fn finish_backfill(
        &self,
        source: &str,
        resource_type: &str,
    ) -> Result<(), StateError> {
        Err(todo("finish_backfill"))
    }
    pub async fn export_job(&self, source: &str) -> Result<Option<ExportJob>, StateError> {
        Err(todo("export_job"))
    }
    pub async fn save_export_job(
        &self,
        source: &str,
        job_url: &str,
        since: Option<String>,
        request: &str,
    ) -> Result<ExportJob, StateError> {
        Err(todo("save_export_job"))
    }
    pub async fn note_export_manifest(
        &self,
        source: &str,
        transaction_time: &str,
        fingerprint: &str,
        restart: bool,
    ) -> Result<(), StateError> {
        Err(todo("note_export_manifest"))
    }
    pub async fn export_file_done(&self, source: &str, files_done: i64) -> Result<(), StateError> {
        Err(todo("export_file_done"))
    }
    pub async fn finish_export(
        &self,
        fence: &Fence,
        source: &str,
        types: Vec<String>,
        transaction_time: &str,
        repaired: Vec<String>,
    ) -> Result<(), StateError> {
        Err(todo("finish_export"))
    }
    pub async fn drop_export_job(&self, source: &str) -> Result<(), StateError> {
        Err(todo("drop_export_job"))
    }
    pub async fn roster_in_state(&self, source: &str) -> Result<BTreeSet<String>, StateError> {
        Err(todo("roster_in_state"))
    }
    pub async fn sync_roster(
        &self,
        source: &str,
        roster: BTreeSet<String>,
        now_ms: i64,
        forget_before_ms: i64,
    ) -> Result<RosterSync, StateError> {
        Err(todo("sync_roster"))
    }
    pub async fn seen_not_walked(
        &self,
        source: &str,
        resource_type: &str,
        walked: Arc<dyn Fn(&str) -> bool + Send + Sync>,
        bodies: bool,
    ) -> Result<Vec<(String, SeenRow)>, StateError> {
        Err(todo("seen_not_walked"))
    }
    pub async fn record_reconcile(
        &self,
        key: &TargetKey,
        at_ms: i64,
        changes: u64,
    ) -> Result<(), StateError> {
        Err(todo("record_reconcile"))
    }
    pub async fn sources_with_state(&self) -> Result<Vec<String>, StateError> {
        Err(todo("sources_with_state"))
    }
}
