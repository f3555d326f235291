//! Placement: which servers hold a new volume's copies.
//!
//! Copies go on distinct servers, and on distinct failure domains when
//! servers carry a zone label (an unlabelled server is its own domain). Among
//! those, the least loaded servers win: lowest fraction of capacity already
//! promised to copies, then fewest copies. The first server is the primary.

#[derive(Debug, Clone)]
pub struct Candidate {
    pub server_id: String,
    pub zone: String,
    pub capacity_bytes: u64,
    /// Bytes promised to copies already placed there.
    pub allocated_bytes: u64,
    pub copies: u32,
}

impl Candidate {
    fn load(&self) -> f64 {
        if self.capacity_bytes == 0 {
            return f64::INFINITY;
        }
        self.allocated_bytes as f64 / self.capacity_bytes as f64
    }

    fn domain(&self) -> &str {
        if self.zone.is_empty() {
            &self.server_id
        } else {
            &self.zone
        }
    }
}

/// Picks `copies` servers for a volume of `size` bytes, or says why not.
pub fn place(candidates: &[Candidate], copies: usize, size: u64) -> Result<Vec<String>, String> {
    let mut fit: Vec<&Candidate> = candidates
        .iter()
        .filter(|c| c.capacity_bytes.saturating_sub(c.allocated_bytes) >= size)
        .collect();
    fit.sort_by(|a, b| {
        a.load()
            .total_cmp(&b.load())
            .then(a.copies.cmp(&b.copies))
            .then(a.server_id.cmp(&b.server_id))
    });
    let mut chosen: Vec<&Candidate> = Vec::new();
    for c in fit {
        if chosen.len() == copies {
            break;
        }
        if chosen.iter().all(|x| x.domain() != c.domain()) {
            chosen.push(c);
        }
    }
    if chosen.len() < copies {
        return Err(format!(
            "need {copies} servers in distinct failure domains with {size} bytes free each, found {} \
             (servers up and not draining: {}); add storage servers or lower --copies",
            chosen.len(),
            candidates.len()
        ));
    }
    Ok(chosen.into_iter().map(|c| c.server_id.clone()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(id: &str, zone: &str, cap: u64, alloc: u64, copies: u32) -> Candidate {
        Candidate {
            server_id: id.into(),
            zone: zone.into(),
            capacity_bytes: cap,
            allocated_bytes: alloc,
            copies,
        }
    }

    #[test]
    fn least_loaded_distinct_servers() {
        let cs = [
            c("a", "", 100, 50, 5),
            c("b", "", 100, 10, 1),
            c("c", "", 100, 10, 0),
        ];
        assert_eq!(place(&cs, 2, 10).unwrap(), vec!["c", "b"]);
        assert_eq!(place(&cs, 3, 10).unwrap().len(), 3);
        assert!(place(&cs, 4, 10).is_err());
    }

    #[test]
    fn zones_are_failure_domains() {
        let cs = [
            c("a", "z1", 100, 0, 0),
            c("b", "z1", 100, 0, 0),
            c("c", "z2", 100, 50, 0),
        ];
        let p = place(&cs, 2, 10).unwrap();
        assert!(p.contains(&"c".to_string()), "{p:?}");
        assert!(place(&cs, 3, 10).is_err(), "only two zones");
    }

    #[test]
    fn capacity_is_respected() {
        let cs = [
            c("a", "", 100, 95, 0),
            c("b", "", 100, 0, 0),
            c("c", "", 100, 0, 0),
        ];
        let p = place(&cs, 2, 10).unwrap();
        assert!(!p.contains(&"a".to_string()));
        assert!(place(&cs, 3, 10).is_err());
    }
}
