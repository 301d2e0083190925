//! `sqlite/inspect.rs`'s tests on PostgreSQL: the same cases, the same answers.

use super::*;
use crate::state::postgres::test_util::fresh_store;
use crate::state::{NewMessage, PageCommit};

#[tokio::test]
async fn a_message_by_row_id_or_message_id_and_its_payload() {
    let Some(store) = fresh_store().await else {
        return;
    };
    let m = NewMessage::test("h", "m-1", "Observation", "7").with_body(b"{\"x\":1}".to_vec());
    store
        .commit_page(
            &crate::state::Fence::private(),
            PageCommit {
                source: "s".into(),
                resource_type: "Observation".into(),
                messages: vec![m],
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let by_mid = store
        .find_messages(MessageKey::parse("m-1"), None, WithBody::No)
        .await
        .unwrap();
    assert_eq!(by_mid.len(), 1);
    let d = &by_mid[0];
    assert_eq!(
        (d.state.as_str(), d.stored.payload_bytes),
        ("pending", None)
    );
    assert_eq!(d.stored.resource_bytes, Some(7));
    assert_eq!((d.event_number, d.body.as_ref()), (Some(1), None));
    let by_id = store
        .find_messages(MessageKey::parse(&d.id.to_string()), None, WithBody::Yes)
        .await
        .unwrap();
    assert_eq!(by_id[0].message_id, "m-1");
    assert_eq!(
        by_id[0].body.as_ref().map(|b| b.raw()),
        Some(b"{\"x\":1}".to_vec())
    );
    let other_hook = store
        .find_messages(MessageKey::Id(d.id), Some("x".into()), WithBody::No)
        .await
        .unwrap();
    assert!(other_hook.is_empty());
    assert_eq!(store.message_body(d.id).await.unwrap().raw(), b"{\"x\":1}");
    assert_eq!(store.message_body(-1).await.unwrap(), MessageBody::Missing);
}
