//! Object key layout (documented in the parent module).

use object_store::path::Path;

use crate::chunk::ChunkId;

const CHUNKS: &str = "chunks";
const MANIFESTS: &str = "manifests";

pub(super) struct Keys {
    /// "" or "a/b" (no leading/trailing slash).
    prefix: String,
}

impl Keys {
    /// `prefix` may have leading/trailing slashes; its parts must be valid
    /// object-store path segments (no empty parts, no "." or "..").
    pub(super) fn new(prefix: &str) -> Result<Keys, String> {
        let prefix = prefix.trim_matches('/');
        if !prefix.is_empty() {
            Path::parse(prefix).map_err(|e| format!("invalid prefix {prefix:?}: {e}"))?;
        }
        Ok(Keys {
            prefix: prefix.to_owned(),
        })
    }

    pub(super) fn prefix(&self) -> &str {
        &self.prefix
    }

    fn join(&self, rest: &str) -> Path {
        // Every part is either the validated prefix or made of [0-9a-z/], so
        // `from` does no escaping and the key is exactly the documented string.
        if self.prefix.is_empty() {
            Path::from(rest)
        } else {
            Path::from(format!("{}/{rest}", self.prefix))
        }
    }

    pub(super) fn chunks_dir(&self) -> Path {
        self.join(CHUNKS)
    }

    pub(super) fn manifests_dir(&self) -> Path {
        self.join(MANIFESTS)
    }

    pub(super) fn chunk(&self, id: &ChunkId) -> Path {
        let hex = id.hex();
        self.join(&format!("{CHUNKS}/{}/{hex}", &hex[..2]))
    }

    /// The test object of an access check (`<prefix>/probe/<token>`).
    pub(super) fn probe(&self, token: &str) -> Path {
        self.join(&format!("probe/{token}"))
    }

    pub(super) fn manifest(&self, snapshot_id: u64) -> Path {
        self.join(&format!("{MANIFESTS}/{snapshot_id:020}"))
    }

    /// The part of `key` after `<prefix>/<dir>/`.
    fn rest<'a>(&self, key: &'a str, dir: &str) -> Option<&'a str> {
        let key = if self.prefix.is_empty() {
            key
        } else {
            key.strip_prefix(self.prefix.as_str())?.strip_prefix('/')?
        };
        key.strip_prefix(dir)?.strip_prefix('/')
    }

    pub(super) fn parse_chunk(&self, key: &Path) -> Option<ChunkId> {
        let (fan, hex) = self.rest(key.as_ref(), CHUNKS)?.split_once('/')?;
        // Only the canonical (lowercase) spelling, so the key round-trips.
        let id = ChunkId::from_hex(hex).ok()?;
        (id.hex() == hex && fan == &hex[..2]).then_some(id)
    }

    pub(super) fn parse_manifest(&self, key: &Path) -> Option<u64> {
        let digits = self.rest(key.as_ref(), MANIFESTS)?;
        if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        digits.parse().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_and_parsing() {
        let id = ChunkId::of(b"x");
        let hex = id.hex();
        for (prefix, base) in [("", ""), ("/a/b/", "a/b/"), ("p", "p/")] {
            let k = Keys::new(prefix).expect("prefix");
            let ck = k.chunk(&id);
            assert_eq!(ck.as_ref(), format!("{base}chunks/{}/{hex}", &hex[..2]));
            assert_eq!(k.parse_chunk(&ck), Some(id));
            let mk = k.manifest(42);
            assert_eq!(mk.as_ref(), format!("{base}manifests/00000000000000000042"));
            assert_eq!(k.parse_manifest(&mk), Some(42));
            assert_eq!(k.parse_manifest(&k.manifest(u64::MAX)), Some(u64::MAX));
        }
        let k = Keys::new("p").expect("prefix");
        for junk in [
            "p/chunks/zz/readme",
            "p/chunks/ab",
            &format!("p/chunks/00/{hex}"),
            &format!("p/chunks/{}/{}", &hex[..2], hex.to_uppercase()),
            &format!("q/chunks/{}/{hex}", &hex[..2]),
            &format!("p/chunks/{}/{hex}/x", &hex[..2]),
        ] {
            assert_eq!(k.parse_chunk(&Path::from(junk)), None, "{junk}");
        }
        for junk in [
            "p/manifests/42",
            "p/manifests/0000000000000000004x",
            "p/manifests/000000000000000000042",
        ] {
            assert_eq!(k.parse_manifest(&Path::from(junk)), None, "{junk}");
        }
        assert!(Keys::new("a//b").is_err());
        assert!(Keys::new("a/../b").is_err());
    }
}
