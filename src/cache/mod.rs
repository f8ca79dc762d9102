//! The cache: verified content on disk by digest ([`BlobStore`]), the hot part of it in memory
//! ([`MemoryTier`]), what tags point to ([`TagIndex`]), and what is being fetched right now
//! ([`Fills`] for blobs, [`Flights`] for manifests).

pub mod fill;
pub mod flight;
pub mod links;
pub mod memory;
pub mod quota;
pub mod store;
pub mod tags;

pub use fill::{Fill, FillReader, Fills, Joined};
pub use flight::Flights;
pub use links::RepoLinks;
pub use memory::MemoryTier;
pub use quota::DiskQuota;
pub use store::{BlobStore, Kind};
pub use tags::{TagEntry, TagIndex, TagRecord};
