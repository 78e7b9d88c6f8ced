//! `template.yaml` against the code: every metric, namespace and dimension that an alarm or the
//! dashboard uses must be one the function emits, every emitted metric is on the dashboard, and
//! the alarms the runbook describes exist.

use std::collections::BTreeSet;

use serde_json::Value;
use unreserver::{METRICS, SERVICE_DIMENSION};
use yaml_rust2::{Yaml, YamlLoader};

const OUR_NAMESPACE: &str = "MetricsNamespace"; // the parameter the template !Refs
/// The service dimension's value: `!If [HasServiceName, !Ref ServiceName, !Ref AWS::StackName]`
/// (the parameter, or the stack's name), as this reader flattens it.
const OUR_SERVICE: &str = "If(HasServiceName, ServiceName, AWS::StackName)";
const AWS_METRICS: &[(&str, &str, &str)] = &[
    ("AWS/Lambda", "Errors", "FunctionName"),
    ("AWS/Lambda", "Invocations", "FunctionName"),
    ("AWS/Lambda", "Throttles", "FunctionName"),
    ("AWS/Lambda", "Duration", "FunctionName"),
    ("AWS/Lambda", "DestinationDeliveryFailures", "FunctionName"),
    ("AWS/Scheduler", "TargetErrorCount", "ScheduleGroup"),
    ("AWS/Scheduler", "InvocationDroppedCount", "ScheduleGroup"),
    (
        "AWS/Scheduler",
        "InvocationsFailedToBeSentToDeadLetterCount",
        "ScheduleGroup",
    ),
    ("AWS/SQS", "ApproximateNumberOfMessagesVisible", "QueueName"),
    ("AWS/States", "ExecutionsFailed", "StateMachineArn"),
    ("AWS/States", "ExecutionsTimedOut", "StateMachineArn"),
];

/// EventBridge Scheduler's context attribute for the time a schedule meant to invoke.
const SCHEDULED_TIME: &str = "<aws.scheduler.scheduled-time>";

fn template() -> Yaml {
    // yaml-rust2 keeps the value of a short-form intrinsic and drops its tag: `!Ref X` reads "X".
    YamlLoader::load_from_str(include_str!("../../template.yaml"))
        .unwrap()
        .remove(0)
}

fn emitted() -> BTreeSet<&'static str> {
    METRICS.iter().map(|m| m.name).collect()
}

/// Checks one use of a metric: (namespace, name, [(dimension, value)]).
fn check_use(place: &str, namespace: &str, name: &str, dims: &[(String, String)]) {
    if namespace == OUR_NAMESPACE {
        assert!(
            emitted().contains(name),
            "{place}: {name} is not a metric the code emits"
        );
        assert_eq!(
            dims,
            [(SERVICE_DIMENSION.to_string(), OUR_SERVICE.to_string())],
            "{place}: {name} must be watched by the service dimension alone (dry runs add mode)"
        );
    } else {
        assert!(
            AWS_METRICS.iter().any(|(ns, n, d)| *ns == namespace
                && *n == name
                && dims.len() == 1
                && dims[0].0 == *d),
            "{place}: unknown metric {namespace}/{name} {dims:?}"
        );
    }
}

/// A value as text: a string, or a short-form `!If` (which this reader keeps as its list).
fn value_text(yaml: &Yaml) -> String {
    match yaml {
        Yaml::String(s) => s.clone(),
        Yaml::Array(items) => {
            let parts: Vec<String> = items.iter().map(value_text).collect();
            format!("If({})", parts.join(", "))
        }
        other => panic!("unexpected dimension value {other:?}"),
    }
}

fn dimensions(yaml: &Yaml) -> Vec<(String, String)> {
    yaml.as_vec()
        .map(|v| {
            v.iter()
                .map(|d| {
                    (
                        d["Name"].as_str().unwrap().to_string(),
                        value_text(&d["Value"]),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn the_function_is_configured_with_the_namespace_and_service_the_alarms_use() {
    let t = template();
    let vars = &t["Resources"]["Function"]["Properties"]["Environment"]["Variables"];
    assert_eq!(
        vars["POWERTOOLS_METRICS_NAMESPACE"].as_str(),
        Some(OUR_NAMESPACE)
    );
    assert_eq!(value_text(&vars["POWERTOOLS_SERVICE_NAME"]), OUR_SERVICE);
    assert_eq!(vars["DB_SSLMODE"].as_str(), Some("require"));
    let f = &t["Resources"]["Function"];
    assert_eq!(
        f["Metadata"]["BuildMethod"].as_str(),
        Some("rust-cargolambda")
    );
    assert_eq!(f["Properties"]["Runtime"].as_str(), Some("provided.al2023"));
    assert_eq!(f["Properties"]["Handler"].as_str(), Some("bootstrap"));
    assert_eq!(f["Properties"]["Architectures"][0].as_str(), Some("arm64"));
    assert_eq!(
        f["Properties"]["EventInvokeConfig"]["MaximumRetryAttempts"].as_i64(),
        Some(0)
    );
    let schedule = &f["Properties"]["Events"]["Schedule"];
    assert_eq!(schedule["Type"].as_str(), Some("ScheduleV2"));
    // !If [IsFollow, follow, interval]: each branch is its sample payload.
    let branches = &schedule["Properties"]["Input"];
    assert_eq!(branches[0].as_str(), Some("IsFollow"));
    for (branch, sample) in [
        (2, include_str!("../../infra/events/schedule.json")),
        (1, include_str!("../../infra/events/follow.json")),
    ] {
        let sample: Value = serde_json::from_str(sample).unwrap();
        // Scheduler fills in the scheduled time; the sample holds one such time.
        let input = branches[branch].as_str().unwrap();
        let input = match sample["scheduled_time"].as_str() {
            Some(time) => {
                assert!(input.contains(SCHEDULED_TIME), "{input}");
                input.replace(SCHEDULED_TIME, time)
            }
            None => input.to_string(),
        };
        let input: Value = serde_json::from_str(&input).unwrap();
        assert_eq!(input, sample, "the schedule's input is the sample payload");
        unreserver::parse_payload(&input).unwrap();
    }
}

#[test]
fn alarms_use_only_emitted_metrics_and_the_runbook_alarms_exist() {
    let t = template();
    let mut alarmed = BTreeSet::new();
    for (name, resource) in t["Resources"].as_hash().unwrap() {
        if resource["Type"].as_str() != Some("AWS::CloudWatch::Alarm") {
            continue;
        }
        let name = name.as_str().unwrap();
        let p = &resource["Properties"];
        assert!(!p["AlarmActions"].is_badvalue(), "{name} notifies no one");
        if let Some(metric) = p["MetricName"].as_str() {
            check_use(
                name,
                p["Namespace"].as_str().unwrap(),
                metric,
                &dimensions(&p["Dimensions"]),
            );
            alarmed.insert(metric.to_string());
        }
        for query in p["Metrics"].as_vec().into_iter().flatten() {
            let m = &query["MetricStat"]["Metric"];
            if let Some(metric) = m["MetricName"].as_str() {
                check_use(
                    name,
                    m["Namespace"].as_str().unwrap(),
                    metric,
                    &dimensions(&m["Dimensions"]),
                );
                alarmed.insert(metric.to_string());
            }
        }
    }
    for metric in [
        "RunFailed",
        "OldestDueReservationAge",
        "OldestDeferredAge",
        "CountersClamped",
        "Errors",
        "Throttles",
        "Duration",
        "ApproximateNumberOfMessagesVisible",
        "DestinationDeliveryFailures",
        "TargetErrorCount",
        "InvocationDroppedCount",
        "InvocationsFailedToBeSentToDeadLetterCount",
    ] {
        assert!(alarmed.contains(metric), "no alarm on {metric}");
    }
    let no_success = &t["Resources"]["NoSuccessfulRunAlarm"]["Properties"];
    assert_eq!(no_success["TreatMissingData"].as_str(), Some("breaching"));
}

#[test]
fn the_dashboard_shows_every_emitted_metric_and_nothing_else() {
    let t = template();
    // `!Sub [body, {Service: ..., Period: ...}]`: the body's variables are its own.
    let sub = &t["Resources"]["Dashboard"]["Properties"]["DashboardBody"];
    let body = sub[0].as_str().unwrap();
    assert_eq!(value_text(&sub[1]["Service"]), OUR_SERVICE);
    let body = body
        .replace("${MetricsNamespace}", OUR_NAMESPACE)
        .replace("${Service}", OUR_SERVICE)
        .replace("${Period}", "60");
    let body: Value = serde_json::from_str(&body).expect("the dashboard body is not JSON");
    let mut shown = BTreeSet::new();
    for widget in body["widgets"].as_array().unwrap() {
        for entry in widget["properties"]["metrics"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let parts: Vec<&str> = entry
                .as_array()
                .unwrap()
                .iter()
                .filter_map(Value::as_str)
                .collect();
            let (namespace, name) = (parts[0], parts[1]);
            let dims: Vec<(String, String)> = parts[2..]
                .chunks(2)
                .map(|c| (c[0].to_string(), c[1].to_string()))
                .collect();
            if namespace == OUR_NAMESPACE {
                shown.insert(name);
            }
            check_use("Dashboard", namespace, name, &dims);
        }
    }
    assert_eq!(
        shown,
        emitted(),
        "the dashboard and the code's metrics differ"
    );
}

#[test]
fn lambdas_logging_configuration_sets_the_log_format() {
    let function = &template()["Resources"]["Function"]["Properties"];
    assert_eq!(
        function["LoggingConfig"]["LogFormat"].as_str(),
        Some("JSON")
    );
    // Lambda passes it as AWS_LAMBDA_LOG_FORMAT, which wins (telemetry.rs): no LOG_FORMAT.
    assert!(
        function["Environment"]["Variables"]["LOG_FORMAT"].is_badvalue(),
        "LOG_FORMAT repeats what LoggingConfig says"
    );
}

/// Every alarm of the template has a row in the runbook (`docs/operations.md`), and every row an
/// alarm.
#[test]
fn every_alarm_has_a_runbook_row() {
    let t = template();
    let alarms: BTreeSet<String> = t["Resources"]
        .as_hash()
        .unwrap()
        .iter()
        .filter(|(_, r)| r["Type"].as_str() == Some("AWS::CloudWatch::Alarm"))
        .map(|(name, _)| name.as_str().unwrap().to_string())
        .collect();
    let operations = include_str!("../../docs/operations.md");
    let runbook = &operations[operations
        .find("## Runbook")
        .expect("docs/operations.md has a runbook")..];
    let rows: BTreeSet<String> = runbook
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .filter(|name| name.ends_with("Alarm"))
        .map(str::to_string)
        .collect();
    assert_eq!(
        alarms, rows,
        "template alarms vs the runbook rows of docs/operations.md"
    );
}
