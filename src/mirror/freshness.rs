//! How long a tag is trusted: the first matching `tag_ttl_rules` pattern, else the upstream's own
//! `tag_ttl`, else the global one. Patterns are matched against `registry/repository:tag`.

use std::time::Duration;

use crate::config::TtlRule;

pub struct Freshness {
    default: Duration,
    rules: Vec<TtlRule>,
    /// How long an upstream's "no such tag" is believed.
    pub negative: Duration,
}

impl Freshness {
    pub fn new(default: Duration, negative: Duration, rules: Vec<TtlRule>) -> Self {
        Freshness {
            default,
            rules,
            negative,
        }
    }

    pub fn tag_ttl(
        &self,
        registry: &str,
        upstream_ttl: Option<Duration>,
        repo: &str,
        tag: &str,
    ) -> Duration {
        let by_rule = if self.rules.is_empty() {
            None // every cached tag pull asks: spare it the string
        } else {
            let subject = format!("{registry}/{repo}:{tag}");
            self.rules
                .iter()
                .find(|r| glob(&r.pattern, &subject))
                .map(|r| r.ttl)
        };
        by_rule.or(upstream_ttl).unwrap_or(self.default)
    }
}

/// `*` matches any run of characters; everything else matches itself.
pub fn glob(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob("*:latest", "docker.io/library/alpine:latest"));
        assert!(!glob("*:latest", "docker.io/library/alpine:3"));
        assert!(glob("docker.io/library/*", "docker.io/library/a/b:c"));
        assert!(glob("*", ""));
        assert!(glob("a*b*c", "aXXbYYc"));
        assert!(!glob("a*b*c", "aXXbYY"));
    }

    #[test]
    fn first_rule_then_upstream_then_default() {
        let rule = |p: &str, s| TtlRule {
            pattern: p.into(),
            ttl: Duration::from_secs(s),
        };
        let f = Freshness::new(
            Duration::from_secs(300),
            Duration::from_secs(30),
            vec![rule("*:latest", 60), rule("ghcr.io/*", 7200)],
        );
        let up = Some(Duration::from_secs(900));
        assert_eq!(
            f.tag_ttl("ghcr.io", up, "a", "latest"),
            Duration::from_secs(60)
        );
        assert_eq!(
            f.tag_ttl("ghcr.io", up, "a", "v1"),
            Duration::from_secs(7200)
        );
        assert_eq!(
            f.tag_ttl("quay.io", up, "a", "v1"),
            Duration::from_secs(900)
        );
        assert_eq!(
            f.tag_ttl("quay.io", None, "a", "v1"),
            Duration::from_secs(300)
        );
    }
}
