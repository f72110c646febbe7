//! `[telemetry]`: where Portico sends its traces (OTLP over HTTP, protobuf), under which service name, and
//! which share of new traces it records.

use serde::{Deserialize, Serialize};

/// `[telemetry]` as written.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TelemetryFile {
    /// Base URL of an OTLP/HTTP receiver (`http://host:4318`); spans are posted to `<base>/v1/traces`.
    pub otlp_endpoint: String,
    /// The `service.name` resource attribute.
    #[serde(default = "default_service_name")]
    pub service_name: String,
    /// Head sampling: the share of requests without a caller's sampling decision that are recorded.
    #[serde(default = "default_sample_ratio")]
    pub sample_ratio: f64,
}

fn default_service_name() -> String {
    "portico".into()
}

fn default_sample_ratio() -> f64 {
    1.0
}

/// Validated `[telemetry]`.
#[derive(Debug, Clone, PartialEq)]
pub struct TelemetryConfig {
    /// Where batches are posted: the receiver's `/v1/traces`.
    pub traces_url: http::Uri,
    /// `service.name`.
    pub service_name: String,
    /// In [0, 1].
    pub sample_ratio: f64,
}

impl TelemetryFile {
    /// Checks the table; each problem comes back as (key, message).
    pub fn validate(&self) -> Result<TelemetryConfig, Vec<(&'static str, String)>> {
        let mut issues = Vec::new();
        let base = self.otlp_endpoint.trim_end_matches('/');
        let traces_url = match format!("{base}/v1/traces").parse::<http::Uri>() {
            Ok(uri) if uri.scheme_str() == Some("http") && uri.authority().is_some() && uri.query().is_none() => {
                Some(uri)
            }
            Ok(_) => {
                issues.push((
                    "telemetry.otlp_endpoint",
                    format!("{:?} must be an http:// base URL such as http://127.0.0.1:4318", self.otlp_endpoint),
                ));
                None
            }
            Err(e) => {
                issues.push(("telemetry.otlp_endpoint", format!("{:?} is not a URL: {e}", self.otlp_endpoint)));
                None
            }
        };
        if !(0.0..=1.0).contains(&self.sample_ratio) {
            issues.push(("telemetry.sample_ratio", format!("{} must be between 0 and 1", self.sample_ratio)));
        }
        if self.service_name.is_empty() {
            issues.push(("telemetry.service_name", "must not be empty".into()));
        }
        match traces_url {
            Some(traces_url) if issues.is_empty() => Ok(TelemetryConfig {
                traces_url,
                service_name: self.service_name.clone(),
                sample_ratio: self.sample_ratio,
            }),
            _ => Err(issues),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(endpoint: &str, ratio: f64) -> TelemetryFile {
        TelemetryFile { otlp_endpoint: endpoint.into(), service_name: "portico".into(), sample_ratio: ratio }
    }

    #[test]
    fn spans_go_to_v1_traces_under_the_base_url() {
        let config = file("http://127.0.0.1:4318/", 0.5).validate().map_err(|e| format!("{e:?}"));
        assert_eq!(config.map(|c| c.traces_url.to_string()), Ok("http://127.0.0.1:4318/v1/traces".to_string()));
        let nested = file("http://collector:4318/otlp", 1.0).validate().map(|c| c.traces_url.to_string());
        assert_eq!(nested.ok().as_deref(), Some("http://collector:4318/otlp/v1/traces"));
    }

    #[test]
    fn https_ratios_out_of_range_and_garbage_are_refused() {
        for (endpoint, ratio, key) in [
            ("https://127.0.0.1:4318", 1.0, "telemetry.otlp_endpoint"),
            ("127.0.0.1:4318", 1.0, "telemetry.otlp_endpoint"),
            ("http://127.0.0.1:4318", 1.5, "telemetry.sample_ratio"),
            ("http://127.0.0.1:4318", -0.1, "telemetry.sample_ratio"),
        ] {
            let issues = file(endpoint, ratio).validate().err().unwrap_or_default();
            assert!(issues.iter().any(|(k, _)| *k == key), "{endpoint} {ratio}: {issues:?}");
        }
    }
}
