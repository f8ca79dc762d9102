//! Property tests for the parsers that read hostile input: request routes and names, digests,
//! `Range`, `Accept`, `WWW-Authenticate`, htpasswd files and the configuration.
//!
//! The unit tests beside each parser pin down examples; these generate many inputs: arbitrary
//! strings must never panic a parser, and well-formed inputs built from known parts must parse
//! back to those parts. The fuzz targets in `fuzz/` search the same parsers for much longer.

use std::collections::HashMap;
use std::time::Duration;

use http::Method;
use proptest::prelude::*;
use wharf::config::{Config, DEFAULT_REGISTRY};
use wharf::front::access::parse_htpasswd;
use wharf::mirror::freshness::glob;
use wharf::registry::media::{self, Accept};
use wharf::registry::range::{parse_range, RangeAnswer};
use wharf::registry::reference::is_registry_host;
use wharf::registry::{Digest, ImageRef, Reference, RepoName, Route, Tag};
use wharf::upstream::auth::Challenge;

/// Strings made mostly of the characters these parsers care about, which arbitrary Unicode
/// rarely hits.
fn hostile() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[a-zA-Z0-9:/@._=,;\"\\\\ *#$\t\r\n-]{0,80}",
        "(/v2/|bytes=|Bearer |Basic |sha256:|library/|\\[upstreams\\.|= )[a-z0-9:/@._=,;\" -]{0,60}",
    ]
}

/// One repository name component: `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`.
fn component() -> impl Strategy<Value = String> {
    "[a-z0-9]{1,8}(([._]|__|-{1,3})[a-z0-9]{1,8}){0,3}"
}

fn repo_name() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::collection::vec(component(), 1..5).prop_map(|c| c.join("/")),
        // as long as a name may be
        1 => "[a-z0-9]{245,255}",
    ]
}

fn tag() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}"
}

fn digest() -> impl Strategy<Value = Digest> {
    any::<[u8; 32]>().prop_map(Digest::from_bytes)
}

/// A registry host as people write one: with a dot, a port, or `localhost`.
fn registry_host() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9]{1,10}(-[a-z0-9]{1,5})?(\\.[a-z0-9]{1,10}){1,3}(:[0-9]{1,5})?",
        "localhost(:[0-9]{1,5})?",
        "[a-z0-9]{1,10}:[0-9]{1,5}",
    ]
}

fn reference() -> impl Strategy<Value = Reference> {
    prop_oneof![
        tag().prop_map(|t| Reference::Tag(Tag::parse(&t).unwrap())),
        digest().prop_map(Reference::Digest),
    ]
}

proptest! {
    #[test]
    fn name_parsers_never_panic(s in hostile()) {
        let _ = RepoName::parse(&s);
        let _ = Tag::parse(&s);
        let _ = Digest::parse(&s);
        let _ = Reference::parse(&s);
        let _ = is_registry_host(&s);
        if let Ok(image) = ImageRef::parse(&s) {
            prop_assert_eq!(ImageRef::parse(&image.to_string()).unwrap(), image);
        }
    }

    #[test]
    fn routes_never_panic(path in hostile(), query in prop::option::of(hostile()), get in any::<bool>()) {
        let method = if get { Method::GET } else { Method::POST };
        let _ = Route::parse(&method, &path, query.as_deref());
        let _ = Route::parse(&method, &format!("/v2/{path}"), query.as_deref());
    }

    #[test]
    fn names_tags_and_digests_round_trip(name in repo_name(), t in tag(), d in digest()) {
        prop_assert_eq!(RepoName::parse(&name).unwrap().to_string(), name);
        prop_assert_eq!(Tag::parse(&t).unwrap().to_string(), t.clone());
        prop_assert_eq!(Reference::parse(&t).unwrap(), Reference::Tag(Tag::parse(&t).unwrap()));
        let shown = d.to_string();
        prop_assert_eq!(Digest::parse(&shown).unwrap(), d);
        prop_assert_eq!(Reference::parse(&shown).unwrap(), Reference::Digest(d));
        let header = d.header_value();
        prop_assert_eq!(header.to_str().ok(), Some(shown.as_str()));
    }

    #[test]
    fn broken_names_are_refused(name in repo_name(), at in any::<prop::sample::Index>(), bad in "[A-Z/ %.:@]|\\.\\.|//") {
        // a name with something spliced in that no component may hold, or an empty component
        let i = at.index(name.len() + 1);
        let spliced = format!("{}{bad}{}", &name[..i], &name[i..]);
        if RepoName::parse(&spliced).is_ok() {
            // only a lone `.` or `/` between two alphanumerics can make another valid name
            prop_assert!(bad == "." || bad == "/", "{:?}", spliced);
        }
    }

    #[test]
    fn routes_round_trip(name in repo_name(), r in reference(), d in digest(), head in any::<bool>()) {
        let method = if head { Method::HEAD } else { Method::GET };
        let n = RepoName::parse(&name).unwrap();
        let m = Route::parse(&method, &format!("/v2/{name}/manifests/{r}"), None).unwrap();
        prop_assert_eq!(m, Route::Manifest { name: n.clone(), reference: r });
        let b = Route::parse(&method, &format!("/v2/{name}/blobs/{d}"), None).unwrap();
        prop_assert_eq!(b, Route::Blob { name: n.clone(), digest: d });
        let t = Route::parse(&method, &format!("/v2/{name}/tags/list"), Some("n=5")).unwrap();
        prop_assert_eq!(t, Route::TagsList { name: n, query: "n=5".into() });
        let put = Route::parse(&Method::PUT, &format!("/v2/{name}/blobs/{d}"), None);
        prop_assert!(put.is_err());
    }

    #[test]
    fn image_refs_round_trip(
        registry in prop::option::of(registry_host()),
        name in repo_name(),
        r in prop::option::of(reference()),
    ) {
        let mut s = match &registry {
            Some(host) => format!("{host}/{name}"),
            None => name.clone(),
        };
        match &r {
            Some(Reference::Tag(t)) => s.push_str(&format!(":{t}")),
            Some(Reference::Digest(d)) => s.push_str(&format!("@{d}")),
            None => {}
        }
        // without a registry, a first component that looks like a host is taken for one
        if let (None, Some((first, _))) = (&registry, name.split_once('/')) {
            prop_assume!(!first.contains('.') && first != "localhost");
        }
        let hub = registry.is_none() || registry.as_deref() == Some(DEFAULT_REGISTRY);
        let expected_name = if hub && !name.contains('/') { format!("library/{name}") } else { name };
        match ImageRef::parse(&s) {
            Ok(image) => {
                prop_assert_eq!(&image.registry, registry.as_deref().unwrap_or(DEFAULT_REGISTRY));
                prop_assert_eq!(image.name.as_str(), &expected_name);
                let latest = Reference::Tag(Tag::parse("latest").unwrap());
                prop_assert_eq!(&image.reference, r.as_ref().unwrap_or(&latest));
                prop_assert_eq!(ImageRef::parse(&image.to_string()).unwrap(), image);
            }
            // the only refusal: a Hub name that `library/` makes too long
            Err(_) => prop_assert!(expected_name.len() > 255, "{s:?}"),
        }
    }

    #[test]
    fn registry_hosts(host in registry_host(), s in hostile()) {
        prop_assert!(is_registry_host(&host), "{host:?}");
        if is_registry_host(&s) {
            prop_assert!(s != "." && s != ".." && !s.contains(['/', '\\']), "{s:?}");
        }
    }
}

/// RFC 9110 §14.1.2 for one `bytes=` range of a `len`-byte blob, `a`/`b` the positions given.
fn range_model(a: Option<u64>, b: Option<u64>, len: u64) -> RangeAnswer {
    match (a, b) {
        (None, Some(n)) if n > 0 && len > 0 => RangeAnswer::Part(len - n.min(len), len - 1),
        (None, _) => RangeAnswer::Unsatisfiable,
        (Some(a), Some(b)) if b < a => RangeAnswer::Full, // invalid: ignored
        (Some(a), _) if a >= len => RangeAnswer::Unsatisfiable,
        (Some(a), b) => RangeAnswer::Part(a, b.unwrap_or(u64::MAX).min(len - 1)),
    }
}

/// A position: mostly near the blob's length, sometimes anywhere in u64.
fn position() -> impl Strategy<Value = u64> {
    prop_oneof![4 => 0u64..1200, 1 => any::<u64>()]
}

proptest! {
    #[test]
    fn ranges_never_panic(h in hostile(), len in position()) {
        if let RangeAnswer::Part(s, e) = parse_range(Some(&h), len) {
            prop_assert!(s <= e && e < len, "{h:?} of {len}: {s}-{e}");
        }
    }

    #[test]
    fn ranges_follow_the_rfc(
        len in prop_oneof![0u64..1000, any::<u64>()],
        a in position(),
        b in position(),
        form in 0..3,
    ) {
        let (header, first, last) = match form {
            0 => (format!("bytes={a}-{b}"), Some(a), Some(b)),
            1 => (format!("bytes={a}-"), Some(a), None),
            _ => (format!("bytes=-{b}"), None, Some(b)),
        };
        let answer = parse_range(Some(&header), len);
        prop_assert_eq!(answer, range_model(first, last, len), "{:?} of {} bytes", header, len);
        if let RangeAnswer::Part(s, e) = answer {
            prop_assert!(s <= e && e < len);
        }
    }

    #[test]
    fn range_positions_past_u64_are_clamped(len in 1u64..1000, a in 0u64..1000, extra in "[0-9]{1,5}") {
        let huge = format!("{}{extra}", u64::MAX);
        prop_assert_eq!(parse_range(Some(&format!("bytes={a}-{huge}")), len), range_model(Some(a), None, len));
        prop_assert_eq!(parse_range(Some(&format!("bytes=-{huge}")), len), RangeAnswer::Part(0, len - 1));
        prop_assert_eq!(parse_range(Some(&format!("bytes={huge}-")), len), RangeAnswer::Unsatisfiable);
    }
}

fn media_type() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(media::OCI_INDEX.to_owned()),
        Just(media::OCI_MANIFEST.to_owned()),
        Just(media::DOCKER_MANIFEST.to_owned()),
        Just(media::DOCKER_MANIFEST_LIST.to_owned()),
        Just("*/*".to_owned()),
        "[a-z]{1,8}/[a-z0-9.+-]{1,16}",
    ]
}

fn q_value() -> impl Strategy<Value = Option<String>> {
    prop::option::of("q=(0(\\.[0-9]{0,3})?|1(\\.0{0,3})?)")
}

proptest! {
    #[test]
    fn accept_never_panics(values in prop::collection::vec(hostile(), 0..4)) {
        let a = Accept::parse(values.iter().map(String::as_str));
        let _ = (a.for_upstream(), a.key(), a.accepts(media::OCI_INDEX));
    }

    #[test]
    fn accept_lists_with_q_values(
        items in prop::collection::vec((media_type(), q_value(), any::<bool>()), 1..8),
        headers in 1usize..4,
    ) {
        // each type with its parameters, spaced as clients do, spread over a few headers
        let parts: Vec<String> = items
            .iter()
            .map(|(t, q, spaced)| {
                let sp = if *spaced { " " } else { "" };
                match q {
                    Some(q) => format!("{sp}{t}{sp};{sp}{q}"),
                    None => format!("{sp}{t}"),
                }
            })
            .collect();
        let values: Vec<String> = parts.chunks(parts.len().div_ceil(headers)).map(|c| c.join(",")).collect();
        let a = Accept::parse(values.iter().map(String::as_str));
        let mut listed: Vec<&str> = Vec::new();
        for (t, _, _) in &items {
            if !listed.contains(&t.as_str()) {
                listed.push(t);
            }
        }
        for t in &listed {
            prop_assert!(a.accepts(t), "{t:?} in {values:?}");
        }
        let expected = if listed.iter().all(|t| *t == "*/*") {
            media::ALL_MANIFESTS.join(", ")
        } else {
            listed.join(", ")
        };
        prop_assert_eq!(a.for_upstream(), expected);
        prop_assert_eq!(a.accepts(media::OCI_MANIFEST), listed.iter().any(|t| *t == "*/*" || t == &media::OCI_MANIFEST));
    }
}

/// An RFC 9110 quoted-string.
fn quoted(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

proptest! {
    #[test]
    fn challenges_never_panic(s in hostile()) {
        let _ = Challenge::parse(&s);
    }

    #[test]
    fn challenges_parse_back_to_their_parts(
        scheme in "[bB][eE][aA][rR][eE][rR]",
        realm in "https://[a-z.]{1,12}/[ -~]{0,30}",
        service in prop::option::of("[ -~]{0,20}"),
        scope in prop::option::of("repository:[a-z/]{1,10}:pull(,push)?"),
        error_first in any::<bool>(),
        bare in any::<bool>(),
        sep in prop_oneof![Just(","), Just(", "), Just(" , ")],
    ) {
        let mut params = vec![];
        if error_first {
            params.push(r#"error="insufficient_scope""#.to_owned());
        }
        // a realm with nothing to quote may come as a bare token
        let token = !realm.contains([',', '"', '\\', ' ']);
        params.push(if bare && token { format!("realm={realm}") } else { format!("realm={}", quoted(&realm)) });
        if let Some(s) = &service {
            params.push(format!("service={}", quoted(s)));
        }
        if let Some(s) = &scope {
            params.push(format!("scope={}", quoted(s)));
        }
        let header = format!("{scheme} {}", params.join(sep));
        prop_assert_eq!(
            Challenge::parse(&header),
            Some(Challenge::Bearer { realm, service }),
            "{}", header
        );
    }

    #[test]
    fn basic_challenges(scheme in "[bB][aA][sS][iI][cC]", rest in "( realm=\"[ -~]{0,20}\")?") {
        prop_assert_eq!(Challenge::parse(&format!("{scheme}{rest}")), Some(Challenge::Basic));
    }
}

fn bcrypt_hash() -> impl Strategy<Value = String> {
    "\\$2[aby]\\$[0-9]{2}\\$[./A-Za-z0-9]{53}"
}

proptest! {
    #[test]
    fn htpasswd_never_panics(s in hostile()) {
        let _ = parse_htpasswd(&s);
    }

    #[test]
    fn htpasswd_lines_round_trip(
        entries in prop::collection::hash_map("[a-zA-Z0-9._@-][a-zA-Z0-9._@ -]{0,15}[a-zA-Z0-9]", bcrypt_hash(), 0..6),
        crlf in any::<bool>(),
        comments in any::<bool>(),
        indent in "[ \t]{0,2}",
    ) {
        let eol = if crlf { "\r\n" } else { "\n" };
        let mut text = String::new();
        for (user, hash) in &entries {
            if comments {
                text.push_str(&format!("# {user}{eol}{eol}"));
            }
            text.push_str(&format!("{indent}{user}:{hash}{indent}{eol}"));
        }
        prop_assert_eq!(parse_htpasswd(&text).unwrap(), entries.clone());
        // a line that is not user:hash is named by its number
        let bad = format!("{text}nobody{eol}");
        let e = parse_htpasswd(&bad).unwrap_err();
        prop_assert!(e.starts_with(&format!("{}:", bad.lines().count())), "{e}");
    }
}

/// Lines that look like configuration: known keys, tables and values of every type.
fn toml_ish() -> impl Strategy<Value = String> {
    let line = prop_oneof![
        "(listen|tag_ttl|negative_ttl|offline|max_size|threads|url|username|password|pattern|ttl|who|htpasswd) ?= ?(\"[ -~]{0,12}\"|-?[0-9]{1,22}|true|false|\\[\\]|\\[\"[a-z*/]{0,8}\"\\]|\\{\\}|[0-9]{1,3}[smhd])",
        "\\[(upstreams\\.\"[a-zA-Z0-9.:/]{0,12}\"|access|tls)\\]",
        "\\[\\[(tag_ttl_rules|access\\.rules)\\]\\]",
        "[ -~]{0,30}",
    ];
    prop::collection::vec(line, 0..10).prop_map(|l| l.join("\n"))
}

/// A duration as humantime writes one, and what it is.
fn duration() -> impl Strategy<Value = (String, Duration)> {
    (
        1u64..100_000,
        prop::sample::select(vec![("s", 1), ("m", 60), ("h", 3600), ("d", 86400)]),
    )
        .prop_map(|(n, (unit, secs))| (format!("{n}{unit}"), Duration::from_secs(n * secs)))
}

/// A host a URL can be made of as it is: labels that start with a letter (one that ends in a
/// number is read as an IPv4 address), a port a URL may have.
fn upstream_host() -> impl Strategy<Value = String> {
    (
        "[a-z][a-z0-9-]{0,8}[a-z0-9](\\.[a-z][a-z0-9]{0,9}){1,2}",
        prop::option::of(1u16..=u16::MAX),
    )
        .prop_map(|(h, port)| match port {
            Some(p) => format!("{h}:{p}"),
            None => h,
        })
}

proptest! {
    #[test]
    fn config_never_panics(text in prop_oneof![hostile(), toml_ish()]) {
        if let Ok(cfg) = Config::parse(&text) {
            prop_assert!(cfg.upstreams.contains_key(DEFAULT_REGISTRY));
            let _ = cfg.upstream_settings();
            for rule in &cfg.tag_ttl_rules {
                prop_assert!(glob(&rule.pattern, &rule.pattern));
            }
        }
    }

    #[test]
    fn valid_configs_parse(
        port in 1u16..=u16::MAX,
        tag_ttl in duration(),
        rules in prop::collection::vec(("[a-z0-9./:*]{1,20}", duration()), 0..3),
        upstreams in prop::collection::btree_map(upstream_host(), prop::option::of(("https?", 1u16..=u16::MAX)), 0..4),
        offline in any::<bool>(),
        max_size in prop::option::of(any::<u32>()),
    ) {
        let mut text = format!("listen = \"127.0.0.1:{port}\"\ntag_ttl = \"{}\"\noffline = {offline}\n", tag_ttl.0);
        if let Some(m) = max_size {
            text.push_str(&format!("max_size = {m}\n"));
        }
        for (pattern, (ttl, _)) in &rules {
            text.push_str(&format!("[[tag_ttl_rules]]\npattern = \"{pattern}\"\nttl = \"{ttl}\"\n"));
        }
        for (host, url) in &upstreams {
            text.push_str(&format!("[upstreams.\"{host}\"]\n"));
            if let Some((scheme, p)) = url {
                text.push_str(&format!("url = \"{scheme}://10.0.0.1:{p}\"\n"));
            }
        }
        let cfg = Config::parse(&text).map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
        prop_assert_eq!(&cfg.listen, &format!("127.0.0.1:{port}"));
        prop_assert_eq!(cfg.tag_ttl, tag_ttl.1);
        prop_assert_eq!(cfg.offline, offline);
        prop_assert_eq!(cfg.max_size, max_size.map(u64::from));
        let got: Vec<_> = cfg.tag_ttl_rules.iter().map(|r| (r.pattern.clone(), r.ttl)).collect();
        let want: Vec<_> = rules.iter().map(|(p, (_, d))| (p.clone(), *d)).collect();
        prop_assert_eq!(got, want);
        let settings = cfg.upstream_settings().map_err(TestCaseError::fail)?;
        let mut hosts: HashMap<&str, &url::Url> = settings.iter().map(|s| (s.registry.as_str(), &s.url)).collect();
        prop_assert!(hosts.remove(DEFAULT_REGISTRY).is_some());
        for (host, url) in &upstreams {
            if host == DEFAULT_REGISTRY {
                continue;
            }
            let got = hosts.remove(host.as_str()).expect("every upstream has settings");
            match url {
                // (parsed, as the config is: a scheme's default port is left out)
                Some((scheme, p)) => prop_assert_eq!(got, &url::Url::parse(&format!("{scheme}://10.0.0.1:{p}/")).unwrap()),
                None => prop_assert_eq!(got.as_str(), format!("https://{host}/")),
            }
        }
        prop_assert!(hosts.is_empty());
    }
}
