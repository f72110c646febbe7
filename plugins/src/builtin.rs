//! Bundled plugins (`builtin:router`, `builtin:balancer`): C sources in `plugins/builtin/`, compiled to wasm
//! with the pinned Zig toolchain by `plugins/builtin/build.sh` and checked in, so the proxy can load them like
//! any user plugin without a toolchain at run time (`plugins/builtin/check.sh` proves the bytes match the
//! sources).

use serde_json::Value;

use crate::error::PluginError;

const ROUTER: &[u8] = include_bytes!("../builtin/out/router.wasm");
const BALANCER: &[u8] = include_bytes!("../builtin/out/balancer.wasm");

/// Names accepted by [`builtin`] (the part after `builtin:` in the proxy configuration), for error messages
/// and listings.
pub const BUILTIN_NAMES: &[&str] = &["router", "balancer"];

/// The wasm bytes of a bundled plugin by name (`"router"`, `"balancer"`), to put in a
/// [`crate::PluginSpec`]; `None` for an unknown name, so the proxy can refuse `builtin:foo` at config load.
pub fn builtin(name: &str) -> Option<&'static [u8]> {
    match name {
        "router" => Some(ROUTER),
        "balancer" => Some(BALANCER),
        _ => None,
    }
}

/// Every upstream group named by a `builtin:router` configuration (routes' `upstream` and `split[].upstream`),
/// in order of first appearance, without duplicates.
///
/// The router plugin cannot know which groups the proxy has, so the proxy calls this at config load and refuses
/// unknown names with a clear message. Only the shape needed to find the names is checked here; the plugin's own
/// `proxy_on_configure` validates the rest when it is loaded.
pub fn router_upstreams(config_json: &str) -> Result<Vec<String>, PluginError> {
    let invalid =
        |message: String| PluginError::Configure { plugin: "builtin:router".to_string(), message, source: None };
    let root: Value = serde_json::from_str(config_json).map_err(|e| PluginError::Configure {
        plugin: "builtin:router".to_string(),
        message: "configuration is not valid JSON".to_string(),
        source: Some(Box::new(e)),
    })?;
    let routes = root
        .get("routes")
        .and_then(Value::as_array)
        .filter(|r| !r.is_empty())
        .ok_or_else(|| invalid("routes must be a non-empty array".to_string()))?;
    let mut names: Vec<String> = Vec::new();
    let mut push = |name: &Value, at: String| -> Result<(), PluginError> {
        match name.as_str() {
            Some(n) if !n.is_empty() => {
                if !names.iter().any(|x| x == n) {
                    names.push(n.to_string());
                }
                Ok(())
            }
            _ => Err(invalid(format!("{at} must be a non-empty string"))),
        }
    };
    for (i, route) in routes.iter().enumerate() {
        match (route.get("upstream"), route.get("split")) {
            (Some(up), None) => push(up, format!("routes[{i}].upstream"))?,
            (None, Some(Value::Array(split))) if !split.is_empty() => {
                for (k, entry) in split.iter().enumerate() {
                    let up = entry.get("upstream").unwrap_or(&Value::Null);
                    push(up, format!("routes[{i}].split[{k}].upstream"))?;
                }
            }
            (None, Some(_)) => return Err(invalid(format!("routes[{i}].split must be a non-empty array"))),
            (Some(_), Some(_)) => return Err(invalid(format!("routes[{i}] has both upstream and split; give one"))),
            (None, None) => return Err(invalid(format!("routes[{i}] needs upstream or split"))),
        }
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn names_resolve_to_wasm() {
        for name in BUILTIN_NAMES {
            let bytes = builtin(name).unwrap();
            assert_eq!(&bytes[..4], b"\0asm", "{name}");
        }
        assert!(builtin("nope").is_none());
    }

    #[test]
    fn router_upstreams_lists_every_group_once() {
        let cfg = r#"{ "routes": [
            { "match": { "headers": { "x-canary": "1" } }, "upstream": "canary" },
            { "match": { "path_prefix": "/shop/" },
              "split": [{ "upstream": "stable", "weight": 90 }, { "upstream": "canary", "weight": 10 }] },
            { "match": { "path_prefix": "/" }, "upstream": "api" } ] }"#;
        assert_eq!(router_upstreams(cfg).unwrap(), vec!["canary", "stable", "api"]);
    }

    #[test]
    fn router_upstreams_refuses_bad_shapes() {
        for (cfg, needle) in [
            ("nope", "not valid JSON"),
            (r#"{"routes": []}"#, "routes must be a non-empty array"),
            (r#"{"routes": [{"match": {}}]}"#, "routes[0] needs upstream or split"),
            (r#"{"routes": [{"upstream": "a", "split": []}]}"#, "both upstream and split"),
            (r#"{"routes": [{"upstream": "a"}, {"split": [{"weight": 1}]}]}"#, "routes[1].split[0].upstream"),
            (r#"{"routes": [{"upstream": 3}]}"#, "routes[0].upstream must be a non-empty string"),
        ] {
            let err = router_upstreams(cfg).unwrap_err().to_string();
            assert!(err.contains(needle), "{cfg}: {err}");
        }
    }
}
