//! The registry protocol: what clients may ask (routes), how things are named (references), what
//! a manifest is (media types), which bytes of a blob a client wants (ranges) and how failures
//! are told (OCI error JSON), and what is peculiar to Docker Hub (`hub`).

pub mod error;
pub mod hub;
pub mod image;
pub mod media;
pub mod range;
pub mod reference;
pub mod route;

pub use error::{Cause, ErrorCode, RegistryError};
pub use reference::{Digest, ImageRef, Reference, RepoName, Tag};
pub use route::Route;
