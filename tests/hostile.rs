//! Hostile input (issue 8): one test per item of the adversarial audit, each
//! asserting what an operator or a receiver would see: what the receiver got,
//! what another host got, what `status` says and exits with, and that the
//! process stayed up and stopped on SIGTERM. Against the real binary, with
//! scripted FHIR servers and receivers on 127.0.0.1.

mod common;

#[path = "hostile/admin.rs"]
mod admin;
#[path = "hostile/auth.rs"]
mod auth;
#[path = "hostile/auth_review.rs"]
mod auth_review;
#[path = "hostile/config.rs"]
mod config;
#[path = "hostile/deliveries.rs"]
mod deliveries;
#[path = "hostile/delivery.rs"]
mod delivery;
#[path = "hostile/export.rs"]
mod export;
#[path = "hostile/export_review.rs"]
mod export_review;
#[path = "hostile/fair_turns_review.rs"]
mod fair_turns_review;
#[path = "hostile/fairness.rs"]
mod fairness;
#[path = "hostile/fanout.rs"]
mod fanout;
#[path = "hostile/fanout_review.rs"]
mod fanout_review;
#[path = "hostile/filter.rs"]
mod filter;
#[path = "hostile/operate.rs"]
mod operate;
#[path = "hostile/operate_review.rs"]
mod operate_review;
#[path = "hostile/source.rs"]
mod source;
#[path = "hostile/walks.rs"]
mod walks;
#[path = "hostile/walks_review.rs"]
mod walks_review;
