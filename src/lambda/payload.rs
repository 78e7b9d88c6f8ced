//! The invocation payloads the Lambda function accepts, parsed strictly: an unknown field or a
//! wrong type is an error that names it. This module only routes: the payload's `action` field
//! (`run` when absent) picks the action, whose own input type (`crate::action`, each module
//! documents its payload) takes the other fields. Before that, two payloads are runs with the
//! configured settings: an EventBridge "Scheduled Event" envelope (`detail-type: Scheduled
//! Event`, source `schedule`) and `null` (source `manual`); `{}` is a run too.

use serde::Deserialize;
use serde_json::Value;

use crate::action::run::Run;
use crate::action::tenancy::{TenantChoice, TENANT_FIELD};
use crate::action::{strict, Request, Source, DOOR_ACTIONS, MAX_SOURCE_LEN};
use crate::error::{Error, Result};

/// The EventBridge "Scheduled Event" envelope (EventBridge rules and the default Scheduler
/// target input).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct ScheduledEvent {
    version: Option<String>,
    id: Option<String>,
    #[serde(rename = "detail-type")]
    detail_type: String,
    source: Option<String>,
    account: Option<String>,
    time: Option<String>,
    region: Option<String>,
    resources: Option<Vec<String>>,
    detail: Option<Value>,
}

/// Parses a payload into a request, as the function `door` or not says: the shop's door
/// (`SHOP_DOOR=1`) refuses, by name and before reading its fields, every action but
/// [`DOOR_ACTIONS`] — a run (no `action`, `null`, a Scheduled Event) included.
pub fn parse_for(payload: &Value, door: bool) -> Result<Request> {
    if door {
        let asked = match payload.get("action") {
            None => "run",
            Some(Value::String(name)) => name.as_str(),
            Some(other) => kind(other),
        };
        if !DOOR_ACTIONS.contains(&asked) {
            return Err(Error::Payload(format!(
                "field action: the shop's door (SHOP_DOOR=1) takes only {}, not {:?}; every \
                 other action goes to the scheduled function",
                DOOR_ACTIONS.join(" and "),
                truncate(asked)
            )));
        }
    }
    parse(payload)
}

/// Parses a payload into a request and the tenant it names: a payload's top-level `tenant`
/// field (a name, or `"*"` for all; `crate::action::tenancy`) is taken out before the action
/// reads its own fields, so every action takes it.
pub fn parse_scoped(payload: &Value, door: bool) -> Result<(Request, TenantChoice)> {
    let mut payload = payload.clone();
    let choice = match payload
        .as_object_mut()
        .and_then(|map| map.remove(TENANT_FIELD))
    {
        Some(value) => TenantChoice::from_payload(&value)?,
        None => TenantChoice::Unnamed,
    };
    Ok((parse_for(&payload, door)?, choice))
}

/// Parses a payload into a request.
pub fn parse(payload: &Value) -> Result<Request> {
    match payload {
        Value::Null => return Ok(Request::Run(Run::scheduled("manual"))),
        Value::Object(map) if map.contains_key("detail-type") => {
            let event: ScheduledEvent = strict(payload)?;
            if event.detail_type != "Scheduled Event" {
                return Err(Error::Payload(format!(
                    "detail-type {:?} is not a Scheduled Event",
                    truncate(&event.detail_type)
                )));
            }
            return Ok(Request::Run(Run::scheduled(Source::SCHEDULE)));
        }
        Value::Object(_) => {}
        other => {
            return Err(Error::Payload(format!(
                "expected a JSON object, got {}",
                kind(other)
            )))
        }
    }
    route(payload)
}

/// A payload of some action: its `action` field (a run without one) picks the action, whose
/// own input type takes the other fields ([`Request::from_payload`]); a range error names the
/// payload's field.
fn route(payload: &Value) -> Result<Request> {
    let mut fields = payload.clone();
    let action = match fields.as_object_mut().and_then(|map| map.remove("action")) {
        None => "run".to_string(),
        Some(Value::String(name)) => name,
        Some(other) => {
            return Err(Error::Payload(format!(
                "field action: expected the name of an action, got {}",
                kind(&other)
            )))
        }
    };
    Request::from_payload(&action, &fields).map_err(|error| match error {
        Error::Setting { name, reason } => Error::Payload(format!("field {name}: {reason}")),
        Error::Payload(text) if text.starts_with("field action") => Error::Payload(text),
        Error::Payload(text) => Error::Payload(format!("action {action}: {text}")),
        other => other,
    })
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(MAX_SOURCE_LEN).collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::action::follow::Follow;
    use crate::action::release::Release;
    use crate::action::report::Report;
    use crate::action::revive::Revive;
    use crate::action::status::Status;
    use crate::action::Source;

    fn source(s: &str) -> Option<Source> {
        Some(Source(s.into()))
    }

    fn run(p: Value) -> Run {
        match parse(&p).unwrap() {
            Request::Run(r) => r,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn accepts_the_follow_and_release_payloads() {
        assert_eq!(
            parse(&json!({"action": "follow", "seconds": 60, "source": "schedule"})).unwrap(),
            Request::Follow(Follow {
                seconds: Some(60),
                listen: None,
                source: source("schedule"),
                scheduled_time: None,
            })
        );
        assert_eq!(
            parse(&json!({"action": "follow"})).unwrap(),
            Request::Follow(Follow {
                seconds: Some(60),
                listen: None,
                source: source("manual"),
                scheduled_time: None,
            })
        );
        let Request::Follow(scheduled) = parse(&json!({"action": "follow", "seconds": 60,
            "source": "schedule", "scheduled_time": "2026-12-07T10:15:00Z"}))
        .unwrap() else {
            panic!("a follow")
        };
        let scheduled = scheduled.scheduled_time.unwrap();
        assert_eq!(
            humantime::format_rfc3339(scheduled.at).to_string(),
            "2026-12-07T10:15:00Z"
        );
        assert_eq!(i64::from(scheduled.minute), 1_796_638_500 / 60);
        for bad in [
            "<aws.scheduler.scheduled-time>",
            "2026-12-07 10:15",
            "1969-12-31T23:59:00Z",
        ] {
            let err = parse(&json!({"action": "follow", "scheduled_time": bad})).unwrap_err();
            assert!(err.to_string().contains("scheduled_time"), "{bad}: {err}");
        }
        for bad in [
            json!({"action": "follow", "seconds": 0}),
            json!({"action": "follow", "seconds": 901}),
            json!({"action": "follow", "listen": "0.0.0.0:9187"}),
            json!({"action": "status", "seconds": 5}),
        ] {
            assert!(
                parse(&bad).unwrap_err().to_string().contains("seconds"),
                "{bad}"
            );
        }
        assert_eq!(
            parse(&json!({"action": "release", "order_id": 42})).unwrap(),
            Request::Release(Release {
                order_id: 42,
                source: None
            })
        );
        assert!(parse(&json!({"action": "release"}))
            .unwrap_err()
            .to_string()
            .contains("order_id"));
    }

    #[test]
    fn the_door_takes_release_and_revive_and_refuses_every_other_action_by_name() {
        for ok in [
            json!({"action": "release", "order_id": 7}),
            json!({"action": "revive", "order_id": 7, "source": "webhook"}),
        ] {
            assert_eq!(parse_for(&ok, true).unwrap(), parse(&ok).unwrap());
        }
        for (refused, named) in [
            (json!({"action": "reconcile", "apply": true}), "reconcile"),
            (json!({"action": "follow"}), "follow"),
            (json!({"action": "status"}), "status"),
            (json!({"action": "report"}), "report"),
            (json!({"action": "run", "batch_size": 5}), "run"),
            (json!({"dry_run": true}), "run"),
            (json!({}), "run"),
            (Value::Null, "run"),
            (json!({"detail-type": "Scheduled Event"}), "run"),
            (json!({"action": 5}), "a number"),
        ] {
            let err = parse_for(&refused, true).unwrap_err();
            assert!(matches!(err, Error::Payload(_)), "{refused}: {err}");
            let text = err.to_string();
            assert!(text.contains(&format!("{named:?}")), "{refused}: {text}");
            assert!(text.contains("release and revive"), "{text}");
            assert!(!err.is_retryable());
        }
        // A door's payload is checked as anywhere else once its action is let in.
        assert!(parse_for(&json!({"action": "release"}), true)
            .unwrap_err()
            .to_string()
            .contains("order_id"));
        // Not the door: every action, as before.
        assert!(parse_for(&json!({"action": "reconcile"}), false).is_ok());
    }

    #[test]
    fn accepts_the_documented_payloads() {
        assert_eq!(run(json!({"source": "schedule"})).source(), "schedule");
        assert!(!run(json!({"source": "schedule"})).dry_run);
        let r = run(json!({"dry_run": true, "batch_size": 50, "max_batches": 3}));
        assert_eq!(
            (r.dry_run, r.batch_size, r.max_batches),
            (true, Some(50), Some(3))
        );
        assert_eq!(r.source(), "manual");
        assert_eq!(run(json!({})).source(), "manual");
        assert_eq!(run(Value::Null).source(), "manual");
        assert!(!run(json!({"action": "run", "dry_run": false})).dry_run);
        assert_eq!(
            parse(&json!({"action": "status"})).unwrap(),
            Request::Status(Status::default())
        );
        assert_eq!(
            parse(&json!({"action": "revive", "order_id": 42})).unwrap(),
            Request::Revive(Revive {
                order_id: 42,
                source: None
            })
        );
        assert_eq!(
            parse(&json!({"action": "report"})).unwrap(),
            Request::Report(Report {
                days: 7,
                source: None
            })
        );
        assert_eq!(
            parse(&json!({"action": "report", "days": 30})).unwrap(),
            Request::Report(Report {
                days: 30,
                source: None
            })
        );
        let Request::Reconcile(r) =
            parse(&json!({"action": "reconcile", "apply": true, "variant_ids": [3]})).unwrap()
        else {
            panic!("expected reconcile")
        };
        assert!(r.apply && r.variant_ids == [3] && r.drop_ids.is_empty());
        assert!(parse(&json!({"action": "reconcile", "drop_ids": [0]})).is_err());
        assert!(parse(&json!({"action": "status", "apply": true})).is_err());
    }

    #[test]
    fn accepts_the_sample_events() {
        for (file, text) in [
            (
                "schedule.json",
                include_str!("../../infra/events/schedule.json"),
            ),
            (
                "scheduled-event.json",
                include_str!("../../infra/events/scheduled-event.json"),
            ),
            (
                "dry-run.json",
                include_str!("../../infra/events/dry-run.json"),
            ),
            ("run.json", include_str!("../../infra/events/run.json")),
            (
                "status.json",
                include_str!("../../infra/events/status.json"),
            ),
            (
                "revive.json",
                include_str!("../../infra/events/revive.json"),
            ),
            (
                "report.json",
                include_str!("../../infra/events/report.json"),
            ),
            (
                "reconcile.json",
                include_str!("../../infra/events/reconcile.json"),
            ),
            (
                "follow.json",
                include_str!("../../infra/events/follow.json"),
            ),
            (
                "release.json",
                include_str!("../../infra/events/release.json"),
            ),
            ("purge.json", include_str!("../../infra/events/purge.json")),
        ] {
            let value: Value = serde_json::from_str(text).unwrap();
            parse(&value).unwrap_or_else(|e| panic!("{file}: {e}"));
        }
    }

    #[test]
    fn names_the_field_in_every_error() {
        for (payload, named) in [
            (json!({"dry_rn": true}), "dry_rn"),
            (json!({"dry_run": "yes"}), "dry_run"),
            (json!({"batch_size": -1}), "batch_size"),
            (json!({"batch_size": 0}), "batch_size"),
            (json!({"batch_size": 1.5}), "batch_size"),
            (json!({"max_batches": 0}), "max_batches"),
            (json!({"max_batches": "10"}), "max_batches"),
            (json!({"action": "delete"}), "action"),
            (json!({"action": "status", "dry_run": true}), "dry_run"),
            (json!({"action": "revive"}), "order_id"),
            (json!({"action": "revive", "order_id": 0}), "order_id"),
            (json!({"action": "revive", "order_id": "7"}), "order_id"),
            (
                json!({"action": "revive", "order_id": 7, "days": 2}),
                "days",
            ),
            (json!({"action": "report", "days": 0}), "days"),
            (json!({"action": "report", "days": 367}), "days"),
            (json!({"action": "report", "order_id": 7}), "order_id"),
            (json!({"order_id": 7}), "order_id"),
            (json!({"source": 5}), "source"),
            (json!({"source": ""}), "source"),
            (
                json!({"detail-type": "Scheduled Event", "extra": 1}),
                "extra",
            ),
            (json!({"detail-type": "Object Created"}), "detail-type"),
            (json!([1, 2]), "JSON object"),
            (json!("run"), "JSON object"),
        ] {
            let err = parse(&payload).unwrap_err();
            assert!(matches!(err, Error::Payload(_)), "{payload}: {err}");
            assert!(err.to_string().contains(named), "{payload}: {err}");
            assert!(!err.is_retryable());
        }
    }

    mod properties {
        use proptest::prelude::*;
        use serde_json::{json, Map, Value};

        use super::super::*;
        use crate::action::follow::Follow;
        use crate::action::release::Release;
        use crate::action::report::Report;
        use crate::action::revive::Revive;
        use crate::engine::release_delay::MAX_DAYS;

        const KNOWN: &[&str] = &[
            "dry_run",
            "batch_size",
            "max_batches",
            "action",
            "source",
            "order_id",
            "seconds",
            "days",
            "apply",
            "variant_ids",
            "drop_ids",
            "older_than_days",
            "orders",
            "max_lag_ms",
        ];

        fn key() -> impl Strategy<Value = String> {
            prop_oneof![
                prop::sample::select(KNOWN).prop_map(String::from),
                Just("detail-type".to_string()),
                "[a-z_-]{1,10}",
            ]
        }

        fn json_value() -> impl Strategy<Value = Value> {
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::Bool),
                any::<i64>().prop_map(|n| json!(n)),
                any::<u32>().prop_map(|n| json!(n)),
                (-1e12f64..1e12).prop_map(|f| json!(f)),
                prop_oneof![
                    Just("run"),
                    Just("status"),
                    Just("revive"),
                    Just("report"),
                    Just("purge"),
                    Just("schedule"),
                    Just("Scheduled Event")
                ]
                .prop_map(|s| json!(s)),
                "\\PC{0,16}".prop_map(Value::String),
            ];
            leaf.prop_recursive(3, 24, 5, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                    prop::collection::btree_map(key(), inner, 0..5)
                        .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>())),
                ]
            })
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]

            /// Any JSON: no panic; an accepted payload is within every range; a rejected one
            /// is an InvalidPayload error that names a field of the payload or its shape.
            #[test]
            fn any_payload_is_parsed_or_rejected_with_a_named_reason(payload in json_value()) {
                match parse(&payload) {
                    Ok(Request::Run(run)) => {
                        prop_assert!(run.batch_size.is_none_or(|n| (1..=10_000).contains(&n)));
                        prop_assert!(run.max_batches.is_none_or(|n| (1..=1_000_000).contains(&n)));
                        prop_assert!(!run.source().is_empty() && run.source().len() <= 64);
                        if let Value::Object(map) = &payload {
                            prop_assert!(map.keys().all(|k| KNOWN.contains(&k.as_str()))
                                || map.contains_key("detail-type"));
                        }
                    }
                    Ok(Request::Follow(Follow { seconds, .. })) => {
                        prop_assert_eq!(payload.get("action"), Some(&json!("follow")));
                        prop_assert!(seconds.is_some_and(|s| (1..=900).contains(&s)));
                    }
                    Ok(Request::Status(_)) => {
                        prop_assert_eq!(payload.get("action"), Some(&json!("status")));
                    }
                    Ok(Request::Revive(Revive { order_id, .. })) => {
                        prop_assert_eq!(payload.get("action"), Some(&json!("revive")));
                        prop_assert!(order_id > 0);
                    }
                    Ok(Request::Release(Release { order_id, .. })) => {
                        prop_assert_eq!(payload.get("action"), Some(&json!("release")));
                        prop_assert!(order_id > 0);
                    }
                    Ok(Request::Report(Report { days, .. })) => {
                        prop_assert_eq!(payload.get("action"), Some(&json!("report")));
                        prop_assert!((1..=MAX_DAYS).contains(&days));
                    }
                    Ok(Request::Events(_)) => prop_assert!(false, "events is not a payload action"),
                    Ok(Request::Tenants(_)) => {
                        prop_assert_eq!(payload.get("action"), Some(&json!("tenants")));
                    }
                    Ok(Request::Reconcile(_)) => {
                        prop_assert_eq!(payload.get("action"), Some(&json!("reconcile")));
                    }
                    Ok(Request::Purge(purge)) => {
                        prop_assert_eq!(payload.get("action"), Some(&json!("purge")));
                        prop_assert!((8..=36_500).contains(&purge.older_than_days));
                        prop_assert!((1..=3_600_000).contains(&purge.max_lag_ms));
                    }
                    Err(err) => {
                        prop_assert!(matches!(err, Error::Payload(_)));
                        let text = err.to_string();
                        let names_something = match &payload {
                            Value::Object(map) => map.keys().any(|k| text.contains(k.as_str())),
                            _ => text.contains("JSON object"),
                        };
                        prop_assert!(names_something, "{} for {}", text, payload);
                    }
                }
            }

            /// Well-formed manual payloads are always accepted as written.
            #[test]
            fn valid_manual_payloads_are_accepted(
                dry_run in proptest::option::of(any::<bool>()),
                batch_size in proptest::option::of(1u32..=10_000),
                max_batches in proptest::option::of(1u32..=1_000_000),
            ) {
                let mut map = Map::new();
                if let Some(d) = dry_run { map.insert("dry_run".into(), json!(d)); }
                if let Some(b) = batch_size { map.insert("batch_size".into(), json!(b)); }
                if let Some(m) = max_batches { map.insert("max_batches".into(), json!(m)); }
                let parsed = parse(&Value::Object(map));
                prop_assert_eq!(parsed.ok(), Some(Request::Run(Run {
                    dry_run: dry_run.unwrap_or(false),
                    batch_size,
                    max_batches,
                    source: Some(crate::action::Source("manual".into())),
                    workers: None,
                })));
            }
        }
    }
}
