use std::collections::{BTreeMap, HashMap};

use super::*;

/// One sample line, parsed.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: Vec<(String, String)>,
    value: f64,
}

/// Parses the text exposition format strictly: every line is a `# HELP`, a `# TYPE` or a
/// sample; every sample belongs to a family with both HELP and TYPE given before it; label
/// values are quoted with the format's escapes. Returns the samples and each family's type.
fn parse(text: &str) -> Result<(Vec<Sample>, HashMap<String, String>), String> {
    let mut help = HashMap::new();
    let mut types = HashMap::new();
    let mut samples = Vec::new();
    assert!(text.ends_with('\n'), "the last line ends with a line feed");
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, doc) = rest.split_once(' ').ok_or(format!("HELP: {line}"))?;
            if help.insert(name.to_owned(), doc.to_owned()).is_some() {
                return Err(format!("second HELP for {name}"));
            }
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').ok_or(format!("TYPE: {line}"))?;
            if !["counter", "gauge", "histogram"].contains(&kind) {
                return Err(format!("type {kind}"));
            }
            if types.insert(name.to_owned(), kind.to_owned()).is_some() {
                return Err(format!("second TYPE for {name}"));
            }
            continue;
        }
        let sample = parse_sample(line)?;
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                sample
                    .name
                    .strip_suffix(s)
                    .filter(|f| types.get(*f).is_some_and(|t| t == "histogram"))
            })
            .unwrap_or(&sample.name)
            .to_owned();
        if !help.contains_key(&family) || !types.contains_key(&family) {
            return Err(format!("{line}: no HELP and TYPE for {family} before it"));
        }
        samples.push(sample);
    }
    Ok((samples, types))
}

fn parse_sample(line: &str) -> Result<Sample, String> {
    let bad = || format!("not a sample: {line:?}");
    let name_end = line.find(['{', ' ']).ok_or_else(bad)?;
    let name = &line[..name_end];
    let valid_name = name.chars().enumerate().all(|(i, c)| {
        c.is_ascii_alphabetic() || c == '_' || c == ':' || (i > 0 && c.is_ascii_digit())
    });
    if name.is_empty() || !valid_name {
        return Err(bad());
    }
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(mut body) = rest.strip_prefix('{') {
        loop {
            if let Some(after) = body.strip_prefix('}') {
                rest = after;
                break;
            }
            let (key, after) = body.split_once("=\"").ok_or_else(bad)?;
            let key = key.strip_prefix(',').unwrap_or(key);
            if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(bad());
            }
            let mut value = String::new();
            let mut chars = after.char_indices();
            let end = loop {
                match chars.next().ok_or_else(bad)? {
                    (i, '"') => break i,
                    (_, '\\') => match chars.next().ok_or_else(bad)?.1 {
                        '\\' => value.push('\\'),
                        '"' => value.push('"'),
                        'n' => value.push('\n'),
                        _ => return Err(bad()),
                    },
                    (_, c) => value.push(c),
                }
            };
            labels.push((key.to_owned(), value));
            body = &after[end + 1..];
        }
    }
    let value = rest.strip_prefix(' ').ok_or_else(bad)?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        v => v.parse().map_err(|_| bad())?,
    };
    Ok(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// A family name and the labels of one of its series (without `le`).
type SeriesKey = (String, Vec<(String, String)>);

/// Checks every histogram series: `le` increasing and ending at `+Inf`, counts cumulative,
/// `+Inf` equal to `_count`, a `_sum`. Returns how many series it checked.
fn check_histograms(samples: &[Sample], types: &HashMap<String, String>) -> usize {
    let mut series: BTreeMap<SeriesKey, Vec<(f64, f64)>> = BTreeMap::new();
    let mut counts = HashMap::new();
    let mut sums = HashMap::new();
    for s in samples {
        for (suffix, into) in [("_count", &mut counts), ("_sum", &mut sums)] {
            if let Some(f) = s.name.strip_suffix(suffix) {
                if types.get(f).is_some_and(|t| t == "histogram") {
                    into.insert((f.to_owned(), s.labels.clone()), s.value);
                }
            }
        }
        let Some(f) = s.name.strip_suffix("_bucket") else {
            continue;
        };
        let (le, rest): (Vec<_>, Vec<_>) = s.labels.iter().cloned().partition(|(k, _)| k == "le");
        let le = match le[0].1.as_str() {
            "+Inf" => f64::INFINITY,
            v => v.parse().expect("le is a number"),
        };
        series
            .entry((f.to_owned(), rest))
            .or_default()
            .push((le, s.value));
    }
    for (key, buckets) in &series {
        assert!(
            buckets.windows(2).all(|w| w[0].0 < w[1].0),
            "{key:?}: le increases"
        );
        assert!(
            buckets.windows(2).all(|w| w[0].1 <= w[1].1),
            "{key:?}: cumulative"
        );
        let (le, inf) = *buckets.last().expect("buckets");
        assert_eq!(le, f64::INFINITY, "{key:?} ends with +Inf");
        assert_eq!(Some(&inf), counts.get(key), "{key:?}: +Inf equals _count");
        assert!(sums.contains_key(key), "{key:?} has a _sum");
    }
    series.len()
}

fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.iter().any(|(sk, sv)| sk == k && sv == v))
                && s.labels.len() == labels.len()
        })
        .map(|s| s.value)
}

fn recorded() -> Metrics {
    let m = Metrics::default();
    m.register_profiles(["default", "opcua"]);
    m.certificate_issued("default", Enrollment::PreAuthorized);
    m.certificate_issued("default", Enrollment::PreAuthorized);
    m.certificate_issued("opcua", Enrollment::NetworkChallenge);
    m.problem_sent(ProblemType::BadNonce);
    m.validation_decided(ChallengeType::Http01, false);
    m.weak_key_refused();
    for ms in [0, 3, 3, 40, 700, 20_000] {
        m.request_answered("/acme/order/{id}/finalize", Duration::from_millis(ms));
    }
    m.request_answered("/directory", Duration::from_micros(300));
    m.checkpoint_taken(Duration::from_millis(1600));
    m.records_pruned("order", 3);
    m.records_pruned("order", 2);
    m.set_pending_approvals(4);
    m.set_crl_age("ec", 12);
    m.set_crl_age("rsa", 13);
    m
}

#[test]
fn the_exposition_parses_back_with_help_and_type_for_every_family() {
    let text = recorded().render();
    let (samples, types) = parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    for (name, kind) in &types {
        assert_eq!(name.ends_with("_total"), kind == "counter", "{name} {kind}");
        assert!(name.starts_with("iiot_acme_"), "{name}");
    }
    assert_eq!(types.len(), 12, "{types:?}");
    let pruned = |r| value(&samples, "iiot_acme_records_pruned_total", &[("record", r)]);
    assert_eq!(pruned("order"), Some(5.0));
    assert_eq!(
        pruned("certificate"),
        Some(0.0),
        "every kind starts at zero"
    );
    let issued = "iiot_acme_certificates_issued_total";
    let of = |p, e| value(&samples, issued, &[("profile", p), ("enrollment", e)]);
    assert_eq!(of("default", "eab_preauthorized"), Some(2.0));
    assert_eq!(of("opcua", "network_challenge"), Some(1.0));
    assert_eq!(
        of("opcua", "operator_approval"),
        Some(0.0),
        "registered at zero"
    );
    assert_eq!(
        value(
            &samples,
            "iiot_acme_problems_total",
            &[("type", "badNonce")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(&samples, "iiot_acme_problems_total", &[("type", "badCSR")]),
        Some(0.0),
        "every problem type starts at zero"
    );
    let validations = |r| {
        value(
            &samples,
            "iiot_acme_validations_total",
            &[("challenge", "http-01"), ("result", r)],
        )
    };
    assert_eq!(
        (validations("invalid"), validations("valid")),
        (Some(1.0), Some(0.0))
    );
    assert_eq!(
        value(&samples, "iiot_acme_weak_keys_refused_total", &[]),
        Some(1.0)
    );
    assert_eq!(
        value(&samples, "iiot_acme_pending_approvals", &[]),
        Some(4.0)
    );
    assert_eq!(
        value(&samples, "iiot_acme_crl_age_seconds", &[("issuer", "rsa")]),
        Some(13.0)
    );
}

#[test]
fn histogram_buckets_are_cumulative_and_inf_is_the_count() {
    let text = recorded().render();
    let (samples, types) = parse(&text).expect("parses");
    // Two endpoints and the checkpoints.
    assert_eq!(check_histograms(&samples, &types), 3);
    let finalize = |le: &str| {
        value(
            &samples,
            "iiot_acme_request_duration_seconds_bucket",
            &[("endpoint", "/acme/order/{id}/finalize"), ("le", le)],
        )
    };
    assert_eq!(finalize("0.001"), Some(1.0), "0 ms");
    assert_eq!(finalize("0.005"), Some(3.0), "0, 3 and 3 ms");
    assert_eq!(finalize("1"), Some(5.0));
    assert_eq!(finalize("10"), Some(5.0), "20 s is above every bound");
    assert_eq!(finalize("+Inf"), Some(6.0));
    let sum = value(
        &samples,
        "iiot_acme_request_duration_seconds_sum",
        &[("endpoint", "/acme/order/{id}/finalize")],
    )
    .expect("sum");
    assert!((sum - 20.746).abs() < 1e-9, "{sum}");
    assert_eq!(
        value(
            &samples,
            "iiot_acme_checkpoint_duration_seconds_bucket",
            &[("le", "2.5")]
        ),
        Some(1.0)
    );
}

#[test]
fn the_checker_catches_what_it_checks() {
    assert!(parse("iiot_acme_x_total 1\n").is_err(), "no HELP/TYPE");
    assert!(
        parse("# HELP a x\n# TYPE a counter\na{l=\"v} 1\n").is_err(),
        "open quote"
    );
    assert!(
        parse("# HELP a x\n# TYPE a counter\na one\n").is_err(),
        "value"
    );
    assert!(
        parse("# HELP a x\n# TYPE a summary\n").is_err(),
        "unknown type"
    );
    let not_cumulative = "# HELP h x\n# TYPE h histogram\n\
        h_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 1\n";
    let (samples, types) = parse(not_cumulative).expect("parses");
    let caught = std::panic::catch_unwind(|| check_histograms(&samples, &types));
    assert!(caught.is_err(), "a falling bucket count is caught");
}

#[test]
fn label_values_are_escaped() {
    let m = Metrics::default();
    m.certificate_issued("we\"ird\\name\nx", Enrollment::Mixed);
    let text = m.render();
    assert!(text.contains(r#"profile="we\"ird\\name\nx""#), "{text}");
    let (samples, _) = parse(&text).expect("parses");
    assert_eq!(
        value(
            &samples,
            "iiot_acme_certificates_issued_total",
            &[("profile", "we\"ird\\name\nx"), ("enrollment", "mixed")]
        ),
        Some(1.0)
    );
}

#[test]
fn an_enrollment_path_is_shared_or_mixed() {
    use Enrollment::*;
    assert_eq!(Enrollment::combine([]), None);
    assert_eq!(Enrollment::combine([PreAuthorized]), Some(PreAuthorized));
    assert_eq!(
        Enrollment::combine([NetworkChallenge, NetworkChallenge]),
        Some(NetworkChallenge)
    );
    assert_eq!(
        Enrollment::combine([NetworkChallenge, DeviceAttestation, NetworkChallenge]),
        Some(Mixed)
    );
    assert_eq!(
        Enrollment::of_challenge(ChallengeType::TlsAlpn01),
        NetworkChallenge
    );
}

#[test]
fn config_defaults_to_loopback_and_can_be_turned_off() {
    let c: MetricsConfig = toml::from_str("").expect("defaults");
    assert!(c.enabled);
    assert!(c.listen.ip().is_loopback());
    assert_eq!(c.listen.port(), 9090);
    let c: MetricsConfig =
        toml::from_str("enabled = false\nscan_interval = \"1m\"").expect("parses");
    assert!(!c.enabled);
    assert_eq!(c.scan_interval, Duration::from_secs(60));
    assert!(toml::from_str::<MetricsConfig>("listne = \"x\"").is_err());
}
