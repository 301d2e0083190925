use super::*;

fn change(id: &str, event: &str, body: Option<&str>) -> ChangeRecord {
    ChangeRecord {
        id: 1,
        source: "ehr".into(),
        owner_id: "o".into(),
        resource_type: "Encounter".into(),
        resource_id: id.into(),
        version_id: Some("2".into()),
        last_updated: Some("2026-11-30T10:00:00.123Z".into()),
        event: event.into(),
        detected_at: "2026-11-30T10:00:01Z".into(),
        body: body.map(|b| b.as_bytes().to_vec()),
    }
}

fn channel(format: Format) -> Channel<'static> {
    Channel {
        format,
        subscription: "http://127.0.0.1:9464/hooks/adt",
        topic: "urn:fhir-bridge:topic:adt-discharge",
        status: "active",
        events_since_start: 7,
    }
}

fn render(
    format: Format,
    kind: NotificationType,
    content: Content,
    changes: &[ChangeRecord],
) -> Value {
    let events: Vec<_> = changes
        .iter()
        .enumerate()
        .map(|(i, c)| NumberedEvent {
            number: 6 + i as i64,
            change: c,
            base_url: Some("https://ehr.example/fhir"),
        })
        .collect();
    let bytes = notification(
        &channel(format),
        kind,
        content,
        &events,
        "b-1",
        "2026-11-30T10:00:02Z",
    );
    serde_json::from_slice(&bytes).unwrap()
}

const BODY: &str = r#"{"resourceType":"Encounter","id":"e1","status":"finished","x":1.50}"#;

#[test]
fn r4_full_resource_follows_the_backport_ig() {
    let changes = [
        change("e1", "update", Some(BODY)),
        change("e2", "create", None),
    ];
    let b = render(
        Format::FhirBackportR4,
        NotificationType::EventNotification,
        Content::FullResource,
        &changes,
    );
    assert_eq!(b["resourceType"], "Bundle");
    assert_eq!(b["type"], "history");
    assert_eq!(b["meta"]["profile"][0], NOTIFICATION_R4);
    let status = &b["entry"][0];
    assert_eq!(status["resource"]["resourceType"], "Parameters");
    assert_eq!(status["resource"]["meta"]["profile"][0], STATUS_R4);
    assert_eq!(
        status["request"]["url"],
        "http://127.0.0.1:9464/hooks/adt/$status"
    );
    assert_eq!(status["response"]["status"], "200");
    let params = status["resource"]["parameter"].as_array().unwrap();
    let value =
        |name: &str, key: &str| params.iter().find(|p| p["name"] == name).unwrap()[key].clone();
    assert_eq!(value("type", "valueCode"), "event-notification");
    assert_eq!(value("status", "valueCode"), "active");
    assert_eq!(value("events-since-subscription-start", "valueString"), "7");
    assert_eq!(
        value("subscription", "valueReference")["reference"],
        "http://127.0.0.1:9464/hooks/adt"
    );
    let events: Vec<_> = params
        .iter()
        .filter(|p| p["name"] == "notification-event")
        .collect();
    assert_eq!(events.len(), 2);
    assert_eq!(events[0]["part"][0]["valueString"], "6");
    assert_eq!(events[1]["part"][0]["valueString"], "7");
    assert_eq!(
        events[0]["part"][1]["valueInstant"],
        "2026-11-30T10:00:00.123Z"
    );
    assert_eq!(
        events[0]["part"][2]["valueReference"]["reference"],
        "https://ehr.example/fhir/Encounter/e1"
    );
    // The focus entries: full resource where held, request/response by kind.
    let e1 = &b["entry"][1];
    assert_eq!(e1["fullUrl"], "https://ehr.example/fhir/Encounter/e1");
    assert_eq!(e1["resource"]["status"], "finished");
    assert_eq!(
        (
            e1["request"]["method"].as_str(),
            e1["response"]["status"].as_str()
        ),
        (Some("PUT"), Some("200"))
    );
    let e2 = &b["entry"][2];
    assert!(e2.get("resource").is_none(), "no body held: no resource");
    assert_eq!(
        (
            e2["request"]["method"].as_str(),
            e2["request"]["url"].as_str()
        ),
        (Some("POST"), Some("Encounter"))
    );
}

#[test]
fn the_resource_is_embedded_byte_for_byte() {
    let c = [change("e1", "update", Some(BODY))];
    let events = [NumberedEvent {
        number: 1,
        change: &c[0],
        base_url: None,
    }];
    let bytes = notification(
        &channel(Format::FhirBackportR4),
        NotificationType::EventNotification,
        Content::FullResource,
        &events,
        "b",
        "2026-11-30T10:00:02Z",
    );
    assert!(String::from_utf8(bytes).unwrap().contains(BODY));
}

#[test]
fn id_only_and_empty_carry_no_resource() {
    let changes = [change("e1", "update", Some(BODY))];
    for format in [Format::FhirBackportR4, Format::FhirR5] {
        let b = render(
            format,
            NotificationType::EventNotification,
            Content::IdOnly,
            &changes,
        );
        let e = &b["entry"][1];
        assert_eq!(e["fullUrl"], "https://ehr.example/fhir/Encounter/e1");
        assert!(e.get("resource").is_none());
        assert!(e.get("request").is_some());
        let b = render(
            format,
            NotificationType::EventNotification,
            Content::Empty,
            &changes,
        );
        assert_eq!(
            b["entry"].as_array().unwrap().len(),
            1,
            "empty: the status only"
        );
        assert!(!b.to_string().contains("focus"), "empty: no focus");
        assert!(!b.to_string().contains("Encounter/e1"));
    }
}

#[test]
fn r5_uses_subscription_status() {
    let changes = [change("e1", "update", Some(BODY))];
    let b = render(
        Format::FhirR5,
        NotificationType::EventNotification,
        Content::FullResource,
        &changes,
    );
    assert_eq!(b["type"], "subscription-notification");
    let s = &b["entry"][0]["resource"];
    assert_eq!(s["resourceType"], "SubscriptionStatus");
    assert_eq!(s["type"], "event-notification");
    assert_eq!(s["eventsSinceSubscriptionStart"], "7");
    assert_eq!(s["notificationEvent"][0]["eventNumber"], "6");
    assert_eq!(
        s["notificationEvent"][0]["focus"]["reference"],
        "https://ehr.example/fhir/Encounter/e1"
    );
    assert_eq!(
        s["subscription"]["reference"],
        "http://127.0.0.1:9464/hooks/adt"
    );
    assert!(b["entry"][0].get("request").is_none());
    assert_eq!(b["entry"][1]["resource"]["id"], "e1");
    let q = render(
        Format::FhirR5,
        NotificationType::QueryEvent,
        Content::IdOnly,
        &changes,
    );
    assert_eq!(q["type"], "history");
}

#[test]
fn handshakes_and_heartbeats_carry_no_events() {
    for (kind, name) in [
        (NotificationType::Handshake, "handshake"),
        (NotificationType::Heartbeat, "heartbeat"),
    ] {
        let b = render(Format::FhirBackportR4, kind, Content::FullResource, &[]);
        assert_eq!(b["entry"].as_array().unwrap().len(), 1);
        let params = b["entry"][0]["resource"]["parameter"].as_array().unwrap();
        assert!(
            params
                .iter()
                .any(|p| p["name"] == "type" && p["valueCode"] == name)
        );
        assert!(!params.iter().any(|p| p["name"] == "notification-event"));
    }
}

#[test]
fn a_delete_is_a_delete_entry_without_resource() {
    let changes = [change("e1", "delete", Some(BODY))];
    let b = render(
        Format::FhirBackportR4,
        NotificationType::EventNotification,
        Content::FullResource,
        &changes,
    );
    let e = &b["entry"][1];
    assert_eq!(e["request"]["method"], "DELETE");
    assert_eq!(e["request"]["url"], "Encounter/e1");
    assert!(e.get("resource").is_none());
    assert_eq!(e["response"]["status"], "204");
}
