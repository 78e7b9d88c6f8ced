//! The Prometheus alerts (`deploy/prometheus/unreserver-rules.yml`) mean what the CloudWatch
//! alarms mean: every alarm of `template.yaml` is named by exactly one alert, every alert links
//! a runbook section that exists, `promtool test rules` passes on the rules' own tests, and the
//! Alertmanager sample passes `amtool check-config`. Debian's `prometheus` and
//! `prometheus-alertmanager` packages ship the tools (`scripts/test.sh` installs them); a test
//! whose tool is missing says so and passes.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use yaml_rust2::YamlLoader;

fn deploy(name: &str) -> String {
    format!("{}/deploy/prometheus/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// `tool args` in `dir`, or None (said on stderr) when the tool is not installed.
fn run_tool(tool: &str, args: &[&str], dir: &str) -> Option<std::process::Output> {
    match Command::new(tool).args(args).current_dir(dir).output() {
        Ok(output) => Some(output),
        Err(e) => {
            eprintln!("skipped: {tool} cannot run ({e}): install Debian's package");
            None
        }
    }
}

/// The GitHub-style anchor of a markdown heading.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// Alarms with no meaning off AWS, and why (docs/outside-aws.md says so too).
const AWS_ONLY: &[(&str, &str)] = &[(
    "DoorErrorRateAlarm",
    "the door is a Lambda function the shop's webhooks call; off AWS the shop runs \
     `unreserver release` and `revive` itself and sees each exit code",
)];

#[test]
fn every_cloudwatch_alarm_has_one_prometheus_alert_with_a_runbook_link() {
    let rules = std::fs::read_to_string(deploy("unreserver-rules.yml")).unwrap();
    let rules = YamlLoader::load_from_str(&rules).unwrap().remove(0);
    let template = YamlLoader::load_from_str(include_str!("../../template.yaml"))
        .unwrap()
        .remove(0);
    let alarms: BTreeSet<String> = template["Resources"]
        .as_hash()
        .unwrap()
        .iter()
        .filter(|(_, r)| r["Type"].as_str() == Some("AWS::CloudWatch::Alarm"))
        .map(|(name, _)| name.as_str().unwrap().to_string())
        .collect();
    let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs");
    let mut named = Vec::new();
    for rule in rules["groups"][0]["rules"].as_vec().unwrap() {
        let alert = rule["alert"].as_str().unwrap();
        let annotations = &rule["annotations"];
        let covers = annotations["cloudwatch_alarms"].as_str().unwrap_or("");
        assert!(!covers.is_empty(), "{alert} names no alarm");
        named.extend(covers.split_whitespace().map(str::to_string));
        let link = annotations["runbook_url"].as_str().expect(alert);
        let (file, section) = link
            .strip_prefix("docs/")
            .and_then(|l| l.split_once('#'))
            .expect(link);
        let text = std::fs::read_to_string(docs.join(file)).expect(link);
        assert!(
            text.lines()
                .filter_map(|l| l.strip_prefix('#'))
                .any(|h| anchor(h.trim_start_matches('#')) == section),
            "{alert}: no section #{section} in docs/{file}"
        );
        for alarm in covers.split_whitespace() {
            assert!(
                text.contains(&format!("| `{alarm}`")),
                "{alarm}: no runbook row"
            );
        }
    }
    named.extend(AWS_ONLY.iter().map(|(alarm, _)| alarm.to_string()));
    let outside = std::fs::read_to_string(docs.join("outside-aws.md")).unwrap();
    for (alarm, _) in AWS_ONLY {
        assert!(
            outside.contains(&format!("`{alarm}`")),
            "{alarm}: not in outside-aws.md"
        );
    }
    let unique: BTreeSet<String> = named.iter().cloned().collect();
    assert_eq!(
        unique.len(),
        named.len(),
        "an alarm is named twice: {named:?}"
    );
    assert_eq!(unique, alarms, "the alerts' alarms vs template.yaml's");
}

#[test]
fn the_alerts_pass_their_promtool_tests() {
    let dir = deploy("");
    let Some(check) = run_tool(
        "promtool",
        &["check", "rules", "unreserver-rules.yml"],
        &dir,
    ) else {
        return;
    };
    assert!(check.status.success(), "{check:?}");
    let test = run_tool(
        "promtool",
        &["test", "rules", "unreserver-rules.test.yml"],
        &dir,
    )
    .expect("promtool ran a moment ago");
    let out = String::from_utf8_lossy(&test.stdout);
    assert!(
        test.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&test.stderr)
    );
    assert!(out.contains("SUCCESS"), "{out}");
}

#[test]
fn the_alertmanager_sample_passes_amtool() {
    let Some(check) = run_tool("amtool", &["check-config", "alertmanager.yml"], &deploy("")) else {
        return;
    };
    let out = String::from_utf8_lossy(&check.stdout);
    assert!(check.status.success(), "{out}{check:?}");
    assert!(out.contains("2 receivers"), "{out}");
}
