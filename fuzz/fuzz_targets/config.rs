//! `Config::parse` on arbitrary text, then what `serve` does next with it: the upstream
//! settings, and the tag TTL patterns.
//!
//! Beyond not panicking: a parsed configuration always has the default upstream; an upstream it
//! accepts is a registry host with an http(s) URL; and a pattern matches itself, and
//! itself without its stars.

#![no_main]

use libfuzzer_sys::fuzz_target;
use wharf::config::{Config, DEFAULT_REGISTRY};
use wharf::mirror::freshness::glob;
use wharf::registry::reference::is_registry_host;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let Ok(cfg) = Config::parse(&text) else {
        return;
    };
    assert!(cfg.upstreams.contains_key(DEFAULT_REGISTRY));
    if let Ok(settings) = cfg.upstream_settings() {
        assert_eq!(settings.len(), cfg.upstreams.len());
        for s in settings {
            assert!(is_registry_host(&s.registry), "{:?}", s.registry);
            assert!(matches!(s.url.scheme(), "http" | "https"), "{}", s.url);
        }
    }
    for rule in &cfg.tag_ttl_rules {
        assert!(glob(&rule.pattern, &rule.pattern), "{:?}", rule.pattern);
        // each `*` may match nothing
        assert!(glob(&rule.pattern, &rule.pattern.replace('*', "")));
    }
});
