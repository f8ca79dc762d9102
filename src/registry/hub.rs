//! What is peculiar to one registry: Docker Hub goes by several host names, and a
//! one-component name there is an official image under `library/` (`alpine` is
//! `library/alpine`). The rules live here and nowhere else.

use std::borrow::Cow;

use super::RepoName;

/// The host name wharf knows Docker Hub by (its tag namespace, its `[upstreams]` key).
pub const DOCKER_HUB: &str = "docker.io";

/// The name wharf knows a registry host by: Docker Hub's other names are [`DOCKER_HUB`].
pub fn canonical_host(host: &str) -> &str {
    match host {
        "registry-1.docker.io" | "index.docker.io" => DOCKER_HUB,
        h => h,
    }
}

/// The repository `name` stands for at `registry`; copied only where it changes (clients
/// send `library/…` themselves).
pub fn repository<'n>(registry: &str, name: &'n RepoName) -> Cow<'n, RepoName> {
    if registry == DOCKER_HUB && !name.as_str().contains('/') {
        Cow::Owned(name.clone().with_library_prefix())
    } else {
        Cow::Borrowed(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn official_images_are_under_library_on_docker_hub_only() {
        let alpine = RepoName::parse("alpine").unwrap();
        assert_eq!(repository(DOCKER_HUB, &alpine).as_str(), "library/alpine");
        assert_eq!(repository("ghcr.io", &alpine).as_str(), "alpine");
        let mine = RepoName::parse("me/app").unwrap();
        assert_eq!(repository(DOCKER_HUB, &mine).as_str(), "me/app");
        assert_eq!(canonical_host("index.docker.io"), DOCKER_HUB);
        assert_eq!(canonical_host("quay.io"), "quay.io");
    }
}
