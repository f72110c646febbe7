//! Validation tests: each problem named with its key and line, all of them at once.

use super::*;

const GOOD: &str = r#"
[admin]
listen = "127.0.0.1:0"

[[listener]]
name = "web"
listen = "127.0.0.1:0"
upstream = "app"

[[upstream]]
name = "app"
endpoints = ["127.0.0.1:1", { address = "127.0.0.1:2", weight = 3 }]
connect_timeout = "250ms"
health_check = { path = "/health", interval = "5s" }
outlier_detection = { consecutive_5xx = 5, base_ejection_time = "30s", max_ejection_percent = 50 }
"#;

#[test]
fn a_good_file_validates() -> Result<(), String> {
    let config = parse(GOOD).map_err(|e| format!("{e:?}"))?;
    assert_eq!(config.upstreams[0].endpoints[1].weight, 3);
    assert_eq!(config.upstreams[0].connect_timeout, Duration::from_millis(250));
    assert_eq!(config.listeners[0].upstream.as_deref(), Some("app"));
    Ok(())
}

#[test]
fn unknown_keys_name_key_and_line() {
    let text = GOOD.replace("connect_timeout", "conect_timeout");
    let issues = parse(&text).err().unwrap_or_default();
    assert_eq!(issues.len(), 1);
    assert!(issues[0].message.contains("conect_timeout"), "{issues:?}");
    assert_eq!(issues[0].line, Some(13));
}

#[test]
fn bad_duration_names_line() {
    let issues = parse(&GOOD.replace("\"250ms\"", "\"250\"")).err().unwrap_or_default();
    assert_eq!(issues[0].line, Some(13), "{issues:?}");
    assert!(issues[0].message.contains("no unit"));
}

#[test]
fn every_problem_is_reported_with_its_key_and_line() {
    let text = GOOD
        .replace("upstream = \"app\"\n", "upstream = \"app\"\nheader_read_timeout = \"5\"\nbogus = 1\n")
        .replace("\"250ms\"", "\"250\"")
        .replace("endpoints = [", "retries = 50\nendpoints = [");
    let issues = parse(&text).err().unwrap_or_default();
    let shown: Vec<String> = issues.iter().map(ToString::to_string).collect();
    assert!(
        shown.contains(
            &"line 9: listener[0].header_read_timeout: duration \"5\" has no unit (use ms, s, m or h)".into()
        ),
        "{shown:#?}"
    );
    assert!(shown.iter().any(|s| s.starts_with("line 10: listener[0].bogus: unknown field `bogus`")), "{shown:#?}");
    assert!(shown.iter().any(|s| s.starts_with("line 16: upstream[0].connect_timeout: duration")), "{shown:#?}");
    assert!(shown.iter().any(|s| s.starts_with("line 14: upstream[0].retries: at most 10")), "{shown:#?}");
    assert_eq!(issues.len(), 4, "{shown:#?}");
}

#[test]
fn a_missing_certificate_names_its_key_and_line() {
    let text = GOOD.replace(
        "upstream = \"app\"\n",
        "upstream = \"app\"\ntls = { cert = \"/nonexistent/c.pem\", key = \"/nonexistent/k.pem\" }\n",
    );
    let issues = parse(&text).err().unwrap_or_default();
    let shown: Vec<String> = issues.iter().map(ToString::to_string).collect();
    assert!(
        shown.iter().any(|s| s.starts_with("line 9: listener[0].tls.cert: cannot read /nonexistent/c.pem")),
        "{shown:#?}"
    );
    assert!(shown.iter().any(|s| s.starts_with("line 9: listener[0].tls.key: cannot read")), "{shown:#?}");
}

#[test]
fn filters_on_a_forward_listener_are_refused() {
    let text = GOOD.replace("upstream = \"app\"\n", "mode = \"forward\"\nfilters = [\"p\"]\n")
        + "\n[[plugin]]\nname = \"p\"\nwasm = \"builtin:balancer\"\n";
    let issues = parse(&text).err().unwrap_or_default();
    assert_eq!(issues.len(), 1, "{issues:?}");
    assert_eq!(issues[0].key, "listener[0].filters");
    assert!(issues[0].message.contains("reverse-proxy listeners only"), "{issues:?}");
}

#[test]
fn unknown_upstream_reference_names_line() {
    let issues = parse(&GOOD.replace("upstream = \"app\"", "upstream = \"nope\"")).err().unwrap_or_default();
    assert_eq!(issues.len(), 1);
    assert_eq!(issues[0].key, "listener[0].upstream");
    assert_eq!(issues[0].line, Some(8));
}

#[test]
fn allow_entries_are_checked_with_key_and_line() {
    let forward =
        GOOD.replace("upstream = \"app\"\n", "mode = \"forward\"\nallow = [\"127.0.0.1:8080\", \"10.0.0.0/40\"]\n");
    let issues = parse(&forward).err().unwrap_or_default();
    assert_eq!(issues.len(), 1, "{issues:?}");
    assert_eq!(issues[0].key, "listener[0].allow");
    assert_eq!(issues[0].line, Some(9));
    let reverse = GOOD.replace("upstream = \"app\"\n", "upstream = \"app\"\nallow = [\"127.0.0.1\"]\n");
    let issues = parse(&reverse).err().unwrap_or_default();
    assert!(issues.iter().any(|i| i.key == "listener[0].allow" && i.message.contains("forward")), "{issues:?}");
}

#[test]
fn public_admin_needs_token() {
    let issues =
        parse(&GOOD.replace("listen = \"127.0.0.1:0\"\n\n[[listener]]", "listen = \"0.0.0.0:0\"\n\n[[listener]]"))
            .err()
            .unwrap_or_default();
    assert!(issues.iter().any(|i| i.key == "admin.listen"), "{issues:?}");
}

#[test]
fn plugins_hand_tables_over_as_json_and_filters_must_name_them() -> Result<(), String> {
    let text = GOOD.replace("upstream = \"app\"\n", "upstream = \"app\"\nfilters = [\"auth\", \"lb\"]\n")
        + r#"
[[plugin]]
name = "auth"
wasm = "plugins/auth.wasm"
config = "plain text"
fail = "open"

[[plugin]]
name = "lb"
wasm = "builtin:balancer"
config = { policy = "ring_hash", hash_on = "header:x-user" }
cpu_limit = "5ms"
"#;
    let config = parse(&text).map_err(|e| format!("{e:?}"))?;
    assert_eq!(config.listeners[0].filters, vec!["auth".to_string(), "lb".to_string()]);
    let (auth, lb) = (&config.plugins[0], &config.plugins[1]);
    assert_eq!(auth.source, PluginSource::File(PathBuf::from("plugins/auth.wasm")));
    assert_eq!(auth.configuration, "plain text");
    assert_eq!(auth.fail, FailMode::Open);
    assert_eq!(auth.root_id, "auth");
    assert_eq!(auth.memory_limit, 32 * 1024 * 1024);
    assert_eq!(lb.source, PluginSource::Builtin("balancer".into()));
    let json: serde_json::Value = serde_json::from_str(&lb.configuration).map_err(|e| e.to_string())?;
    assert_eq!(json["policy"], "ring_hash");
    assert_eq!(lb.cpu_limit, Duration::from_millis(5));

    let issues = parse(&text.replace("\"auth\", \"lb\"", "\"auth\", \"nope\"")).err().unwrap_or_default();
    assert_eq!(issues.len(), 1, "{issues:?}");
    assert_eq!(issues[0].key, "listener[0].filters");
    assert_eq!(issues[0].line, Some(9));
    assert!(issues[0].message.contains("nope"));
    Ok(())
}

#[test]
fn plugin_paths_are_relative_to_the_config_file() -> Result<(), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let path = dir.path().join("portico.toml");
    std::fs::write(&path, format!("{GOOD}\n[[plugin]]\nname = \"p\"\nwasm = \"p.wasm\"\n"))
        .map_err(|e| e.to_string())?;
    let config = load(&path).map_err(|e| format!("{e:?}"))?;
    assert_eq!(config.plugins[0].source, PluginSource::File(dir.path().join("p.wasm")));
    Ok(())
}

#[test]
fn http2_windows_are_checked_against_each_other_and_the_protocol() {
    let with = |pool: &str| parse(&format!("{GOOD}pool = {{ {pool} }}\n")).err().unwrap_or_default();
    assert!(with(r#"h2_stream_window = "256KiB", h2_connection_window = "64MiB""#).is_empty());
    let issues = with(r#"h2_stream_window = "4MiB", h2_connection_window = "1MiB""#);
    assert_eq!(issues.len(), 1, "{issues:?}");
    assert_eq!(issues[0].key, "upstream[0].pool.h2_connection_window");
    assert!(issues[0].message.contains("at least h2_stream_window"), "{issues:?}");
    let issues = with(r#"h2_stream_window = "2GiB""#);
    assert_eq!(issues.len(), 1, "{issues:?}");
    assert_eq!(issues[0].key, "upstream[0].pool.h2_stream_window");
    assert!(issues[0].message.contains("its largest"), "{issues:?}");
    assert_eq!(with(r#"h2_stream_window = "16KiB""#)[0].key, "upstream[0].pool.h2_stream_window");
}

#[test]
fn path_rules_default_on_and_are_for_reverse_listeners() -> Result<(), String> {
    use super::paths::{EscapedSlashes, PathRules};
    let config = parse(GOOD).map_err(|e| format!("{e:?}"))?;
    assert_eq!(config.listeners[0].paths, PathRules::default());
    assert!(config.listeners[0].paths.normalize && config.listeners[0].paths.merge_slashes);
    let set = GOOD.replace(
        "upstream = \"app\"\n",
        "upstream = \"app\"\nnormalize_path = false\nmerge_slashes = false\nescaped_slashes = \"reject\"\n",
    );
    let config = parse(&set).map_err(|e| format!("{e:?}"))?;
    let want = PathRules { normalize: false, merge_slashes: false, escaped_slashes: EscapedSlashes::Reject };
    assert_eq!(config.listeners[0].paths, want);

    let bad = GOOD.replace("upstream = \"app\"\n", "upstream = \"app\"\nescaped_slashes = \"decode\"\n");
    let issues = parse(&bad).err().unwrap_or_default();
    assert!(issues.iter().any(|i| i.message.contains("keep") && i.line == Some(9)), "{issues:?}");
    let forward = GOOD.replace("upstream = \"app\"\n", "mode = \"forward\"\nmerge_slashes = false\n");
    let issues = parse(&forward).err().unwrap_or_default();
    assert_eq!(issues.len(), 1, "{issues:?}");
    assert_eq!(issues[0].key, "listener[0].merge_slashes");
    assert!(issues[0].message.contains("reverse-proxy listeners"), "{issues:?}");
    Ok(())
}
