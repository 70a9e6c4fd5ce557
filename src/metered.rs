//! Object-store requests, counted: what a user pays an object store for.
//!
//! [`MeteredStore`] wraps the server's store and counts every request it makes, by kind, in
//! `trove_object_store_requests_total{op}` (`put`, `get`, `head`, `list`, `delete`, `copy`,
//! `rename`, `put_multipart`). A `get_ranges` counts the requests an S3 store makes for it
//! (ranges less than 1 MiB apart are one request, as object_store coalesces them); a
//! `delete` counts objects, not batches; a multipart upload counts once.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore, PutMultipartOptions,
    PutOptions, PutPayload, PutResult, RenameOptions, Result,
};

/// Ranges closer than this are fetched as one request (object_store's default).
const COALESCE: u64 = object_store::OBJECT_STORE_COALESCE_DEFAULT;

/// A store that counts its requests (see the module docs).
#[derive(Debug)]
pub struct MeteredStore {
    inner: Arc<dyn ObjectStore>,
}

impl MeteredStore {
    pub fn new(inner: Arc<dyn ObjectStore>) -> Self {
        MeteredStore { inner }
    }
}

fn count(op: &'static str, n: u64) {
    metrics::counter!("trove_object_store_requests_total", "op" => op).increment(n);
}

/// How many requests fetching `ranges` takes once ranges less than [`COALESCE`] apart are
/// merged.
fn coalesced_requests(ranges: &[Range<u64>]) -> u64 {
    let mut starts: Vec<&Range<u64>> = ranges.iter().collect();
    starts.sort_unstable_by_key(|r| r.start);
    let mut requests = 0;
    let mut end: Option<u64> = None;
    for r in starts {
        match end {
            Some(e) if r.start.saturating_sub(e) <= COALESCE => end = Some(e.max(r.end)),
            _ => {
                requests += 1;
                end = Some(r.end);
            }
        }
    }
    requests
}

impl fmt::Display for MeteredStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Metered({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for MeteredStore {
    async fn put_opts(&self, location: &Path, payload: PutPayload, opts: PutOptions) -> Result<PutResult> {
        count("put", 1);
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(&self, location: &Path, opts: PutMultipartOptions) -> Result<Box<dyn MultipartUpload>> {
        count("put_multipart", 1);
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        count(if options.head { "head" } else { "get" }, 1);
        self.inner.get_opts(location, options).await
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        count("get", coalesced_requests(ranges));
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(&self, locations: BoxStream<'static, Result<Path>>) -> BoxStream<'static, Result<Path>> {
        self.inner.delete_stream(locations.inspect(|_| count("delete", 1)).boxed())
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        count("list", 1);
        self.inner.list(prefix)
    }

    fn list_with_offset(&self, prefix: Option<&Path>, offset: &Path) -> BoxStream<'static, Result<ObjectMeta>> {
        count("list", 1);
        self.inner.list_with_offset(prefix, offset)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        count("list", 1);
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        count("copy", 1);
        self.inner.copy_opts(from, to, options).await
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> Result<()> {
        count("rename", 1);
        self.inner.rename_opts(from, to, options).await
    }
}

#[cfg(test)]
mod tests {
    use super::coalesced_requests;

    #[test]
    fn ranges_closer_than_a_mebibyte_are_one_request() {
        assert_eq!(coalesced_requests(&[]), 0);
        assert_eq!(coalesced_requests(&[3..10, 0..4]), 1);
        // Out of order, overlapping and near: one request.
        assert_eq!(coalesced_requests(&[500..900, 0..10, 5..600, (1 << 20) + 900..(1 << 20) + 1000]), 1);
        // Two far apart, the near one joins the first.
        assert_eq!(coalesced_requests(&[0..10, 10..20, (3 << 20)..(3 << 20) + 1]), 2);
    }
}
