//! Aperture's first-party caveats and their rules: `services=<name>:<tier>,…`,
//! `<service>_capabilities=<a>,<b>…` and `<service>_valid_until=<unix seconds>`, and our own
//! `<service>_path_prefix=<prefix>`, `<service>_path=<path>` and `<service>_methods=<GET>,…`
//! restrictions.
//!
//! Caveats with the same key form a group in which each must narrow the one before it (a subset of
//! services with equal tiers, a subset of capabilities, an equal or earlier expiry); the last of a
//! group is checked against the request. Unknown keys are skipped, as the L402 spec says, so every
//! restriction we mint uses a key known here.

pub const SERVICES: &str = "services";
pub const CAPABILITIES_SUFFIX: &str = "_capabilities";
pub const VALID_UNTIL_SUFFIX: &str = "_valid_until";
pub const PATH_PREFIX_SUFFIX: &str = "_path_prefix";
pub const METHODS_SUFFIX: &str = "_methods";
pub const PATH_SUFFIX: &str = "_path";
/// Informational: the price a dynamically priced token was bought at. Holders can only append
/// caveats, so the first one is the gateway's.
pub const PRICE_SUFFIX: &str = "_price_msat";
pub const PREIMAGE: &str = "preimage";

/// What a request needs from a token.
#[derive(Debug, Clone, Copy)]
pub struct Requirement<'a> {
    pub service: &'a str,
    /// Every one of these must be granted.
    pub capabilities: &'a [String],
    /// Unix seconds.
    pub now: u64,
    pub method: &'a str,
    /// Without the query string.
    pub path: &'a str,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CaveatError {
    Malformed,
    NoServices,
    WrongService,
    CapabilityMissing,
    Expired,
    Widened(&'static str),
    Restricted,
}

/// Splits `key=value` on the first `=`.
pub fn split(caveat: &str) -> Option<(&str, &str)> {
    caveat.split_once('=')
}

/// The key of a per-service caveat, e.g. `weather` + `_valid_until`, matched without allocating.
fn is_service_key(key: &str, service: &str, suffix: &str) -> bool {
    key.strip_prefix(service) == Some(suffix)
}

fn service_entries(value: &str) -> impl Iterator<Item = Result<(&str, &str), CaveatError>> {
    value.split(',').map(|entry| match entry.split_once(':') {
        Some((name, tier)) if !name.is_empty() && !tier.is_empty() && tier.bytes().all(|b| b.is_ascii_digit()) => {
            Ok((name, tier))
        }
        _ => Err(CaveatError::Malformed),
    })
}

fn services_narrow(previous: &str, current: &str) -> Result<bool, CaveatError> {
    for entry in service_entries(current) {
        let (name, tier) = entry?;
        let mut found = false;
        for earlier in service_entries(previous) {
            let (earlier_name, earlier_tier) = earlier?;
            found |= earlier_name == name && earlier_tier == tier;
        }
        if !found {
            return Ok(false);
        }
    }
    Ok(true)
}

fn list_contains(list: &str, item: &str) -> bool {
    list.split(',').any(|entry| entry.trim() == item)
}

fn is_subset(current: &str, previous: &str) -> bool {
    current.split(',').all(|entry| list_contains(previous, entry.trim()))
}

fn parse_unix(value: &str) -> Result<u64, CaveatError> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(CaveatError::Malformed);
    }
    value.parse().map_err(|_| CaveatError::Malformed)
}

/// The values of the caveats `<service><suffix>`, in order.
pub fn values<'a>(caveats: &'a [String], service: &'a str, suffix: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    caveats
        .iter()
        .filter_map(|c| split(c))
        .filter(move |(key, _)| is_service_key(key, service, suffix))
        .map(|(_, value)| value)
}

/// The value of the first caveat `<service><suffix>`.
pub fn first_value<'a>(caveats: &'a [String], service: &'a str, suffix: &'a str) -> Option<&'a str> {
    values(caveats, service, suffix).next()
}

/// Checks the caveats against a request; returns the token's effective expiry, if any.
pub fn check(caveats: &[String], need: &Requirement<'_>) -> Result<Option<u64>, CaveatError> {
    let mut services: Option<&str> = None;
    let mut capabilities: Option<&str> = None;
    let mut valid_until: Option<u64> = None;
    let mut path_prefix: Option<&str> = None;
    let mut exact_path: Option<&str> = None;
    let mut methods: Option<&str> = None;

    for caveat in caveats {
        let (key, value) = split(caveat).ok_or(CaveatError::Malformed)?;
        if key == SERVICES {
            if let Some(previous) = services {
                if !services_narrow(previous, value)? {
                    return Err(CaveatError::Widened(SERVICES));
                }
            } else {
                service_entries(value).try_for_each(|e| e.map(drop))?;
            }
            services = Some(value);
        } else if is_service_key(key, need.service, CAPABILITIES_SUFFIX) {
            if capabilities.is_some_and(|previous| !is_subset(value, previous)) {
                return Err(CaveatError::Widened("capabilities"));
            }
            capabilities = Some(value);
        } else if is_service_key(key, need.service, VALID_UNTIL_SUFFIX) {
            let until = parse_unix(value)?;
            if valid_until.is_some_and(|previous| until > previous) {
                return Err(CaveatError::Widened("valid_until"));
            }
            valid_until = Some(until);
        } else if is_service_key(key, need.service, PATH_PREFIX_SUFFIX) {
            if path_prefix.is_some_and(|previous| !value.starts_with(previous)) {
                return Err(CaveatError::Widened("path_prefix"));
            }
            path_prefix = Some(value);
        } else if is_service_key(key, need.service, PATH_SUFFIX) {
            if exact_path.is_some_and(|previous| value != previous) {
                return Err(CaveatError::Widened("path"));
            }
            exact_path = Some(value);
        } else if is_service_key(key, need.service, METHODS_SUFFIX) {
            if methods.is_some_and(|previous| !is_subset(value, previous)) {
                return Err(CaveatError::Widened("methods"));
            }
            methods = Some(value);
        }
    }

    let services = services.ok_or(CaveatError::NoServices)?;
    let mut granted = false;
    for entry in service_entries(services) {
        granted |= entry?.0 == need.service;
    }
    if !granted {
        return Err(CaveatError::WrongService);
    }
    if !need.capabilities.is_empty() {
        let list = capabilities.ok_or(CaveatError::CapabilityMissing)?;
        if !need.capabilities.iter().all(|c| list_contains(list, c)) {
            return Err(CaveatError::CapabilityMissing);
        }
    }
    if valid_until.is_some_and(|until| need.now > until) {
        return Err(CaveatError::Expired);
    }
    if path_prefix.is_some_and(|prefix| !need.path.starts_with(prefix))
        || exact_path.is_some_and(|path| need.path != path)
        || methods.is_some_and(|list| !list.split(',').any(|m| m.trim().eq_ignore_ascii_case(need.method)))
    {
        return Err(CaveatError::Restricted);
    }
    Ok(valid_until)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caveats(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn need<'a>(service: &'a str, capabilities: &'a [String], now: u64) -> Requirement<'a> {
        Requirement { service, capabilities, now, method: "GET", path: "/v1/forecast" }
    }

    #[test]
    fn grants_matching_service_capability_and_time() {
        let read = vec!["read".to_string()];
        let c = caveats(&["services=weather:0,maps:0", "weather_capabilities=read,write", "weather_valid_until=100"]);
        assert_eq!(check(&c, &need("weather", &read, 100)), Ok(Some(100)));
        assert_eq!(check(&c, &need("maps", &[], 500)), Ok(None), "expiry is per service");
    }

    #[test]
    fn refuses_other_services_missing_capabilities_and_expired_tokens() {
        let admin = vec!["admin".to_string()];
        let c = caveats(&["services=weather:0", "weather_capabilities=read", "weather_valid_until=100"]);
        assert_eq!(check(&c, &need("maps", &[], 0)), Err(CaveatError::WrongService));
        assert_eq!(check(&c, &need("weather", &admin, 0)), Err(CaveatError::CapabilityMissing));
        assert_eq!(check(&c, &need("weather", &[], 101)), Err(CaveatError::Expired));
        let no_caps = caveats(&["services=weather:0"]);
        assert_eq!(check(&no_caps, &need("weather", &admin, 0)), Err(CaveatError::CapabilityMissing));
        assert_eq!(check(&caveats(&["other=1"]), &need("weather", &[], 0)), Err(CaveatError::NoServices));
    }

    #[test]
    fn later_caveats_may_only_narrow() {
        let n = need("weather", &[], 0);
        let narrowed = caveats(&["services=weather:0,maps:0", "services=weather:0"]);
        assert!(check(&narrowed, &n).is_ok());
        let widened = caveats(&["services=maps:0", "services=maps:0,weather:0"]);
        assert_eq!(check(&widened, &n), Err(CaveatError::Widened(SERVICES)));
        let retiered = caveats(&["services=weather:0", "services=weather:1"]);
        assert_eq!(check(&retiered, &n), Err(CaveatError::Widened(SERVICES)));
        let caps = caveats(&["services=weather:0", "weather_capabilities=read", "weather_capabilities=read,write"]);
        assert_eq!(check(&caps, &n), Err(CaveatError::Widened("capabilities")));
        let later = caveats(&["services=weather:0", "weather_valid_until=10", "weather_valid_until=20"]);
        assert_eq!(check(&later, &n), Err(CaveatError::Widened("valid_until")));
        let earlier = caveats(&["services=weather:0", "weather_valid_until=20", "weather_valid_until=10"]);
        assert_eq!(check(&earlier, &need("weather", &[], 15)), Err(CaveatError::Expired));
    }

    #[test]
    fn unknown_keys_are_skipped_and_malformed_caveats_refused() {
        let n = need("weather", &[], 0);
        assert!(check(&caveats(&["services=weather:0", "color=blue", "maps_valid_until=0"]), &n).is_ok());
        for bad in ["no equals sign", "services=weather", "services=:0", "services=weather:x", "weather_valid_until=-1"]
        {
            let c = caveats(&["services=weather:0", bad]);
            assert_eq!(check(&c, &n), Err(CaveatError::Malformed), "{bad}");
        }
    }

    #[test]
    fn path_and_method_restrictions_are_enforced_and_only_narrowed() {
        let c = caveats(&["services=weather:0", "weather_path_prefix=/v1/", "weather_methods=GET,HEAD"]);
        assert_eq!(check(&c, &need("weather", &[], 0)), Ok(None));
        let post = Requirement { method: "POST", ..need("weather", &[], 0) };
        assert_eq!(check(&c, &post), Err(CaveatError::Restricted));
        let other = Requirement { path: "/v2/x", ..need("weather", &[], 0) };
        assert_eq!(check(&c, &other), Err(CaveatError::Restricted));
        let narrowed = caveats(&["services=weather:0", "weather_path_prefix=/v1/", "weather_path_prefix=/v1/fore"]);
        assert_eq!(check(&narrowed, &need("weather", &[], 0)), Ok(None));
        let widened = caveats(&["services=weather:0", "weather_path_prefix=/v1/", "weather_path_prefix=/"]);
        assert_eq!(check(&widened, &need("weather", &[], 0)), Err(CaveatError::Widened("path_prefix")));
        let exact = caveats(&["services=weather:0", "weather_path=/v1/forecast"]);
        assert_eq!(check(&exact, &need("weather", &[], 0)), Ok(None));
        let other = Requirement { path: "/v1/forecast/extra", ..need("weather", &[], 0) };
        assert_eq!(check(&exact, &other), Err(CaveatError::Restricted));
        let moved = caveats(&["services=weather:0", "weather_path=/v1/forecast", "weather_path=/v1/radar"]);
        assert_eq!(check(&moved, &need("weather", &[], 0)), Err(CaveatError::Widened("path")));
        let methods = caveats(&["services=weather:0", "weather_methods=GET", "weather_methods=GET,POST"]);
        assert_eq!(check(&methods, &need("weather", &[], 0)), Err(CaveatError::Widened("methods")));
    }

    #[test]
    fn a_service_name_prefix_is_not_the_service() {
        // `weather2_valid_until` must not be read as a caveat of `weather`.
        let c = caveats(&["services=weather:0", "weather2_valid_until=1"]);
        assert_eq!(check(&c, &need("weather", &[], 50)), Ok(None));
    }
}
