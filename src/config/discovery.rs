//! The `discovery` section: the manifest of paid routes the filter answers at a well-known path.

use super::read::Fields;
use super::ConfigError;

const DEFAULT_PATH: &str = "/.well-known/l402-services";
const DEFAULT_MAX_AGE_S: u32 = 300;
/// A year, the longest freshness RFC 9111 caches are advised to assume.
const MAX_MAX_AGE_S: u32 = 31_536_000;
const MAX_TEXT_CHARS: usize = 1024;

pub(super) struct RawDiscovery {
    enabled: bool,
    path: String,
    max_age_s: u32,
    service: ServiceInfo,
}

/// Who runs the API, as the manifest's `service` object states it; every field optional.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceInfo {
    pub name: Option<String>,
    pub description: Option<String>,
    pub operator: Option<String>,
    pub contact: Option<String>,
}

impl ServiceInfo {
    fn read(mut f: Fields) -> Result<ServiceInfo, ConfigError> {
        let info = ServiceInfo {
            name: f.opt_string("name")?,
            description: f.opt_string("description")?,
            operator: f.opt_string("operator")?,
            contact: f.opt_string("contact")?,
        };
        f.done()?;
        Ok(info)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Discovery {
    /// The exact path the manifest is answered at (any query string).
    pub path: String,
    pub max_age_s: u32,
    pub service: ServiceInfo,
}

impl RawDiscovery {
    pub(super) fn read(mut f: Fields) -> Result<RawDiscovery, ConfigError> {
        let raw = RawDiscovery {
            enabled: f.bool_or("enabled", false)?,
            path: f.string_or("path", DEFAULT_PATH)?,
            max_age_s: f.whole_or("max_age_s", DEFAULT_MAX_AGE_S)?,
            service: ServiceInfo::read(f.defaulted_object("service")?)?,
        };
        f.done()?;
        Ok(raw)
    }

    /// The discovery settings, or `None` when the manifest is not enabled.
    pub(super) fn validate(self) -> Result<Option<Discovery>, ConfigError> {
        let path_ok = self.path.starts_with('/')
            && !self.path.bytes().any(|b| b.is_ascii_whitespace() || b.is_ascii_control() || b == b'?' || b == b'#');
        if !path_ok {
            return Err(ConfigError::new("discovery.path", "must start with / and contain no spaces, ? or #"));
        }
        if self.max_age_s > MAX_MAX_AGE_S {
            return Err(ConfigError::new("discovery.max_age_s", format!("must be at most {MAX_MAX_AGE_S}")));
        }
        let info = &self.service;
        let texts = [
            ("name", &info.name),
            ("description", &info.description),
            ("operator", &info.operator),
            ("contact", &info.contact),
        ];
        for (name, text) in texts {
            if text.as_ref().is_some_and(|t| t.is_empty() || t.chars().count() > MAX_TEXT_CHARS) {
                return Err(ConfigError::new(
                    format!("discovery.service.{name}"),
                    format!("must be 1-{MAX_TEXT_CHARS} characters"),
                ));
            }
        }
        Ok(self.enabled.then_some(Discovery { path: self.path, max_age_s: self.max_age_s, service: self.service }))
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{Access, Config};
    use crate::testing::config_json;
    use serde_json::{json, Value};

    fn parse(patch: &[(&str, Value)]) -> Result<Config, String> {
        let mut v = config_json(json!([
            { "match": { "path_prefix": "/health" }, "free": true },
            { "match": { "path_prefix": "/v1/" }, "service": "weather", "price_sat": 10 },
            { "match": { "path_prefix": "/v2/" }, "service": "weather2", "price_sat": 10, "dry_run": false }
        ]));
        for (field, value) in patch {
            v[field] = value.clone();
        }
        Config::parse(v.to_string().as_bytes(), &|_| None).map_err(|e| e.field)
    }

    fn dry_runs(c: &Config) -> Vec<bool> {
        c.routes.iter().filter_map(|r| if let Access::Paid(s) = &r.access { Some(s.dry_run) } else { None }).collect()
    }

    #[test]
    fn dry_run_is_off_unless_set_and_a_route_may_opt_out() {
        let c = parse(&[]).unwrap();
        assert!(!c.dry_run && !c.dry_run_anywhere && !c.access_log_fields && c.discovery.is_none());
        assert_eq!(dry_runs(&c), [false, false]);
        let c = parse(&[("dry_run", json!(true)), ("access_log_fields", json!(true))]).unwrap();
        assert!(c.dry_run && c.dry_run_anywhere && c.access_log_fields);
        assert_eq!(dry_runs(&c), [true, false]);
        assert_eq!(c.dry_run_fields(), ["dry_run", "routes[1]"]);
        assert!(parse(&[]).unwrap().dry_run_fields().is_empty());
        for not_true in [json!("true"), json!(1), json!(null)] {
            assert_eq!(parse(&[("dry_run", not_true)]).err().as_deref(), Some("dry_run"));
        }
        let mut routes = config_json(json!([{ "match": {}, "free": true, "dry_run": true }]));
        routes["dry_run"] = json!(true);
        let free = Config::parse(routes.to_string().as_bytes(), &|_| None).err().map(|e| e.field);
        assert_eq!(free.as_deref(), Some("routes[0].free"));
    }

    #[test]
    fn discovery_errors_name_the_field() {
        let c = parse(&[("discovery", json!({ "enabled": true }))]).unwrap();
        let d = c.discovery.unwrap();
        assert_eq!((d.path.as_str(), d.max_age_s), ("/.well-known/l402-services", 300));
        let cases = [
            ("discovery.path", json!({ "path": "services" })),
            ("discovery.path", json!({ "path": "/a?b" })),
            ("discovery.max_age_s", json!({ "max_age_s": 31_536_001 })),
            ("discovery.max_age_s", json!({ "max_age_s": -1 })),
            ("discovery.service.contact", json!({ "service": { "contact": "" } })),
            ("discovery.service.url", json!({ "service": { "url": "x" } })),
            ("discovery.enabled", json!({ "enabled": "yes" })),
        ];
        for (field, discovery) in cases {
            assert_eq!(parse(&[("discovery", discovery.clone())]).err().as_deref(), Some(field), "{discovery}");
        }
    }
}
