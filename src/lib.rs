//! wharf: a pull-through caching mirror for container registries.
//!
//! A request travels: [`front`] (Pingora listener, access log) → [`registry`] (what was asked,
//! as a [`registry::Route`]) → [`mirror`] (the pull logic) → [`cache`] (verified content by
//! digest, tags, fills in flight) and, on a miss, [`upstream`] (auth, redirects, timeouts).
//! [`config`] holds the knobs.

pub mod cache;
pub mod cluster;
pub mod commands;
pub mod config;
pub mod front;
pub mod metrics;
pub mod mirror;
pub mod registry;
pub mod upstream;
