//! The settings table (`unreserver::settings::SETTINGS`) is the one place a setting is written:
//! `docs/configuration.md` is generated from it, `--help` lists it, and `template.yaml` sets only
//! settings of the table, through parameters that allow exactly what the function accepts.

use std::path::Path;

use unreserver::settings::{Kind, Setting, SETTINGS};
use yaml_rust2::{Yaml, YamlLoader};

fn setting(name: &str) -> Option<&'static Setting> {
    SETTINGS.iter().find(|s| s.name == name)
}

#[test]
fn the_configuration_page_is_generated_from_the_table() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/configuration.md");
    let generated = unreserver::settings::markdown();
    if std::env::var_os("UNRESERVER_BLESS").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        on_disk == generated,
        "docs/configuration.md differs from the settings table: run \
         UNRESERVER_BLESS=1 cargo test --test it settings"
    );
}

#[tokio::test]
async fn help_lists_every_setting_the_command_line_reads() {
    let out = crate::app::Front::new().cli(&["--help"]).await;
    let help = &out.stdout;
    for s in SETTINGS
        .iter()
        .filter(|s| s.read_by != unreserver::settings::ReadBy::Lambda)
    {
        assert!(help.contains(s.name), "--help lacks {}", s.name);
        assert!(help.contains(s.doc), "--help lacks the doc of {}", s.name);
    }
}

fn template() -> Yaml {
    // yaml-rust2 keeps the value of a short-form intrinsic and drops its tag: `!Ref X` reads "X".
    YamlLoader::load_from_str(include_str!("../../template.yaml"))
        .unwrap()
        .remove(0)
}

fn text(y: &Yaml) -> Option<String> {
    match y {
        Yaml::String(s) => Some(s.clone()),
        Yaml::Integer(i) => Some(i.to_string()),
        _ => None,
    }
}

/// A parameter's constraints against the setting it feeds.
fn check_parameter(var: &str, s: &Setting, name: &str, p: &Yaml) {
    let place = format!("{var} (parameter {name})");
    let default = text(&p["Default"]).unwrap_or_default();
    let allowed: Vec<String> = p["AllowedValues"]
        .as_vec()
        .map(|v| v.iter().filter_map(text).collect())
        .unwrap_or_default();
    match s.kind {
        Kind::Number {
            min,
            max,
            default: d,
        } => {
            assert_eq!(
                p["MinValue"].as_i64(),
                Some(i64::from(min)),
                "{place}: MinValue"
            );
            assert_eq!(
                p["MaxValue"].as_i64(),
                Some(i64::from(max)),
                "{place}: MaxValue"
            );
            assert_eq!(default, d.to_string(), "{place}: Default");
        }
        Kind::Choice { values, default: d } => {
            assert!(!allowed.is_empty(), "{place}: needs AllowedValues");
            for a in &allowed {
                assert!(values.contains(&a.as_str()), "{place}: {a} is not accepted");
            }
            assert!(
                d.is_empty() || default == d,
                "{place}: Default {default} is not {d}"
            );
        }
        Kind::OptionalNumber { min, max, .. } => {
            // A Number parameter cannot be empty: a String whose pattern accepts exactly the
            // empty string (unset) and the whole numbers of the range.
            assert_eq!(p["Type"].as_str(), Some("String"), "{place}: Type");
            assert_eq!(default, "", "{place}: Default must be empty (unset)");
            let pattern = p["AllowedPattern"].as_str().expect("an AllowedPattern");
            let re = regex::Regex::new(&format!("^(?:{pattern})$")).unwrap();
            for n in [min, max, (min + max) / 2, min + 1, max - 1] {
                assert!(re.is_match(&n.to_string()), "{place}: {n} refused");
            }
            assert!(re.is_match(""), "{place}: empty refused");
            for bad in ["0", &(max + 1).to_string(), "01", "-1", "1.5", " 5"] {
                if bad.parse::<u32>().is_ok_and(|n| (min..=max).contains(&n))
                    && !bad.starts_with('0')
                {
                    continue;
                }
                assert!(!re.is_match(bad), "{place}: {bad:?} accepted");
            }
        }
        Kind::Text { default: d } => {
            assert!(
                d.is_empty() || default == d,
                "{place}: Default {default} is not {d}"
            );
        }
    }
}

#[test]
fn the_template_sets_only_table_settings_through_parameters_that_agree() {
    let t = template();
    let params = t["Parameters"].as_hash().unwrap();
    for function in ["Function", "DoorFunction"] {
        let vars = t["Resources"][function]["Properties"]["Environment"]["Variables"]
            .as_hash()
            .expect("the function's environment");
        assert!(vars.len() >= 10, "{} variables", vars.len());
        for (var, value) in vars {
            let var = var.as_str().unwrap();
            let s = setting(var).unwrap_or_else(|| panic!("{var} is not in the settings table"));
            assert!(
                s.read_by.lambda(),
                "{var} is not read by the Lambda function"
            );
            let Some(value) = text(value) else { continue }; // an !If: checked by its parameters
            match params.get(&Yaml::String(value.clone())) {
                Some(p) => check_parameter(var, s, &value, p),
                None => match s.kind {
                    Kind::Choice { values, .. } => {
                        assert!(values.contains(&value.as_str()), "{var}: {value}")
                    }
                    // A number the template fixes (WORKERS, SHOP_DOOR), within the table's range.
                    Kind::Number { min, max, .. } => {
                        let n: u32 = value
                            .parse()
                            .unwrap_or_else(|_| panic!("{var}: literal {value} is not a number"));
                        assert!(
                            (min..=max).contains(&n),
                            "{var}: {value} out of {min}..={max}"
                        );
                    }
                    _ => panic!("{var}: literal {value} for a setting that is not a choice"),
                },
            }
        }
    }
}

#[test]
fn the_template_check_sees_a_range_that_disagrees() {
    let p = YamlLoader::load_from_str("Type: Number\nDefault: 500\nMinValue: 1\nMaxValue: 20000")
        .unwrap()
        .remove(0);
    let s = setting("BATCH_SIZE").unwrap();
    let caught = std::panic::catch_unwind(|| check_parameter("BATCH_SIZE", s, "BatchSize", &p));
    assert!(caught.is_err(), "MaxValue 20000 against 10000 must fail");
}
